//! Outgoing messages as frames, ready for the transport: encoded once, shared
//! by every recipient.

use bytes::Bytes;

use super::{ChunkFields, PayloadSpec, ServerMessage, encode};

/// The four channels, in port order (base + index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Commands = 0,
    Subscriber = 1,
    Publisher = 2,
    Heartbeat = 3,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Self::Commands,
        Self::Subscriber,
        Self::Publisher,
        Self::Heartbeat,
    ];

    /// Lower-case name used in logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Commands => "commands",
            Self::Subscriber => "subscriber",
            Self::Publisher => "publisher",
            Self::Heartbeat => "heartbeat",
        }
    }
}

/// One outgoing message: an encoded header and an optional data frame.
/// Cloning shares the bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Wire {
    pub header: Bytes,
    pub payload: Option<Bytes>,
    /// A forwarded UPDATE with its data inline, which may travel inside an
    /// UPDATES to clients that read batches ([`super::batch`]).
    pub batchable: bool,
}

impl Wire {
    /// A message with no data frame.
    pub fn message(msg: &ServerMessage) -> Self {
        Self {
            header: encode(msg),
            payload: None,
            batchable: false,
        }
    }

    /// Bytes this message occupies in an outbox.
    pub fn len(&self) -> usize {
        self.header.len() + self.payload.as_ref().map_or(0, Bytes::len)
    }

    /// True for a message with no bytes at all (never produced in practice).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds the messages that carry `payload` with a header made by `header`:
/// one message with a data frame when the payload fits in a chunk, otherwise a
/// header announcing the chunks followed by CHUNK messages that slice the same
/// bytes without copying them.
pub fn with_payload(
    header: impl FnOnce(ChunkFields) -> ServerMessage,
    payload: Bytes,
    chunk_bytes: usize,
    transfer: u64,
) -> Vec<Wire> {
    let chunk_bytes = chunk_bytes.max(1);
    if payload.len() <= chunk_bytes {
        return vec![Wire {
            header: encode(&header(ChunkFields::default())),
            payload: Some(payload),
            batchable: false,
        }];
    }
    let chunks = payload.len().div_ceil(chunk_bytes);
    let spec = PayloadSpec::Chunked {
        transfer,
        chunks: u32::try_from(chunks).unwrap_or(u32::MAX),
        size: payload.len() as u64,
    };
    let mut out = Vec::with_capacity(chunks + 1);
    out.push(Wire {
        header: encode(&header(ChunkFields::from_spec(spec))),
        payload: None,
        batchable: false,
    });
    for index in 0..chunks {
        let start = index * chunk_bytes;
        let end = (start + chunk_bytes).min(payload.len());
        out.push(Wire {
            header: encode(&ServerMessage::Chunk {
                transfer,
                index: u32::try_from(index).unwrap_or(u32::MAX),
            }),
            payload: Some(payload.slice(start..end)),
            batchable: false,
        });
    }
    out
}

/// A datablock's header fields, borrowed from where the server keeps them,
/// for writing DATABLOCK headers without building a [`ServerMessage`].
#[derive(Debug, Clone, Copy)]
pub struct DatablockRef<'a> {
    pub uuid: &'a str,
    pub type_id: &'a str,
    pub owner: &'a str,
    pub deps: &'a [String],
    pub revision: u64,
}

impl DatablockRef<'_> {
    /// Appends the header of a snapshot DATABLOCK whose data is inline (no
    /// `id`, no chunk keys): the same map the serde encoding of
    /// [`ServerMessage::Datablock`] gives, key for key.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_map_len(out, 6);
        let _ = rmp::encode::write_str(out, "type");
        let _ = rmp::encode::write_str(out, "DATABLOCK");
        self.write_fields(out);
    }

    /// Appends the header of a forwarded UPDATE whose data is inline (no
    /// chunk keys): the same map the serde encoding of
    /// [`ServerMessage::Update`] gives, key for key, without serde's
    /// buffering of flattened maps.
    pub fn write_update_header(&self, sender: &str, patch: bool, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_map_len(out, 8);
        let _ = rmp::encode::write_str(out, "type");
        let _ = rmp::encode::write_str(out, "UPDATE");
        self.write_fields(out);
        let _ = rmp::encode::write_str(out, "sender");
        let _ = rmp::encode::write_str(out, sender);
        let _ = rmp::encode::write_str(out, "patch");
        let _ = rmp::encode::write_bool(out, patch);
    }

    /// The five keys every datablock header has, in serde's order.
    fn write_fields(&self, out: &mut Vec<u8>) {
        let _ = rmp::encode::write_str(out, "uuid");
        let _ = rmp::encode::write_str(out, self.uuid);
        let _ = rmp::encode::write_str(out, "type_id");
        let _ = rmp::encode::write_str(out, self.type_id);
        let _ = rmp::encode::write_str(out, "owner");
        let _ = rmp::encode::write_str(out, self.owner);
        let _ = rmp::encode::write_str(out, "deps");
        let _ = rmp::encode::write_array_len(out, self.deps.len() as u32);
        for dep in self.deps {
            let _ = rmp::encode::write_str(out, dep);
        }
        let _ = rmp::encode::write_str(out, "revision");
        let _ = rmp::encode::write_uint(out, self.revision);
    }

    /// The encoded header's size, at most (for reserving).
    pub fn header_bound(&self) -> usize {
        let deps: usize = self.deps.iter().map(|d| d.len() + 5).sum();
        64 + self.uuid.len() + self.type_id.len() + self.owner.len() + deps
    }
}

