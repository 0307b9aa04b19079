//! Reading a late joiner's stream (SNAPSHOT and DATABLOCKS headers)
//! straight into [`ServerMessage`], on the client.
//!
//! A joiner of 10,000 datablocks reads 10,000 catalogue entries and 10,000
//! datablock headers. serde reads the internally tagged enum by copying the
//! message, and each of its items, into buffers of its own first: about
//! 1.5 us per catalogue entry and 0.5 us per datablock, most of a joiner's
//! time once the bytes have arrived (docs/benchmarks.md, "Where a late
//! join's time goes"). These readers walk each header once.
//!
//! They take only the shape the protocol describes: every key known, at most
//! once, of its type. Anything else (a key of a later version, a struct
//! written as an array) returns `None` and the caller reads the frame with
//! serde, so the result, or the error, is the same either way; the tests
//! below and `tests/codec_props.rs` hold the two to that.

use super::reader::{Field, Reader};
use super::{CatalogueEntry, ChunkFields, DatablockHeader, ServerMessage};
use super::{MAX_DEPS, SnapshotStep};

/// A DATABLOCKS header that `walk_header` accepted, or None to let serde
/// decide.
pub(super) fn read_datablocks(bytes: &[u8]) -> Option<ServerMessage> {
    let mut r = Reader::new(bytes);
    let mut datablocks = Field::new("datablocks");
    let mut lengths = Field::new("lengths");
    for _ in 0..r.map_len().ok()? {
        match r.key().ok()? {
            b"type" => r.skip().ok()?,
            b"datablocks" => datablocks.set(list(&mut r, datablock)?).ok()?,
            b"lengths" => lengths.set(list(&mut r, |r| r.u64().ok())?).ok()?,
            _ => return None,
        }
    }
    Some(ServerMessage::Datablocks {
        datablocks: datablocks.value?,
        lengths: lengths.value?,
    })
}

/// A SNAPSHOT header (BEGIN, a CATALOGUE page or END) that `walk_header`
/// accepted, or None to let serde decide.
pub(super) fn read_snapshot(bytes: &[u8]) -> Option<ServerMessage> {
    let mut r = Reader::new(bytes);
    let mut step = Field::new("step");
    let mut window = Field::new("window");
    let mut window_bytes = Field::new("window_bytes");
    let mut datablocks = Field::new("datablocks");
    let mut total = Field::new("bytes");
    let mut entries = Field::new("entries");
    let mut batches = Field::new("batches");
    for _ in 0..r.map_len().ok()? {
        match r.key().ok()? {
            b"type" => r.skip().ok()?,
            b"step" => step.set(snapshot_step(&mut r)?).ok()?,
            b"window" => window.set(r.optional(Reader::u64).ok()?).ok()?,
            b"window_bytes" => window_bytes.set(r.optional(Reader::u64).ok()?).ok()?,
            b"datablocks" => datablocks.set(r.optional(Reader::u64).ok()?).ok()?,
            b"bytes" => total.set(r.optional(Reader::u64).ok()?).ok()?,
            b"entries" => entries.set(optional_list(&mut r, catalogue_entry)?).ok()?,
            b"batches" => batches.set(r.optional(Reader::bool).ok()?).ok()?,
            _ => return None,
        }
    }
    Some(ServerMessage::Snapshot {
        step: step.value?,
        window: window.value.flatten(),
        window_bytes: window_bytes.value.flatten(),
        datablocks: datablocks.value.flatten(),
        bytes: total.value.flatten(),
        entries: entries.value.flatten(),
        batches: batches.value.flatten(),
    })
}

