//! UPDATES (protocol section 15): batches from a writer are applied one by
//! one, refused as a whole when malformed, and forwarded as one message to
//! clients that read batches and as single UPDATEs to the others.

mod common;

use common::*;
use replication_serve::client::{Block, Client, ClientOptions};
use replication_serve::protocol::{
    Channel, ChunkFields, ErrorCode, PublisherMessage, ServerMessage, codec::encode_value,
    decode_header, encode,
};
use rmpv::Value;

fn scene() -> Vec<Block> {
    (0..4)
        .map(|i| block(&format!("obj-{i}"), "Object", object("o", [0.0; 3])))
        .collect()
}

fn single_reader(server: &TestServer, name: &str) -> Client {
    joined_with(ClientOptions {
        batches: false,
        ..ClientOptions::new(server.port, name)
    })
    .0
}

/// The next UPDATE or UPDATES on the subscriber channel, raw.
fn next_raw(client: &mut Client) -> (ServerMessage, Vec<u8>) {
    loop {
        let frames = client
            .next_subscriber_frames(T)
            .unwrap()
            .expect("a subscriber message");
        let message: ServerMessage = decode_header(&frames[0], usize::MAX).unwrap();
        if matches!(
            message,
            ServerMessage::Update { .. } | ServerMessage::Updates { .. }
        ) {
            return (
                message,
                frames.get(1).map(|f| f.to_vec()).unwrap_or_default(),
            );
        }
    }
}

/// The next UPDATE event.
fn next_update(client: &mut Client) -> replication_serve::client::Event {
    wait(client, "an UPDATE", |e| {
        matches!(e.message, ServerMessage::Update { .. })
    })
}

fn update(uuid: &str, id: Option<u64>, base_revision: Option<u64>) -> PublisherMessage {
    PublisherMessage::Update {
        id,
        uuid: uuid.into(),
        type_id: None,
        owner: None,
        deps: None,
        patch: false,
        base_revision,
        chunk: ChunkFields::default(),
    }
}

/// Sends an UPDATES with these headers and payloads on `client`'s
/// publisher channel.
fn send_batch(client: &Client, items: &[(PublisherMessage, Vec<u8>)], lengths: Vec<u64>) {
    let updates: Vec<PublisherMessage> = items.iter().map(|(h, _)| h.clone()).collect();
    let data: Vec<u8> = items.iter().flat_map(|(_, d)| d.clone()).collect();
    send_raw_batch(client, &updates, &lengths, Some(&data));
}

/// Sends `blocks` with the client's batching; returns their encoded data.
fn send_updates(client: &mut Client, blocks: &[Block]) -> Vec<Vec<u8>> {
    let data: Vec<Vec<u8>> = blocks
        .iter()
        .map(|b| encode_value(&b.data).to_vec())
        .collect();
    let items: Vec<(&Block, &[u8])> = blocks.iter().zip(&data).map(|(b, d)| (b, &d[..])).collect();
    client.updates_raw(&items).unwrap();
    data
}

fn revision_of(message: &ServerMessage) -> (String, u64) {
    match message {
        ServerMessage::Update { header, .. } => (header.uuid.clone(), header.revision),
        other => panic!("not an UPDATE: {other:?}"),
    }
}

