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