/// One item of a DATABLOCKS: the fields of a [`ServerMessage::Datablock`].
fn datablock(r: &mut Reader<'_>) -> Option<ServerMessage> {
    let mut kind = Field::new("type");
    let mut uuid = Field::new("uuid");
    let mut type_id = Field::new("type_id");
    let mut owner = Field::new("owner");
    let mut deps = Field::new("deps");
    let mut revision = Field::new("revision");
    let mut id = Field::new("id");
    let mut transfer = Field::new("transfer");
    let mut chunks = Field::new("chunks");
    let mut size = Field::new("size");
    for _ in 0..r.map_len().ok()? {
        match r.key().ok()? {
            b"type" => kind.set(r.string().ok()?).ok()?,
            b"uuid" => uuid.set(r.string().ok()?).ok()?,
            b"type_id" => type_id.set(r.string().ok()?).ok()?,
            b"owner" => owner.set(r.string().ok()?).ok()?,
            b"deps" => deps.set(list(r, |r| r.string().ok())?).ok()?,
            b"revision" => revision.set(r.u64().ok()?).ok()?,
            b"id" => id.set(r.optional(Reader::u64).ok()?).ok()?,
            b"transfer" => transfer.set(r.optional(Reader::u64).ok()?).ok()?,
            b"chunks" => chunks.set(r.optional(Reader::u32).ok()?).ok()?,
            b"size" => size.set(r.optional(Reader::u64).ok()?).ok()?,
            _ => return None,
        }
    }
    if kind.value? != "DATABLOCK" {
        return None;
    }
    Some(ServerMessage::Datablock {
        header: DatablockHeader {
            uuid: uuid.value?,
            type_id: type_id.value?,
            owner: owner.value?,
            deps: deps.value?,
            revision: revision.value?,
        },
        id: id.value.flatten(),
        chunk: ChunkFields {
            transfer: transfer.value.flatten(),
            chunks: chunks.value.flatten(),
            size: size.value.flatten(),
        },
    })
}

/// One entry of a CATALOGUE page, written as a map.
fn catalogue_entry(r: &mut Reader<'_>) -> Option<CatalogueEntry> {
    let mut uuid = Field::new("uuid");
    let mut type_id = Field::new("type_id");
    let mut revision = Field::new("revision");
    let mut size = Field::new("size");
    if !r.at_map() {
        return None;
    }
    for _ in 0..r.map_len().ok()? {
        match r.key().ok()? {
            b"uuid" => uuid.set(r.string().ok()?).ok()?,
            b"type_id" => type_id.set(r.string().ok()?).ok()?,
            b"revision" => revision.set(r.u64().ok()?).ok()?,
            b"size" => size.set(r.u64().ok()?).ok()?,
            _ => return None,
        }
    }
    Some(CatalogueEntry {
        uuid: uuid.value?,
        type_id: type_id.value?,
        revision: revision.value?,
        size: size.value?,
    })
}

fn snapshot_step(r: &mut Reader<'_>) -> Option<SnapshotStep> {
    match r.string().ok()?.as_str() {
        "BEGIN" => Some(SnapshotStep::Begin),
        "CATALOGUE" => Some(SnapshotStep::Catalogue),
        "END" => Some(SnapshotStep::End),
        _ => None,
    }
}

/// An array of items each read by `item`.
fn list<T>(r: &mut Reader<'_>, item: impl Fn(&mut Reader<'_>) -> Option<T>) -> Option<Vec<T>> {
    let len = r.array_len().ok()?;
    // The header's size is bounded before it is read and each item takes at
    // least one byte: the count reserves no more than the frame can hold.
    let mut items = Vec::with_capacity(len.min(MAX_DEPS));
    for _ in 0..len {
        items.push(item(r)?);
    }
    Some(items)
}