#[test]
fn a_batch_reaches_batching_and_single_readers_alike() {
    let (server, mut host) = hosted(&scene());
    let (mut batching, _) = joined(&server, "batching");
    let mut single = single_reader(&server, "single");
    // Ten updates, the first datablock three times, in one message.
    let order = [0, 1, 0, 2, 3, 0, 1, 2, 3, 1];
    let blocks: Vec<Block> = order
        .iter()
        .enumerate()
        .map(|(n, i)| block(&format!("obj-{i}"), "Object", Value::from(n)))
        .collect();
    let data = send_updates(&mut host, &blocks);

    let mut revisions = [1u64; 4];
    let expected: Vec<(String, u64)> = order
        .iter()
        .map(|&i| {
            revisions[i] += 1;
            (format!("obj-{i}"), revisions[i])
        })
        .collect();

    // The batching reader gets them all in one UPDATES, in order.
    let (message, frame) = next_raw(&mut batching);
    let ServerMessage::Updates { updates, lengths } = message else {
        panic!("expected one UPDATES, got {message:?}");
    };
    let got: Vec<(String, u64)> = updates.iter().map(revision_of).collect();
    assert_eq!(got, expected);
    let lengths: Vec<usize> = lengths.iter().map(|&l| l as usize).collect();
    assert_eq!(lengths, data.iter().map(Vec::len).collect::<Vec<_>>());
    assert_eq!(frame, data.concat());
    for u in &updates {
        let ServerMessage::Update { sender, patch, .. } = u else {
            unreachable!()
        };
        assert_eq!((sender.as_str(), *patch), ("host", false));
    }

    // The other gets ten single UPDATEs, in the same order, same data.
    for (n, (uuid, revision)) in expected.iter().enumerate() {
        let ev = next_update(&mut single);
        assert_eq!(ev.channel, Channel::Subscriber);
        assert_eq!(&revision_of(&ev.message), &(uuid.clone(), *revision));
        assert_eq!(value(ev.payload.as_deref().unwrap()), Value::from(n));
    }
}

#[test]
fn the_client_hands_out_a_batch_as_single_updates() {
    let (server, mut host) = hosted(&scene());
    let (mut reader, _) = joined(&server, "reader");
    let blocks: Vec<Block> = (0..4)
        .map(|i| block(&format!("obj-{i}"), "Object", Value::from(i * 10)))
        .collect();
    send_updates(&mut host, &blocks);
    for i in 0..4 {
        let ev = wait_update(&mut reader, &format!("obj-{i}"));
        assert_eq!(value(ev.payload.as_deref().unwrap()), Value::from(i * 10));
    }
}

#[test]
fn a_lone_update_still_travels_alone() {
    let (server, mut host) = hosted(&scene());
    let (mut batching, _) = joined(&server, "batching");
    host.update_confirmed(&block("obj-0", "Object", Value::from(1)), T)
        .unwrap();
    let (message, _) = next_raw(&mut batching);
    assert_eq!(revision_of(&message), ("obj-0".into(), 2));
}

#[test]
fn one_thread_reads_the_updates_of_several_clients() {
    let (server, mut host) = hosted(&scene());
    let (batching, _) = joined(&server, "batching");
    let single = single_reader(&server, "single");
    let mut readers = [batching, single];
    let blocks: Vec<Block> = (0..4)
        .map(|i| block(&format!("obj-{i}"), "Object", Value::from(i)))
        .collect();
    send_updates(&mut host, &blocks[..2]);
    for b in &blocks[2..] {
        host.update(b).unwrap();
    }
    let expected: Vec<(String, u64)> = (0..4).map(|i| (format!("obj-{i}"), 2)).collect();

    let mut seen: [Vec<(String, u64)>; 2] = Default::default();
    let mut next = 0;
    while seen.iter().any(|s| s.len() < expected.len()) {
        let (i, frames) = Client::next_subscriber_frames_of(&mut readers, next, T)
            .unwrap()
            .expect("a subscriber message before the deadline");
        next = i + 1;
        match decode_header(&frames[0], usize::MAX).unwrap() {
            ServerMessage::Updates { updates, .. } => {
                seen[i].extend(updates.iter().map(revision_of));
            }
            m @ ServerMessage::Update { .. } => seen[i].push(revision_of(&m)),
            _ => {}
        }
    }
    // Each client's updates came to its own index, all of them, in order.
    assert_eq!(seen[0], expected);
    assert_eq!(seen[1], expected);
    // Nothing to watch: no message, at once, and no panic.
    assert!(
        Client::next_subscriber_frames_of(&mut [], 5, T)
            .unwrap()
            .is_none()
    );
}

