//! Micro-benchmarks of the server's hot paths: decoding an UPDATE header,
//! a late joiner's client decoding a DATABLOCKS header and a catalogue page, validating a data
//! frame, applying a one-value patch to a large value,
//! a room forwarding an update to eight clients, and batches of updates.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use replication_serve::config::Limits;
use replication_serve::protocol::codec::encode_value;
use replication_serve::protocol::patch::{Patch, PatchOp, PathStep};
use replication_serve::protocol::wire::{self, DatablockRef};
use replication_serve::protocol::{
    BlockSpec, ChunkFields, DatablockHeader, PublisherMessage, ServerMessage, UploadStep, Wire,
    batch, decode_header, decode_publisher, decode_server, encode, validate_value,
};
use replication_serve::room::{ClientId, Room, StreamOptions};
use rmpv::Value;

fn decode(c: &mut Criterion) {
    let header = encode(&PublisherMessage::Update {
        id: None,
        uuid: "6f1c2a4e-0d51-4b8e-9b43-3f0c2d7a9e11".into(),
        type_id: Some("Mesh".into()),
        owner: None,
        deps: Some(vec!["a1".into(), "b2".into()]),
        patch: false,
        base_revision: None,
        chunk: ChunkFields::default(),
    });
    let forwarded = ServerMessage::Update {
        header: DatablockHeader {
            uuid: "6f1c2a4e-0d51-4b8e-9b43-3f0c2d7a9e11".into(),
            type_id: "Mesh".into(),
            owner: "COMMON".into(),
            deps: vec!["a1".into(), "b2".into()],
            revision: 42,
        },
        sender: "alice".into(),
        patch: false,
        chunk: ChunkFields::default(),
    };
    c.bench_function("encode forwarded UPDATE header (serde)", |b| {
        b.iter(|| encode(black_box(&forwarded)))
    });
    let deps = ["a1".to_owned(), "b2".to_owned()];
    let fields = DatablockRef {
        uuid: "6f1c2a4e-0d51-4b8e-9b43-3f0c2d7a9e11",
        type_id: "Mesh",
        owner: "COMMON",
        deps: &deps,
        revision: 42,
    };
    c.bench_function(
        "encode forwarded UPDATE header (the server's writer)",
        |b| {
            // The room writes into one reused buffer.
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                black_box(&fields).write_update_header("alice", false, &mut out);
                out.len()
            })
        },
    );
    c.bench_function("decode UPDATE header (serde's tagged enum)", |b| {
        b.iter(|| decode_header::<PublisherMessage>(black_box(&header), 1 << 20).unwrap())
    });
    c.bench_function("decode UPDATE header (the server's reader)", |b| {
        b.iter(|| decode_publisher(black_box(&header), 1 << 20).unwrap())
    });
    // What the server sends a late joiner: a thousand datablocks at a time.
    let datablocks = encode(&ServerMessage::Datablocks {
        datablocks: (0..1000)
            .map(|i| ServerMessage::Datablock {
                header: DatablockHeader {
                    uuid: format!("6f1c2a4e-0d51-4b8e-9b43-{i:012}"),
                    type_id: "Mesh".into(),
                    owner: "COMMON".into(),
                    deps: vec!["a1".into()],
                    revision: 1,
                },
                id: None,
                chunk: ChunkFields::default(),
            })
            .collect(),
        lengths: vec![1000; 1000],
    });
    c.bench_function("decode DATABLOCKS of 1,000 (serde's tagged enum)", |b| {
        b.iter(|| decode_header::<ServerMessage>(black_box(&datablocks), 1 << 24).unwrap())
    });
    c.bench_function("decode DATABLOCKS of 1,000 (the client's reader)", |b| {
        b.iter(|| decode_server(black_box(&datablocks), 1 << 24).unwrap())
    });
    // A page of a late joiner's catalogue, as the server writes it.
    let uuids: Vec<String> = (0..1024)
        .map(|i| format!("6f1c2a4e-0d51-4b8e-9b43-{i:012}"))
        .collect();
    let catalogue =
        wire::catalogue_page(uuids.iter().map(|u| (u.as_str(), "Mesh", 1, 1000))).header;
    c.bench_function("decode CATALOGUE of 1,024 (serde's tagged enum)", |b| {
        b.iter(|| decode_header::<ServerMessage>(black_box(&catalogue), 1 << 24).unwrap())
    });
    c.bench_function("decode CATALOGUE of 1,024 (the client's reader)", |b| {
        b.iter(|| decode_server(black_box(&catalogue), 1 << 24).unwrap())
    });
    let data = encode_value(&Value::Map(vec![
        (Value::from("name"), Value::from("Cube")),
        (
            Value::from("vertices"),
            Value::Array((0..100).map(|i| Value::F64(f64::from(i))).collect()),
        ),
    ]));
    c.bench_function("validate 1 KB data frame", |b| {
        b.iter(|| validate_value(black_box(&data)).unwrap())
    });
}