/// `nil`, or an array read like [`list`].
fn optional_list<T>(
    r: &mut Reader<'_>,
    item: impl Fn(&mut Reader<'_>) -> Option<T>,
) -> Option<Option<Vec<T>>> {
    if r.at_nil() {
        r.skip().ok()?;
        return Some(None);
    }
    list(r, item).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::deserialize;
    use crate::protocol::encode;

    fn header(uuid: &str, deps: &[&str], transfer: Option<u64>) -> ServerMessage {
        ServerMessage::Datablock {
            header: DatablockHeader {
                uuid: uuid.into(),
                type_id: "Mesh".into(),
                owner: "COMMON".into(),
                deps: deps.iter().map(|d| (*d).to_owned()).collect(),
                revision: 300,
            },
            id: transfer.map(|t| t + 1),
            chunk: ChunkFields {
                transfer,
                chunks: transfer.map(|_| 3),
                size: transfer.map(|_| 70_000),
            },
        }
    }

    #[test]
    fn reads_what_the_server_writes_as_serde_does() {
        let messages = [
            ServerMessage::Datablocks {
                datablocks: vec![header("a", &[], None), header("b", &["a", "c"], Some(9))],
                lengths: vec![1, 70_000],
            },
            ServerMessage::Datablocks {
                datablocks: Vec::new(),
                lengths: Vec::new(),
            },
            ServerMessage::Snapshot {
                step: SnapshotStep::Begin,
                window: Some(64),
                window_bytes: Some(1 << 24),
                datablocks: Some(2),
                bytes: Some(70_001),
                entries: None,
                batches: Some(true),
            },
            ServerMessage::Snapshot {
                step: SnapshotStep::Catalogue,
                window: None,
                window_bytes: None,
                datablocks: None,
                bytes: None,
                entries: Some(vec![CatalogueEntry {
                    uuid: "a".into(),
                    type_id: "Mesh".into(),
                    revision: 1 << 40,
                    size: 0,
                }]),
                batches: None,
            },
            ServerMessage::Snapshot {
                step: SnapshotStep::End,
                window: None,
                window_bytes: None,
                datablocks: Some(2),
                bytes: None,
                entries: None,
                batches: None,
            },
        ];
        for message in messages {
            let frame = encode(&message);
            let ours = match message {
                ServerMessage::Datablocks { .. } => read_datablocks(&frame),
                _ => read_snapshot(&frame),
            };
            assert_eq!(ours.as_ref(), Some(&message));
            assert_eq!(deserialize::<ServerMessage>(&frame).ok(), ours);
        }
    }

    /// Raw MessagePack of a one-entry CATALOGUE whose entry is `entry`.
    fn catalogue_with(entry: &[u8]) -> Vec<u8> {
        let mut out = vec![0x83];
        for s in ["type", "SNAPSHOT", "step", "CATALOGUE", "entries"] {
            let _ = rmp::encode::write_str(&mut out, s);
        }
        out.push(0x91);
        out.extend_from_slice(entry);
        out
    }

    #[test]
    fn leaves_other_shapes_to_serde() {
        // The entry as an array (serde reads a struct from one), with an
        // unknown key, with a duplicate key, and with a negative revision.
        let entry_as_array = [0x94, 0xa1, b'a', 0xa1, b'M', 0x01, 0x02];
        let mut unknown = vec![0x85];
        let mut duplicate = vec![0x84];
        let mut negative = vec![0x84];
        for out in [&mut unknown, &mut duplicate, &mut negative] {
            for s in ["uuid", "a", "type_id", "M", "size"] {
                let _ = rmp::encode::write_str(out, s);
            }
            out.push(0x02);
        }
        for s in ["revision", "later"] {
            let _ = rmp::encode::write_str(&mut unknown, s);
            unknown.push(0x01);
        }
        let _ = rmp::encode::write_str(&mut duplicate, "size");
        duplicate.push(0x03);
        let _ = rmp::encode::write_str(&mut negative, "revision");
        negative.push(0xff);
        let cases: [(&[u8], bool); 4] = [
            (&entry_as_array, true),
            (&unknown, true),
            (&duplicate, false),
            (&negative, false),
        ];
        for (entry, serde_takes_it) in cases {
            let frame = catalogue_with(entry);
            assert_eq!(read_snapshot(&frame), None, "{entry:02x?}");
            assert_eq!(deserialize::<ServerMessage>(&frame).is_ok(), serde_takes_it);
        }
    }
}