#[test]
fn refused_updates_in_a_batch_do_not_stop_the_others() {
    let (server, host) = hosted(&scene());
    let mut host = host;
    let mut single = single_reader(&server, "single");
    let value_bytes = |n: i64| encode_value(&Value::from(n)).to_vec();
    send_batch(
        &host,
        &[
            (update("obj-0", Some(1), None), value_bytes(1)),
            // obj-1 is at revision 1, so this one is stale.
            (update("obj-1", Some(2), Some(5)), value_bytes(2)),
            (update("obj-2", Some(3), Some(1)), value_bytes(3)),
            (update("missing", Some(4), None), value_bytes(4)),
        ],
        vec![1, 1, 1, 1],
    );
    let mut acks = Vec::new();
    let mut errors = Vec::new();
    while acks.len() + errors.len() < 4 {
        let ev = host.next_event(T).unwrap().expect("an answer");
        match ev.message {
            ServerMessage::Ack { id, revision, .. } => acks.push((id, revision)),
            ServerMessage::Error {
                code, refers_to, ..
            } => errors.push((refers_to.id, refers_to.kind, code)),
            _ => {}
        }
    }
    assert_eq!(acks, [(1, 2), (3, 2)]);
    assert_eq!(
        errors,
        [
            (Some(2), Some("UPDATE".into()), ErrorCode::StaleRevision),
            // Creating needs a type_id.
            (Some(4), Some("UPDATE".into()), ErrorCode::InvalidMessage),
        ]
    );
    for uuid in ["obj-0", "obj-2"] {
        let ev = next_update(&mut single);
        assert_eq!(revision_of(&ev.message), (uuid.into(), 2));
    }
}

#[test]
fn a_malformed_batch_is_refused_whole() {
    let (server, mut host) = hosted(&scene());
    let mut single = single_reader(&server, "single");
    let two = vec![
        update("obj-0", Some(1), None),
        update("obj-1", Some(2), None),
    ];
    let mut chunked = update("obj-0", Some(3), None);
    if let PublisherMessage::Update { chunk, .. } = &mut chunked {
        *chunk = ChunkFields {
            transfer: Some(9),
            chunks: Some(1),
            size: Some(1),
        };
    }
    let not_update = PublisherMessage::Chunk {
        transfer: 1,
        index: 0,
    };
    // Two MessagePack values of one byte each.
    let data = [0x01u8, 0x02];
    type Case<'a> = (
        Vec<PublisherMessage>,
        Vec<u64>,
        &'a [u8],
        ErrorCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            two.clone(),
            vec![2],
            &data,
            ErrorCode::InvalidMessage,
            "2 updates but 1 lengths",
        ),
        (
            two.clone(),
            vec![1, 2],
            &data,
            ErrorCode::InvalidMessage,
            "add up to 3 bytes",
        ),
        (
            two.clone(),
            vec![2, 0],
            &data,
            ErrorCode::InvalidMessage,
            "length 1 is 0",
        ),
        (
            vec![],
            vec![],
            &data,
            ErrorCode::InvalidMessage,
            "1 to 1024",
        ),
        (
            vec![chunked],
            vec![2],
            &data,
            ErrorCode::InvalidMessage,
            "announces chunks",
        ),
        (
            vec![not_update],
            vec![2],
            &data,
            ErrorCode::InvalidMessage,
            "not an UPDATE header",
        ),
    ];
    for (updates, lengths, data, code, reason) in cases {
        send_raw_batch(&host, &updates, &lengths, Some(data));
        expect_batch_error(&mut host, code, reason);
    }
    send_raw_batch(&host, &two, &[1, 1], None);
    expect_batch_error(&mut host, ErrorCode::InvalidMessage, "needs a data frame");

    // Nothing was applied or forwarded: the next update of obj-0 makes
    // revision 2, and it is the first thing the reader receives.
    host.update_confirmed(&block("obj-0", "Object", Value::from(7)), T)
        .unwrap();
    let ev = next_update(&mut single);
    assert_eq!(revision_of(&ev.message), ("obj-0".into(), 2));
    assert_eq!(value(ev.payload.as_deref().unwrap()), Value::from(7));
}

