//! The wire format of protocol v2. `docs/protocol.md` is the contract; this
//! module is its only implementation in the server, and the only place that
//! calls rmp-serde.
//!
//! A message is one ZeroMQ multipart message whose first frame (after the
//! routing identity on ROUTER sockets, or the session token on the publisher
//! channel) is a MessagePack map with string keys and a `"type"` key. Messages
//! that carry a datablock's data add one more frame holding that data,
//! itself one MessagePack value, which the server stores and forwards
//! without decoding it.
//!
//! [`old_multiuser`] recognises the pickled messages of old Multi-User
//! clients, which do not speak this protocol, and holds the answers they can read.

pub mod batch;
pub mod codec;
mod marker;
pub mod message;
pub mod old_multiuser;
pub mod patch;
mod reader;
mod snapshot_header;
mod update_header;
pub mod value_check;
pub mod wire;

pub use codec::{decode_header, decode_publisher, decode_server, encode, validate_value};
pub use message::*;
pub use wire::{Channel, Wire};

/// The protocol version this server speaks. A client announcing another one is
/// refused with both versions named.
pub const PROTOCOL_VERSION: u32 = 2;

/// The owner of a datablock nobody has locked.
pub const COMMON: &str = "COMMON";

/// Deepest nesting accepted in any MessagePack value, so that hostile input
/// cannot exhaust the stack of whoever walks it.
pub const MAX_DEPTH: usize = 128;

/// Longest user name, datablock uuid or type id, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Longest dependency list of one datablock. A scene or a collection of
/// tens of thousands of objects depends on each of them; in practice the
/// header limit (`max_header_bytes`, 1 MiB by default: about 27,000 uuids
/// of 36 characters) binds first.
pub const MAX_DEPS: usize = 65_536;

/// Why a frame could not be turned into a message.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ProtocolError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not a valid message: {0}")]
    Malformed(String),
    #[error("{0}")]
    Invalid(String),
    #[error("message has {0} frames; expected {1}")]
    Frames(usize, &'static str),
}

impl ProtocolError {
    /// The machine-readable error code sent to clients.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::Malformed(_) | Self::Frames(..) => ErrorCode::Malformed,
            Self::Invalid(_) => ErrorCode::InvalidMessage,
        }
    }
}

/// Checks a user name, uuid or type id: non-empty, bounded, printable.
pub fn check_name(what: &str, name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Err(ProtocolError::Invalid(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ProtocolError::Invalid(format!(
            "{what} is {} bytes long; the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ProtocolError::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}