fn batches(c: &mut Criterion) {
    let forwarded = ServerMessage::Update {
        header: DatablockHeader {
            uuid: "6f1c2a4e-0d51-4b8e-9b43-3f0c2d7a9e11".into(),
            type_id: "Mesh".into(),
            owner: "COMMON".into(),
            deps: Vec::new(),
            revision: 42,
        },
        sender: "alice".into(),
        patch: false,
        chunk: ChunkFields::default(),
    };
    let wire = Wire {
        header: encode(&forwarded),
        payload: Some(Bytes::from(vec![0xc0; 1024])),
        batchable: true,
    };
    let items = vec![wire; 64];
    c.bench_function("build an UPDATES of 64 x 1 KB", |b| {
        b.iter(|| batch::updates_message(black_box(&items)))
    });
    let update = PublisherMessage::Update {
        id: None,
        uuid: "6f1c2a4e-0d51-4b8e-9b43-3f0c2d7a9e11".into(),
        type_id: None,
        owner: None,
        deps: None,
        patch: false,
        base_revision: None,
        chunk: ChunkFields::default(),
    };
    let header = encode(&PublisherMessage::Updates {
        updates: vec![update; 32],
        lengths: vec![1024; 32],
    });
    let data = Bytes::from(vec![0xc0; 32 * 1024]);
    c.bench_function("decode and split an UPDATES of 32 x 1 KB", |b| {
        b.iter(|| {
            let PublisherMessage::Updates { updates, lengths } =
                decode_header::<PublisherMessage>(black_box(&header), 1 << 20).unwrap()
            else {
                unreachable!()
            };
            // Each payload is copied out as the server does, one at a time.
            batch::split(updates, lengths, Some(&data[..]), 1 << 20)
                .unwrap()
                .map(|(_, data)| Bytes::copy_from_slice(data).len())
                .sum::<usize>()
        })
    });
}

fn patch(c: &mut Criterion) {
    let mut mesh = Value::Map(vec![(
        Value::from("vertices"),
        Value::Array((0..1_000_000).map(|i| Value::F64(f64::from(i))).collect()),
    )]);
    let mut n = 0u64;
    c.bench_function("one-value patch to a 9 MB value", |b| {
        b.iter(|| {
            n = (n + 7919) % 1_000_000;
            let patch = Patch {
                ops: vec![PatchOp::Set {
                    path: vec![PathStep::Key("vertices".into()), PathStep::Index(n)],
                    value: Value::F64(-1.0),
                }],
            };
            patch.apply(black_box(&mut mesh)).unwrap();
        })
    });
}

fn fan_out(c: &mut Criterion) {
    let mut room = Room::new(Limits::default());
    let host = ClientId(0);
    room.join(host, "host", true, None).unwrap();
    room.upload(host, UploadStep::Init, None, None).unwrap();
    let spec = BlockSpec::checked(
        "stroke".into(),
        Some("Mesh".into()),
        Some("COMMON".into()),
        None,
    )
    .unwrap();
    let data = Bytes::from(vec![0xc0]);
    room.upload(host, UploadStep::Set, None, Some((spec, data)))
        .unwrap();
    room.upload(host, UploadStep::End, None, None).unwrap();
    for i in 1..=8 {
        room.join(ClientId(i), &format!("reader-{i}"), false, None)
            .unwrap();
        room.subscribe(ClientId(i), StreamOptions::default())
            .unwrap();
    }
    let payload = Bytes::from(encode_value(&Value::Binary(vec![7; 1000])).to_vec());
    c.bench_function("room: apply and fan out a 1 KB update to 8", |b| {
        b.iter(|| {
            let spec = BlockSpec::checked("stroke".into(), None, None, None).unwrap();
            let fx = room
                .update(host, spec, false, None, payload.clone())
                .unwrap();
            black_box(fx);
        })
    });
}

fn snapshot(c: &mut Criterion) {
    let mut room = Room::new(Limits::default());
    let host = ClientId(0);
    room.join(host, "host", true, None).unwrap();
    room.upload(host, UploadStep::Init, None, None).unwrap();
    let data = Bytes::from(encode_value(&Value::Binary(vec![7; 1000])).to_vec());
    for i in 0..10_000 {
        let spec =
            BlockSpec::checked(format!("block-{i:06}"), Some("Mesh".into()), None, None).unwrap();
        room.upload(host, UploadStep::Set, None, Some((spec, data.clone())))
            .unwrap();
    }
    room.upload(host, UploadStep::End, None, None).unwrap();
    let mut next = 1;
    for (name, batches) in [
        ("room: snapshot stream of 10,000 x 1 KB", false),
        ("room: snapshot stream of 10,000 x 1 KB in DATABLOCKS", true),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let joiner = ClientId(next);
                next += 1;
                room.join(joiner, &format!("joiner-{}", joiner.0), false, None)
                    .unwrap();
                let options = StreamOptions {
                    window: None,
                    batches,
                };
                let fx = room.subscribe(joiner, options).unwrap();
                black_box(&fx);
                room.leave(joiner);
            })
        });
    }
}

criterion_group!(benches, decode, batches, patch, fan_out, snapshot);
criterion_main!(benches);