#[test]
fn a_batch_over_chunk_bytes_is_too_large() {
    let server = TestServer::start_with(|c| c.limits.chunk_bytes = 4096);
    let mut host = admin(&server, "host");
    host.upload(&scene(), T).unwrap();
    let big = encode_value(&Value::Binary(vec![7; 3000])).to_vec();
    send_batch(
        &host,
        &[
            (update("obj-0", Some(1), None), big.clone()),
            (update("obj-1", Some(2), None), big.clone()),
        ],
        vec![big.len() as u64, big.len() as u64],
    );
    expect_batch_error(&mut host, ErrorCode::TooLarge, "exceeds the limit of 4096");
    // The client's own batching splits such a batch to fit.
    let blocks = [
        block("obj-0", "Object", Value::Binary(vec![7; 3000])),
        block("obj-1", "Object", Value::Binary(vec![8; 3000])),
        block("obj-2", "Object", Value::Binary(vec![9; 9000])),
    ];
    let (mut reader, _) = joined(&server, "reader");
    let data = send_updates(&mut host, &blocks);
    for (i, d) in data.iter().enumerate() {
        let ev = wait_update(&mut reader, &format!("obj-{i}"));
        assert_eq!(ev.payload.as_deref(), Some(&d[..]));
    }
}

fn send_raw_batch(
    client: &Client,
    updates: &[PublisherMessage],
    lengths: &[u64],
    data: Option<&[u8]>,
) {
    let header = encode(&PublisherMessage::Updates {
        updates: updates.to_vec(),
        lengths: lengths.to_vec(),
    });
    let token = client.token().unwrap().to_vec();
    let mut frames: Vec<&[u8]> = vec![&token, &header];
    frames.extend(data);
    client.send_raw(Channel::Publisher, &frames).unwrap();
}

/// Waits for the ERROR about a whole batch.
fn expect_batch_error(client: &mut Client, code: ErrorCode, reason: &str) {
    let ev = wait(client, "ERROR about UPDATES", |e| {
        matches!(&e.message, ServerMessage::Error { .. })
    });
    let ServerMessage::Error {
        code: got,
        message,
        refers_to,
    } = ev.message
    else {
        unreachable!()
    };
    assert_eq!(refers_to.kind.as_deref(), Some("UPDATES"), "{message}");
    assert_eq!(refers_to.id, None);
    assert_eq!(got, code, "{message}");
    assert!(message.contains(reason), "{message:?} lacks {reason:?}");
}

// ---------------------------------------------------------------------------
// DATABLOCKS (protocol section 16)

/// A scene of small datablocks with one larger than `chunk_bytes` in the
/// middle, which must travel chunked between the batches.
fn scene_with_a_chunked_block(chunk_bytes: usize) -> Vec<Block> {
    let mut blocks: Vec<Block> = (0..300)
        .map(|i| block(&format!("obj-{i:03}"), "Object", object("o", [i as f64; 3])))
        .collect();
    blocks.insert(
        150,
        block("big", "Image", Value::Binary(vec![7; chunk_bytes * 2 + 10])),
    );
    blocks
}

/// Every subscriber message of a download, raw, acknowledging as the
/// protocol says; stops after END.
fn raw_stream(client: &mut Client, window: Option<u32>) -> Vec<(ServerMessage, Vec<u8>)> {
    client
        .send_raw(
            Channel::Subscriber,
            &[&encode(
                &replication_serve::protocol::SubscriberRequest::Snapshot {
                    window,
                    batches: true,
                },
            )],
        )
        .unwrap();
    let mut stream = Vec::new();
    let (mut received, mut acked, mut window) = (0u64, 0u64, 1u64);
    loop {
        let frames = client
            .next_subscriber_frames(T)
            .unwrap()
            .expect("a stream message");
        let message: ServerMessage = decode_header(&frames[0], usize::MAX).unwrap();
        received += 1;
        if let ServerMessage::Snapshot {
            step: replication_serve::protocol::SnapshotStep::Begin,
            window: Some(w),
            ..
        } = &message
        {
            window = *w;
        }
        let end = matches!(
            message,
            ServerMessage::Snapshot {
                step: replication_serve::protocol::SnapshotStep::End,
                ..
            }
        );
        stream.push((
            message,
            frames.get(1).map(|f| f.to_vec()).unwrap_or_default(),
        ));
        if end {
            return stream;
        }
        if (received - acked) * 2 >= window {
            acked = received;
            client
                .send_raw(
                    Channel::Subscriber,
                    &[&encode(
                        &replication_serve::protocol::SubscriberRequest::SnapshotAck { received },
                    )],
                )
                .unwrap();
        }
    }
}

