//! Session files: portable, compressed backups of a whole session, written by
//! the console's `save` command and by autosave, read by `--load`.
//! `docs/session-file.md` is the contract; this module is its implementation.
//!
//! A file is a 12-byte header (`RSESSION`, format version, flags) followed by
//! one zstd frame with a content checksum. The frame holds MessagePack
//! values: a header map, one array per datablock, and a trailer map.
//!
//! Writing streams to a temporary file in the target's directory, syncs it,
//! renames it over the target and syncs the directory, so a crash leaves
//! either the old file or the new one. Reading streams too: every allocation
//! is bounded by an explicit limit or by data the file really holds, and any
//! damage becomes a [`FileError`] naming the file and where the damage is.
//! The zstd checksum covers everything after the 12-byte header, and the
//! reader checks that header, the frame's checksum flag and that nothing
//! follows the frame, so a damaged file never loads as a different session.

use std::time::{SystemTime, UNIX_EPOCH};

use super::StoredBlock;
use crate::protocol::{MAX_DEPS, ProtocolError, check_name, validate_value};

mod error;
mod read;
mod write;

#[cfg(test)]
mod tests;

pub use error::{FileError, Record};
pub use read::read_session;
pub use write::write_session;

// What the tests use besides this module's own items.
#[cfg(test)]
use {
    super::SessionImage,
    crate::protocol::MAX_DEPTH,
    bytes::Bytes,
    std::fs,
    std::io::Write,
    std::path::{Path, PathBuf},
    write::temporary_path,
};

/// The first 8 bytes of every session file.
pub const MAGIC: [u8; 8] = *b"RSESSION";

/// The format version this server writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Size of the uncompressed header: magic, version, flags.
pub const HEADER_BYTES: u64 = 12;

/// The magic number that starts a zstd frame, as stored (little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The Content_Checksum_flag bit of a zstd frame header descriptor.
const ZSTD_CHECKSUM_FLAG: u8 = 0x04;

/// Longest string read from a file (names are then held to the protocol's
/// shorter limit): bounds what a damaged length can allocate.
const MAX_STRING_BYTES: usize = 1024;

/// What a written file records about the server that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveInfo {
    pub server_version: String,
    /// Unix time in milliseconds.
    pub saved_at_ms: u64,
}

impl SaveInfo {
    /// This server's version and the current time.
    pub fn now() -> Self {
        let saved_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            saved_at_ms,
        }
    }
}

/// What [`write_session`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSummary {
    pub datablocks: usize,
    /// Sum of the datablocks' encoded sizes.
    pub bytes: usize,
    /// Size of the file.
    pub file_bytes: u64,
}

/// The header record of a session file, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFileHeader {
    pub format: u16,
    pub server_version: String,
    /// Unix time in milliseconds.
    pub saved_at_ms: u64,
    pub datablocks: u64,
    /// Sum of the datablocks' encoded sizes.
    pub bytes: u64,
}

/// The rules every stored datablock follows, on writing and on reading.
fn check_block(b: &StoredBlock) -> Result<(), String> {
    let text = |e: ProtocolError| match e {
        ProtocolError::Invalid(s) | ProtocolError::Malformed(s) => s,
        other => other.to_string(),
    };
    check_name("uuid", &b.uuid).map_err(text)?;
    check_name("type_id", &b.type_id).map_err(text)?;
    check_name("owner", &b.owner).map_err(text)?;
    if b.deps.len() > MAX_DEPS {
        return Err(format!(
            "{} dependencies; the limit is {MAX_DEPS}",
            b.deps.len()
        ));
    }
    for dep in &b.deps {
        check_name("dependency uuid", dep).map_err(text)?;
    }
    if b.revision == 0 {
        return Err("revision is 0; revisions start at 1".to_owned());
    }
    validate_value(&b.data)
        .map_err(|e| format!("its data is not one valid MessagePack value: {}", text(e)))
}
