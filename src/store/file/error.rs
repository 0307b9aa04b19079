//! What can go wrong with a session file, and where.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::HEADER_BYTES;

/// A record of the compressed part of a session file, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Header,
    /// The `index`-th datablock (from 1) of the `announced` ones.
    Datablock {
        index: usize,
        announced: u64,
    },
    Trailer,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header => f.write_str("the header record"),
            Self::Datablock { index, announced } => {
                write!(f, "datablock {index} of {announced}")
            }
            Self::Trailer => f.write_str("the trailer record"),
        }
    }
}

/// Why a session file could not be written or read. Every message names the
/// file, says where the problem is and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot {action} session file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot save session file {}: {reason}; nothing was written", .path.display())]
    Unsavable { path: PathBuf, reason: String },
    #[error("{} is not a session file: {reason}; check that you gave the right file", .path.display())]
    NotSessionFile { path: PathBuf, reason: String },
    #[error(
        "{} is truncated: it is {len} bytes long, shorter than the {HEADER_BYTES}-byte header of \
         a session file; it was not completely written or copied: restore it from a backup",
        .path.display()
    )]
    TruncatedHeader { path: PathBuf, len: usize },
    #[error(
        "{} is a session file of format version {found} (byte offset 8), but this server reads \
         only version {supported}: load it with the newer replication-serve that wrote it",
        .path.display()
    )]
    NewerVersion {
        path: PathBuf,
        found: u16,
        supported: u16,
    },
    #[error(
        "{} uses session file flags {flags:#06x} (byte offset 10) that this server does not \
         know: load it with the newer replication-serve that wrote it",
        .path.display()
    )]
    UnknownFlags { path: PathBuf, flags: u16 },
    #[error(
        "{} is damaged: its compressed data cannot be decoded near byte offset {offset} \
         ({detail}); restore it from a backup",
        .path.display()
    )]
    Compressed {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error(
        "{} ends too early: its data stops near byte offset {offset}, {}; it was not \
         completely written or copied, or it is damaged: restore it from a backup",
        .path.display(), progress(.read, .announced)
    )]
    Truncated {
        path: PathBuf,
        offset: u64,
        /// Datablocks read before the end.
        read: usize,
        /// What the header record announced, if it was read.
        announced: Option<u64>,
    },
    #[error(
        "{} is damaged: {record}, at uncompressed offset {offset}, is malformed: {detail}; \
         restore it from a backup",
        .path.display()
    )]
    Malformed {
        path: PathBuf,
        record: Record,
        /// Offset of the record's start in the decompressed data.
        offset: u64,
        detail: String,
    },
    #[error(
        "{} cannot be loaded: {record} (uncompressed offset {offset}), uuid {uuid:?}, is \
         invalid: {reason}",
        .path.display()
    )]
    InvalidBlock {
        path: PathBuf,
        record: Record,
        offset: u64,
        uuid: String,
        reason: String,
    },
    #[error(
        "{} cannot be loaded: {record} (uncompressed offset {offset}), uuid {uuid:?}, holds \
         {size} bytes of data, more than the limit of {limit}: raise \
         limits.max_datablock_bytes to load it",
        .path.display()
    )]
    BlockTooLarge {
        path: PathBuf,
        record: Record,
        offset: u64,
        uuid: String,
        size: u64,
        limit: usize,
    },
    #[error(
        "{} cannot be loaded: {record} (uncompressed offset {offset}) has uuid {uuid:?}, like \
         datablock {first}; a session holds each uuid once",
        .path.display()
    )]
    DuplicateUuid {
        path: PathBuf,
        record: Record,
        offset: u64,
        uuid: String,
        first: usize,
    },
    #[error(
        "{} is damaged: {detail} (trailer at uncompressed offset {offset}); restore it from a \
         backup",
        .path.display()
    )]
    CountMismatch {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error(
        "{} has {extra} unexpected bytes after its compressed data, from byte offset {offset}; \
         something was appended to it: restore it from a backup",
        .path.display()
    )]
    TrailingBytes {
        path: PathBuf,
        offset: u64,
        extra: u64,
    },
}

/// How far reading got, for [`FileError::Truncated`].
fn progress(read: &usize, announced: &Option<u64>) -> String {
    match announced {
        None => "before the end of its header record".to_owned(),
        Some(n) => format!("after {read} of the {n} datablocks it announces"),
    }
}