#[test]
fn a_download_in_batches_gives_the_same_datablocks() {
    let chunk_bytes = 64 * 1024;
    let server = TestServer::start_with(|c| c.limits.chunk_bytes = chunk_bytes);
    let mut host = admin(&server, "host");
    let blocks = scene_with_a_chunked_block(chunk_bytes);
    host.upload(&blocks, T).expect("upload");
    let batched = joined_with(ClientOptions::new(server.port, "batched")).1;
    let single = joined_with(ClientOptions {
        batches: false,
        ..ClientOptions::new(server.port, "single")
    })
    .1;
    let uuids: Vec<&str> = batched.iter().map(|r| r.header.uuid.as_str()).collect();
    let expected: Vec<&str> = blocks.iter().map(|b| b.uuid.as_str()).collect();
    assert_eq!(uuids, expected, "every datablock, in creation order");
    assert_eq!(batched.len(), single.len());
    for (b, s) in batched.iter().zip(&single) {
        assert_eq!(b.header, s.header);
        assert_eq!(b.data, s.data, "data of {}", b.header.uuid);
    }
}

#[test]
fn the_stream_holds_datablocks_batches_and_chunks_in_order() {
    let chunk_bytes = 64 * 1024;
    let server = TestServer::start_with(|c| c.limits.chunk_bytes = chunk_bytes);
    let mut host = admin(&server, "host");
    let blocks = scene_with_a_chunked_block(chunk_bytes);
    host.upload(&blocks, T).expect("upload");
    let mut raw = Client::connect(ClientOptions::new(server.port, "raw")).unwrap();
    raw.authenticate(T).unwrap();
    // A window of 4 messages: the stream only completes if a DATABLOCKS
    // counts as one message, as the client counts it.
    let stream = raw_stream(&mut raw, Some(4));
    let ServerMessage::Snapshot { batches, .. } = &stream[0].0 else {
        panic!("the stream starts with BEGIN, not {:?}", stream[0].0);
    };
    assert_eq!(
        *batches,
        Some(true),
        "BEGIN says the stream may hold batches"
    );
    let mut uuids = Vec::new();
    let mut batches_seen = 0;
    for (message, data) in &stream {
        match message {
            ServerMessage::Datablocks {
                datablocks,
                lengths,
            } => {
                batches_seen += 1;
                assert_eq!(datablocks.len(), lengths.len());
                assert_eq!(lengths.iter().sum::<u64>(), data.len() as u64);
                assert!(data.len() <= chunk_bytes);
                let mut offset = 0;
                for (d, &length) in datablocks.iter().zip(lengths) {
                    let ServerMessage::Datablock { header, id, chunk } = d else {
                        panic!("a DATABLOCKS holds DATABLOCK headers, not {d:?}");
                    };
                    assert_eq!((*id, chunk), (None, &ChunkFields::default()));
                    let original = blocks.iter().find(|b| b.uuid == header.uuid).unwrap();
                    let end = offset + length as usize;
                    assert_eq!(value(&data[offset..end]), original.data);
                    offset = end;
                    uuids.push(header.uuid.clone());
                }
            }
            ServerMessage::Datablock { header, chunk, .. } => {
                if header.uuid == "big" {
                    assert!(chunk.chunks.is_some(), "the large datablock is chunked");
                }
                uuids.push(header.uuid.clone());
            }
            _ => {}
        }
    }
    let expected: Vec<&str> = blocks.iter().map(|b| b.uuid.as_str()).collect();
    assert_eq!(uuids, expected, "each datablock once, in stream order");
    assert!(
        batches_seen >= 2,
        "the chunked datablock splits the run into at least two batches"
    );
    assert!(
        stream.len() < 50,
        "301 datablocks took {} messages",
        stream.len()
    );
}