/// A snapshot CATALOGUE page listing `entries` (uuid, type, revision,
/// size), written directly: the same map the serde encoding of
/// [`ServerMessage::Snapshot`] with only `entries` gives.
pub fn catalogue_page<'a>(
    entries: impl ExactSizeIterator<Item = (&'a str, &'a str, u64, u64)>,
) -> Wire {
    let mut out = Vec::with_capacity(32 + entries.len() * 64);
    let _ = rmp::encode::write_map_len(&mut out, 3);
    let _ = rmp::encode::write_str(&mut out, "type");
    let _ = rmp::encode::write_str(&mut out, "SNAPSHOT");
    let _ = rmp::encode::write_str(&mut out, "step");
    let _ = rmp::encode::write_str(&mut out, "CATALOGUE");
    let _ = rmp::encode::write_str(&mut out, "entries");
    let _ = rmp::encode::write_array_len(&mut out, entries.len() as u32);
    for (uuid, type_id, revision, size) in entries {
        let _ = rmp::encode::write_map_len(&mut out, 4);
        let _ = rmp::encode::write_str(&mut out, "uuid");
        let _ = rmp::encode::write_str(&mut out, uuid);
        let _ = rmp::encode::write_str(&mut out, "type_id");
        let _ = rmp::encode::write_str(&mut out, type_id);
        let _ = rmp::encode::write_str(&mut out, "revision");
        let _ = rmp::encode::write_uint(&mut out, revision);
        let _ = rmp::encode::write_str(&mut out, "size");
        let _ = rmp::encode::write_uint(&mut out, size);
    }
    Wire {
        header: Bytes::from(out),
        payload: None,
        batchable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CatalogueEntry, ChunkFields, DatablockHeader, SnapshotStep};

    /// One datablock, as the writers borrow it and as serde encodes it.
    fn object(deps: &[String], revision: u64) -> (DatablockRef<'_>, DatablockHeader) {
        let fields = DatablockRef {
            uuid: "obj",
            type_id: "Object",
            owner: "COMMON",
            deps,
            revision,
        };
        let header = DatablockHeader {
            uuid: "obj".into(),
            type_id: "Object".into(),
            owner: "COMMON".into(),
            deps: deps.to_vec(),
            revision,
        };
        (fields, header)
    }

    #[test]
    fn datablock_headers_are_written_as_serde_writes_them() {
        let deps = ["mat".to_owned(), "mesh-ü".to_owned()];
        for (deps, revision) in [(&deps[..], 7), (&[][..], u64::MAX), (&deps[..1], 0)] {
            let (block, header) = object(deps, revision);
            let mut written = Vec::new();
            block.write_header(&mut written);
            assert!(written.len() <= block.header_bound());
            let via_serde = encode(&ServerMessage::Datablock {
                header,
                id: None,
                chunk: ChunkFields::default(),
            });
            assert_eq!(written, via_serde[..]);
        }
    }

    #[test]
    fn update_headers_are_written_as_serde_writes_them() {
        let deps = ["mat".to_owned(), "mesh-ü".to_owned()];
        let cases = [
            (&deps[..], 7, "alice", false),
            (&[][..], u64::MAX, "", true),
            (&deps[..1], 0, "bö", true),
        ];
        for (deps, revision, sender, patch) in cases {
            let (block, header) = object(deps, revision);
            let mut written = Vec::new();
            block.write_update_header(sender, patch, &mut written);
            let via_serde = encode(&ServerMessage::Update {
                header,
                sender: sender.into(),
                patch,
                chunk: ChunkFields::default(),
            });
            assert_eq!(written, via_serde[..]);
        }
    }

    #[test]
    fn catalogue_pages_are_written_as_serde_writes_them() {
        let entries = [("a", "Mesh", 1, 10), ("b-ü", "Object", u64::MAX, 0)];
        let written = catalogue_page(entries.iter().copied());
        let via_serde = encode(&ServerMessage::Snapshot {
            step: SnapshotStep::Catalogue,
            window: None,
            window_bytes: None,
            datablocks: None,
            bytes: None,
            entries: Some(
                entries
                    .iter()
                    .map(|&(uuid, type_id, revision, size)| CatalogueEntry {
                        uuid: uuid.into(),
                        type_id: type_id.into(),
                        revision,
                        size,
                    })
                    .collect(),
            ),
            batches: None,
        });
        assert_eq!(written.header, via_serde);
        assert_eq!(written.payload, None);
    }
}
