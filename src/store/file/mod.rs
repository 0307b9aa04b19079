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

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rmp::Marker;

use super::{SessionImage, StoredBlock};
use crate::protocol::{MAX_DEPS, MAX_DEPTH, ProtocolError, check_name, validate_value};

#[cfg(test)]
mod tests;

/// The first 8 bytes of every session file.
pub const MAGIC: [u8; 8] = *b"RSESSION";

/// The format version this server writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Size of the uncompressed header: magic, version, flags.
pub const HEADER_BYTES: u64 = 12;

/// zstd compression level of written files.
const ZSTD_LEVEL: i32 = 3;

/// The magic number that starts a zstd frame, as stored (little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The Content_Checksum_flag bit of a zstd frame header descriptor.
const ZSTD_CHECKSUM_FLAG: u8 = 0x04;

/// Bytes of the zstd frame the reader inspects before decoding: the magic
/// number and the frame header descriptor.
const FRAME_PREFIX: usize = 5;

/// Longest string read from a file (names are then held to the protocol's
/// shorter limit): bounds what a damaged length can allocate.
const MAX_STRING_BYTES: usize = 1024;

/// Map keys longer than this are unknown keys; they are skipped unread.
const MAX_KEY_BYTES: usize = 64;

/// Most records or dependencies allocated ahead of reading them: a damaged
/// count must not allocate more than the file really holds.
const MAX_PREALLOCATED: usize = 4096;

/// A datablock's data buffer grows by at least this much at a time.
const DATA_CHUNK: usize = 64 << 10;

/// After a malformed record, most decompressed bytes read on to find out
/// whether the compressed data is damaged (the likelier cause).
const DRAIN_LIMIT: u64 = 1 << 30;

/// Buffer size of file writes.
const IO_BUFFER: usize = 128 << 10;

/// Buffer size of file reads. Kept small so that the offset reported for
/// damaged compressed data (how far the file was read) stays close to the
/// damage: zstd reports it at the end of the block holding it (blocks are
/// at most 128 KiB), so the damage is at most this much more before it.
const READ_BUFFER: usize = 32 << 10;

/// Buffer between the decompressor and the MessagePack reader.
const DECODED_BUFFER: usize = 64 << 10;

/// Distinguishes temporary files of concurrent saves in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

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

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Writes `image` to `path` atomically: to a temporary file in the same
/// directory, synced, then renamed over `path`, then the directory synced.
/// On error the temporary file is removed and `path` is untouched (unless
/// only the final sync of the directory failed).
///
/// Refuses, before writing anything, an image that [`read_session`] would
/// reject (invalid names, revision 0, data that is not one MessagePack value,
/// duplicate uuids).
pub fn write_session(
    path: &Path,
    image: &SessionImage,
    info: &SaveInfo,
) -> Result<FileSummary, FileError> {
    check_image(image, info).map_err(|reason| FileError::Unsavable {
        path: path.to_owned(),
        reason,
    })?;
    let io_error = |action: &'static str| {
        move |source: io::Error| FileError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let (dir, temp) = temporary_path(path).map_err(io_error("save"))?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(io_error("create a temporary file for"))?;
    let written = write_file(&file, image, info)
        .map_err(io_error("write"))
        .and_then(|()| file.sync_all().map_err(io_error("sync")))
        .and_then(|()| file.metadata().map_err(io_error("write")));
    drop(file);
    let file_bytes = match written {
        Ok(metadata) => metadata.len(),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
    };
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(io_error("replace")(e));
    }
    sync_dir(&dir).map_err(io_error("sync the directory of"))?;
    Ok(FileSummary {
        datablocks: image.blocks.len(),
        bytes: image.bytes(),
        file_bytes,
    })
}

/// The directory of `path` and a temporary file name in it.
fn temporary_path(path: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(temp);
    Ok((dir, temp))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Streams the whole file into `file`.
fn write_file(file: &File, image: &SessionImage, info: &SaveInfo) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(IO_BUFFER, file);
    out.write_all(&MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_be_bytes())?;
    out.write_all(&0u16.to_be_bytes())?;
    let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    write_records(&mut encoder, image, info)?;
    encoder.finish()?.flush()
}

/// Writes the header record, one record per datablock and the trailer.
fn write_records<W: Write>(w: &mut W, image: &SessionImage, info: &SaveInfo) -> io::Result<()> {
    use rmp::encode::{write_array_len, write_bin_len, write_bool, write_map_len, write_str};
    let count = u64::try_from(image.blocks.len()).unwrap_or(u64::MAX);
    let bytes = u64::try_from(image.bytes()).unwrap_or(u64::MAX);
    write_map_len(w, 5)?;
    write_str(w, "format")?;
    write_uint(w, FORMAT_VERSION.into())?;
    write_str(w, "server_version")?;
    write_str(w, &info.server_version)?;
    write_str(w, "saved_at")?;
    write_uint(w, info.saved_at_ms)?;
    write_str(w, "datablocks")?;
    write_uint(w, count)?;
    write_str(w, "bytes")?;
    write_uint(w, bytes)?;
    for b in &image.blocks {
        write_array_len(w, 6)?;
        write_str(w, &b.uuid)?;
        write_str(w, &b.type_id)?;
        write_str(w, &b.owner)?;
        write_array_len(w, u32_len(b.deps.len())?)?;
        for dep in &b.deps {
            write_str(w, dep)?;
        }
        write_uint(w, b.revision)?;
        write_bin_len(w, u32_len(b.data.len())?)?;
        w.write_all(&b.data)?;
    }
    write_map_len(w, 2)?;
    write_str(w, "end")?;
    write_bool(w, true)?;
    write_str(w, "datablocks")?;
    write_uint(w, count)
}

fn write_uint<W: Write>(w: &mut W, value: u64) -> io::Result<()> {
    rmp::encode::write_uint(w, value)?;
    Ok(())
}

fn u32_len(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too long"))
}

/// Refuses what the reader would reject.
fn check_image(image: &SessionImage, info: &SaveInfo) -> Result<(), String> {
    if info.server_version.len() > MAX_STRING_BYTES {
        return Err(format!(
            "the server version is {} bytes long; the limit is {MAX_STRING_BYTES}",
            info.server_version.len()
        ));
    }
    let mut seen: HashSet<&str> = HashSet::with_capacity(image.blocks.len());
    for b in &image.blocks {
        check_block(b).map_err(|reason| format!("datablock {:?} is invalid: {reason}", b.uuid))?;
        if u32::try_from(b.data.len()).is_err() {
            return Err(format!(
                "datablock {:?} holds {} bytes of data; a session file holds at most {} per \
                 datablock",
                b.uuid,
                b.data.len(),
                u32::MAX
            ));
        }
        if !seen.insert(&b.uuid) {
            return Err(format!("two datablocks have uuid {:?}", b.uuid));
        }
    }
    Ok(())
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

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Reads a session file. Datablocks whose data exceeds
/// `max_datablock_bytes` are refused before anything is allocated for them.
///
/// Any damage, truncation, or data this reader does not understand is an
/// error naming the file and where the problem is; a damaged file never
/// reads as a different image.
pub fn read_session(
    path: &Path,
    max_datablock_bytes: usize,
) -> Result<(SessionImage, SessionFileHeader), FileError> {
    let io_error = |action: &'static str| {
        move |source: io::Error| FileError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let file = File::open(path).map_err(io_error("open"))?;
    let file_len = file.metadata().map_err(io_error("read"))?.len();
    let mut raw = BufReader::with_capacity(READ_BUFFER, Watched::new(file));

    let mut start = [0u8; HEADER_BYTES as usize + FRAME_PREFIX];
    let got = read_up_to(&mut raw, &mut start).map_err(io_error("read"))?;
    check_start(path, &start, got)?;
    let mut prefix = [0u8; FRAME_PREFIX];
    prefix.copy_from_slice(&start[HEADER_BYTES as usize..]);

    let source = Counted::new(Cursor::new(prefix).chain(raw));
    let decoder = zstd::stream::read::Decoder::with_buffer(source)
        .map_err(io_error("decompress"))?
        .single_frame();
    let mut reader = SessionReader {
        path,
        file_len,
        max_datablock_bytes,
        decoded: Counted::new(BufReader::with_capacity(
            DECODED_BUFFER,
            Watched::new(decoder),
        )),
        announced: None,
        read: 0,
    };
    match reader.read_records() {
        Ok(done) => {
            reader.check_no_trailing_bytes()?;
            Ok(done)
        }
        Err(failure) => {
            if !matches!(failure.problem, Problem::Stream(_)) {
                reader.drain();
            }
            Err(reader.classify(failure))
        }
    }
}

/// Checks the 12-byte header and the start of the zstd frame (`got` bytes
/// of `start` were read).
fn check_start(path: &Path, start: &[u8], got: usize) -> Result<(), FileError> {
    let head = &start[..got.min(start.len())];
    let magic_len = head.len().min(MAGIC.len());
    if head[..magic_len] != MAGIC[..magic_len] {
        return Err(FileError::NotSessionFile {
            path: path.to_owned(),
            reason: format!(
                "it starts with \"{}\" instead of \"RSESSION\"",
                head[..magic_len].escape_ascii()
            ),
        });
    }
    let (Some(version), Some(flags)) = (be_u16(head, 8), be_u16(head, 10)) else {
        return Err(FileError::TruncatedHeader {
            path: path.to_owned(),
            len: head.len(),
        });
    };
    if version == 0 {
        return Err(FileError::NotSessionFile {
            path: path.to_owned(),
            reason: "its format version (byte offset 8) is 0, which does not exist".to_owned(),
        });
    }
    if version != FORMAT_VERSION {
        return Err(FileError::NewerVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if flags != 0 {
        return Err(FileError::UnknownFlags {
            path: path.to_owned(),
            flags,
        });
    }
    let frame = &head[HEADER_BYTES as usize..];
    if frame.len() < FRAME_PREFIX {
        return Err(FileError::Truncated {
            path: path.to_owned(),
            offset: u64::try_from(head.len()).unwrap_or(u64::MAX),
            read: 0,
            announced: None,
        });
    }
    if frame[..4] != ZSTD_MAGIC {
        return Err(FileError::Compressed {
            path: path.to_owned(),
            offset: HEADER_BYTES,
            detail: "the data after the header does not start with a zstd frame".to_owned(),
        });
    }
    if frame[4] & ZSTD_CHECKSUM_FLAG == 0 {
        return Err(FileError::Compressed {
            path: path.to_owned(),
            offset: HEADER_BYTES + 4,
            detail: "the zstd frame has no content checksum, which session files require"
                .to_owned(),
        });
    }
    Ok(())
}

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

/// Reads until `buf` is full or the end of the input; returns the count.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The compressed input: the inspected frame prefix, then the rest of the
/// file; counts the bytes the decompressor consumed.
type Compressed = Counted<io::Chain<Cursor<[u8; FRAME_PREFIX]>, BufReader<Watched<File>>>>;

/// The decompressor over the compressed input.
type Decoder = zstd::stream::read::Decoder<'static, Compressed>;

/// The decompressed data; counts the bytes the MessagePack reader consumed.
type Decompressed = Counted<BufReader<Watched<Decoder>>>;

struct SessionReader<'p> {
    path: &'p Path,
    file_len: u64,
    max_datablock_bytes: usize,
    decoded: Decompressed,
    /// Datablocks the header record announces, once read.
    announced: Option<u64>,
    /// Datablocks read so far.
    read: usize,
}

/// Where reading stopped and why, before it is turned into a [`FileError`].
struct Failure {
    record: Record,
    /// Start of the record in the decompressed data.
    offset: u64,
    problem: Problem,
}

enum Problem {
    /// Reading the decompressed data failed (its end, or the layers below:
    /// see [`SessionReader::classify`]).
    Stream(io::Error),
    Malformed(String),
    Invalid {
        uuid: String,
        reason: String,
    },
    TooLarge {
        uuid: String,
        size: u64,
    },
    Duplicate {
        uuid: String,
        first: usize,
    },
    Count(String),
}

/// Places a problem in `record`, which starts at `offset`.
fn at(record: Record, offset: u64) -> impl FnOnce(Problem) -> Failure {
    move |problem| Failure {
        record,
        offset,
        problem,
    }
}

impl From<io::Error> for Problem {
    fn from(e: io::Error) -> Self {
        Self::Stream(e)
    }
}

impl SessionReader<'_> {
    fn offset(&self) -> u64 {
        self.decoded.count
    }

    fn read_records(&mut self) -> Result<(SessionImage, SessionFileHeader), Failure> {
        let offset = self.offset();
        let header = read_header(&mut self.decoded).map_err(at(Record::Header, offset))?;
        self.announced = Some(header.datablocks);
        let announced = header.datablocks;
        let capacity = usize::try_from(announced)
            .unwrap_or(usize::MAX)
            .min(MAX_PREALLOCATED);
        let mut blocks: Vec<StoredBlock> = Vec::with_capacity(capacity);
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(capacity);
        let mut bytes: u64 = 0;
        let trailer_offset = loop {
            let offset = self.offset();
            let record = Record::Datablock {
                index: blocks.len() + 1,
                announced,
            };
            let marker = read_marker(&mut self.decoded).map_err(at(record, offset))?;
            if let Some(len) = map_len(&mut self.decoded, marker).map_err(at(record, offset))? {
                let trailer =
                    read_trailer(&mut self.decoded, len).map_err(at(Record::Trailer, offset))?;
                check_counts(&header, &trailer, blocks.len(), bytes)
                    .map_err(at(Record::Trailer, offset))?;
                break offset;
            }
            let block = read_block(&mut self.decoded, marker, self.max_datablock_bytes)
                .map_err(at(record, offset))?;
            if let Some(&first) = seen.get(&block.uuid) {
                return Err(at(record, offset)(Problem::Duplicate {
                    uuid: block.uuid,
                    first,
                }));
            }
            seen.insert(block.uuid.clone(), blocks.len() + 1);
            bytes = bytes.saturating_add(u64::try_from(block.data.len()).unwrap_or(u64::MAX));
            blocks.push(block);
            self.read = blocks.len();
        };
        // The frame must end right after the trailer. Reading to its end also
        // makes the decompressor verify the checksum.
        let after = self.offset();
        let mut probe = [0u8; 1];
        match self.decoded.read(&mut probe) {
            Ok(0) => {}
            Ok(_) => {
                return Err(Failure {
                    record: Record::Trailer,
                    offset: trailer_offset,
                    problem: Problem::Malformed(format!(
                        "more data follows it, from uncompressed offset {after}"
                    )),
                });
            }
            Err(e) => {
                return Err(Failure {
                    record: Record::Trailer,
                    offset: trailer_offset,
                    problem: Problem::Stream(e),
                });
            }
        }
        Ok((SessionImage { blocks }, header))
    }

    /// Offset in the file of the first compressed byte the decompressor has
    /// not consumed.
    fn consumed_offset(&self) -> u64 {
        HEADER_BYTES + self.compressed().count
    }

    /// How far the file was read: just past where the decompressor failed.
    fn read_offset(&self) -> u64 {
        self.watched_file().count
    }

    fn watched_decoder(&self) -> &Watched<Decoder> {
        self.decoded.inner.get_ref()
    }

    fn compressed(&self) -> &Compressed {
        self.watched_decoder().inner.get_ref()
    }

    fn watched_file(&self) -> &Watched<File> {
        self.compressed().inner.get_ref().1.get_ref()
    }

    fn compressed_mut(&mut self) -> &mut Compressed {
        self.decoded.inner.get_mut().inner.get_mut()
    }

    /// After the trailer: nothing may follow the zstd frame.
    fn check_no_trailing_bytes(&mut self) -> Result<(), FileError> {
        let offset = self.consumed_offset();
        let more = match self.compressed_mut().fill_buf() {
            Ok(rest) => !rest.is_empty(),
            Err(source) => {
                return Err(FileError::Io {
                    path: self.path.to_owned(),
                    action: "read",
                    source,
                });
            }
        };
        if more {
            return Err(FileError::TrailingBytes {
                path: self.path.to_owned(),
                offset,
                extra: self.file_len.saturating_sub(offset).max(1),
            });
        }
        Ok(())
    }

    /// Reads on (up to a limit), so that damaged compressed data, the likelier
    /// cause of a malformed record, is reported as such.
    fn drain(&mut self) {
        let _ = io::copy(&mut (&mut self.decoded).take(DRAIN_LIMIT), &mut io::sink());
    }

    /// Turns a failure into the error to report: a failure of the file
    /// first, then of the decompressor, then of the records.
    fn classify(&mut self, failure: Failure) -> FileError {
        let path = self.path.to_owned();
        let Failure {
            record,
            offset,
            problem,
        } = failure;
        let file_error = self
            .compressed_mut()
            .inner
            .get_mut()
            .1
            .get_mut()
            .error
            .take();
        if let Some(source) = file_error {
            return FileError::Io {
                path,
                action: "read",
                source,
            };
        }
        let read_offset = self.read_offset();
        let truncated = FileError::Truncated {
            path: path.clone(),
            offset: read_offset,
            read: self.read,
            announced: self.announced,
        };
        if let Some(e) = &self.watched_decoder().error {
            if e.kind() == io::ErrorKind::UnexpectedEof && self.watched_file().eof {
                return truncated;
            }
            return FileError::Compressed {
                path,
                offset: read_offset,
                detail: e.to_string(),
            };
        }
        match problem {
            Problem::Stream(_) if self.watched_decoder().eof => truncated,
            Problem::Stream(source) => FileError::Io {
                path,
                action: "read",
                source,
            },
            Problem::Malformed(detail) => FileError::Malformed {
                path,
                record,
                offset,
                detail,
            },
            Problem::Invalid { uuid, reason } => FileError::InvalidBlock {
                path,
                record,
                offset,
                uuid,
                reason,
            },
            Problem::TooLarge { uuid, size } => FileError::BlockTooLarge {
                path,
                record,
                offset,
                uuid,
                size,
                limit: self.max_datablock_bytes,
            },
            Problem::Duplicate { uuid, first } => FileError::DuplicateUuid {
                path,
                record,
                offset,
                uuid,
                first,
            },
            Problem::Count(detail) => FileError::CountMismatch {
                path,
                offset,
                detail,
            },
        }
    }
}

/// What the trailer record says.
struct Trailer {
    datablocks: u64,
}

fn check_counts(
    header: &SessionFileHeader,
    trailer: &Trailer,
    read: usize,
    bytes: u64,
) -> Result<(), Problem> {
    let read = u64::try_from(read).unwrap_or(u64::MAX);
    if header.datablocks != trailer.datablocks || header.datablocks != read {
        return Err(Problem::Count(format!(
            "its header record announces {} datablocks and its trailer {}, but it holds {read}",
            header.datablocks, trailer.datablocks
        )));
    }
    if header.bytes != bytes {
        return Err(Problem::Count(format!(
            "its header record announces {} bytes of data, but its datablocks hold {bytes}",
            header.bytes
        )));
    }
    Ok(())
}

fn read_header<R: Read>(r: &mut R) -> Result<SessionFileHeader, Problem> {
    let marker = read_marker(r)?;
    let Some(len) = map_len(r, marker)? else {
        return Err(Problem::Malformed(format!(
            "it is {}, not a map",
            kind(marker)
        )));
    };
    let mut format = None;
    let mut server_version = None;
    let mut saved_at = None;
    let mut datablocks = None;
    let mut bytes = None;
    for _ in 0..len {
        match read_key(r)?.as_deref() {
            Some(key @ "format") => set_once(&mut format, key, read_count(r, key)?)?,
            Some(key @ "server_version") => set_once(
                &mut server_version,
                key,
                read_string(r, key, MAX_STRING_BYTES)?,
            )?,
            Some(key @ "saved_at") => set_once(&mut saved_at, key, read_count(r, key)?)?,
            Some(key @ "datablocks") => set_once(&mut datablocks, key, read_count(r, key)?)?,
            Some(key @ "bytes") => set_once(&mut bytes, key, read_count(r, key)?)?,
            _ => skip_value(r)?,
        }
    }
    let format = required(format, "format")?;
    if format != u64::from(FORMAT_VERSION) {
        return Err(Problem::Malformed(format!(
            "its format is {format}, but the file's header (byte offset 8) says {FORMAT_VERSION}"
        )));
    }
    Ok(SessionFileHeader {
        format: FORMAT_VERSION,
        server_version: required(server_version, "server_version")?,
        saved_at_ms: required(saved_at, "saved_at")?,
        datablocks: required(datablocks, "datablocks")?,
        bytes: required(bytes, "bytes")?,
    })
}

fn read_trailer<R: Read>(r: &mut R, len: u32) -> Result<Trailer, Problem> {
    let mut end = None;
    let mut datablocks = None;
    for _ in 0..len {
        match read_key(r)?.as_deref() {
            Some(key @ "end") => {
                let marker = read_marker(r)?;
                let value = match marker {
                    Marker::True => true,
                    Marker::False => false,
                    other => {
                        return Err(Problem::Malformed(format!(
                            "\"end\" is {}, not a boolean",
                            kind(other)
                        )));
                    }
                };
                set_once(&mut end, key, value)?;
            }
            Some(key @ "datablocks") => set_once(&mut datablocks, key, read_count(r, key)?)?,
            _ => skip_value(r)?,
        }
    }
    if !required(end, "end")? {
        return Err(Problem::Malformed("\"end\" is false".to_owned()));
    }
    Ok(Trailer {
        datablocks: required(datablocks, "datablocks")?,
    })
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), Problem> {
    if slot.replace(value).is_some() {
        return Err(Problem::Malformed(format!("key \"{key}\" appears twice")));
    }
    Ok(())
}

fn required<T>(slot: Option<T>, key: &str) -> Result<T, Problem> {
    slot.ok_or_else(|| Problem::Malformed(format!("required key \"{key}\" is missing")))
}

/// Reads one datablock record, whose array marker is already read.
fn read_block<R: Read>(
    r: &mut R,
    marker: Marker,
    max_datablock_bytes: usize,
) -> Result<StoredBlock, Problem> {
    let Some(len) = array_len(r, marker)? else {
        return Err(Problem::Malformed(format!(
            "it is {}; expected an array (a datablock) or a map (the trailer)",
            kind(marker)
        )));
    };
    if len != 6 {
        return Err(Problem::Malformed(format!(
            "it is an array of {len} items; a datablock record has 6"
        )));
    }
    let uuid = read_string(r, "its uuid", MAX_STRING_BYTES)?;
    let invalid = |uuid: &str, reason: String| Problem::Invalid {
        uuid: uuid.to_owned(),
        reason,
    };
    let type_id = read_string(r, "its type_id", MAX_STRING_BYTES)?;
    let owner = read_string(r, "its owner", MAX_STRING_BYTES)?;
    let marker = read_marker(r)?;
    let Some(count) = array_len(r, marker)? else {
        return Err(Problem::Malformed(format!(
            "its dependencies are {}, not an array",
            kind(marker)
        )));
    };
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count > MAX_DEPS {
        return Err(invalid(
            &uuid,
            format!("{count} dependencies; the limit is {MAX_DEPS}"),
        ));
    }
    let mut deps = Vec::with_capacity(count.min(MAX_PREALLOCATED));
    for _ in 0..count {
        deps.push(read_string(r, "a dependency", MAX_STRING_BYTES)?);
    }
    let revision = read_integer(r, "its revision")?;
    let Ok(revision) = u64::try_from(revision) else {
        return Err(invalid(
            &uuid,
            format!("revision is {revision}; revisions start at 1"),
        ));
    };
    let marker = read_marker(r)?;
    let size = match marker {
        Marker::Bin8 => u32::from(read_u8(r)?),
        Marker::Bin16 => u32::from(read_u16(r)?),
        Marker::Bin32 => read_u32(r)?,
        other => {
            return Err(Problem::Malformed(format!(
                "its data is {}, not binary data (bin)",
                kind(other)
            )));
        }
    };
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > max_datablock_bytes {
        return Err(Problem::TooLarge {
            uuid,
            size: u64::try_from(size).unwrap_or(u64::MAX),
        });
    }
    let data = read_data(r, size)?;
    let block = StoredBlock {
        uuid,
        type_id,
        owner,
        deps,
        revision,
        data: Bytes::from(data),
    };
    check_block(&block).map_err(|reason| invalid(&block.uuid, reason))?;
    Ok(block)
}

/// Reads exactly `len` bytes, growing the buffer only as data arrives.
fn read_data<R: Read>(r: &mut R, len: usize) -> Result<Vec<u8>, Problem> {
    let mut buf: Vec<u8> = Vec::new();
    let mut filled = 0;
    while filled < len {
        if filled == buf.len() {
            let grow = (len - filled).min(buf.len().max(DATA_CHUNK));
            buf.reserve_exact(grow);
            buf.resize(filled + grow, 0);
        }
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf)
}

// --- MessagePack primitives, bounded ---------------------------------------

fn read_marker<R: Read>(r: &mut R) -> Result<Marker, Problem> {
    rmp::decode::read_marker(r).map_err(|e| Problem::Stream(e.0))
}

fn read_u8<R: Read>(r: &mut R) -> Result<u8, Problem> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u16<R: Read>(r: &mut R) -> Result<u16, Problem> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32<R: Read>(r: &mut R) -> Result<u32, Problem> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64<R: Read>(r: &mut R) -> Result<u64, Problem> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// The length of a map whose marker is read, or `None` if it is no map.
fn map_len<R: Read>(r: &mut R, marker: Marker) -> Result<Option<u32>, Problem> {
    Ok(Some(match marker {
        Marker::FixMap(n) => n.into(),
        Marker::Map16 => read_u16(r)?.into(),
        Marker::Map32 => read_u32(r)?,
        _ => return Ok(None),
    }))
}

/// The length of an array whose marker is read, or `None` if it is no array.
fn array_len<R: Read>(r: &mut R, marker: Marker) -> Result<Option<u32>, Problem> {
    Ok(Some(match marker {
        Marker::FixArray(n) => n.into(),
        Marker::Array16 => read_u16(r)?.into(),
        Marker::Array32 => read_u32(r)?,
        _ => return Ok(None),
    }))
}

/// The length of a string whose marker is read, or `None` if it is no string.
fn str_len<R: Read>(r: &mut R, marker: Marker) -> Result<Option<u32>, Problem> {
    Ok(Some(match marker {
        Marker::FixStr(n) => n.into(),
        Marker::Str8 => read_u8(r)?.into(),
        Marker::Str16 => read_u16(r)?.into(),
        Marker::Str32 => read_u32(r)?,
        _ => return Ok(None),
    }))
}

/// Reads a string of at most `max` bytes.
fn read_string<R: Read>(r: &mut R, what: &str, max: usize) -> Result<String, Problem> {
    let marker = read_marker(r)?;
    let Some(len) = str_len(r, marker)? else {
        return Err(Problem::Malformed(format!(
            "{what} is {}, not a string",
            kind(marker)
        )));
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(Problem::Malformed(format!(
            "{what} is a string of {len} bytes; at most {max} are allowed"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    String::from_utf8(buf).map_err(|_| Problem::Malformed(format!("{what} is not valid UTF-8")))
}

/// Reads a map key: `None` for a key too long to be known (skipped).
fn read_key<R: Read>(r: &mut R) -> Result<Option<String>, Problem> {
    let marker = read_marker(r)?;
    let Some(len) = str_len(r, marker)? else {
        return Err(Problem::Malformed(format!(
            "a key is {}; keys must be strings",
            kind(marker)
        )));
    };
    let size = usize::try_from(len).unwrap_or(usize::MAX);
    if size > MAX_KEY_BYTES {
        skip_bytes(r, len.into())?;
        return Ok(None);
    }
    let mut buf = vec![0u8; size];
    r.read_exact(&mut buf)?;
    Ok(String::from_utf8(buf).ok())
}

/// Reads an integer of any MessagePack integer type.
fn read_integer<R: Read>(r: &mut R, what: &str) -> Result<i128, Problem> {
    let marker = read_marker(r)?;
    Ok(match marker {
        Marker::FixPos(n) => n.into(),
        Marker::FixNeg(n) => n.into(),
        Marker::U8 => read_u8(r)?.into(),
        Marker::U16 => read_u16(r)?.into(),
        Marker::U32 => read_u32(r)?.into(),
        Marker::U64 => read_u64(r)?.into(),
        Marker::I8 => i8::from_be_bytes([read_u8(r)?]).into(),
        Marker::I16 => i16::from_be_bytes(read_u16(r)?.to_be_bytes()).into(),
        Marker::I32 => i32::from_be_bytes(read_u32(r)?.to_be_bytes()).into(),
        Marker::I64 => i64::from_be_bytes(read_u64(r)?.to_be_bytes()).into(),
        other => {
            return Err(Problem::Malformed(format!(
                "{what} is {}, not an integer",
                kind(other)
            )));
        }
    })
}

/// Reads a non-negative integer.
fn read_count<R: Read>(r: &mut R, what: &str) -> Result<u64, Problem> {
    let n = read_integer(r, what)?;
    u64::try_from(n).map_err(|_| Problem::Malformed(format!("{what} is negative ({n})")))
}

fn skip_bytes<R: Read>(r: &mut R, n: u64) -> Result<(), Problem> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

/// Skips one value of any type (an unknown key's), nested at most
/// [`MAX_DEPTH`] deep, without allocating for its content.
fn skip_value<R: Read>(r: &mut R) -> Result<(), Problem> {
    // Items still to skip at each open level; the outermost is the value.
    let mut pending: Vec<u64> = vec![1];
    while let Some(left) = pending.last_mut() {
        if *left == 0 {
            pending.pop();
            continue;
        }
        *left -= 1;
        let marker = read_marker(r)?;
        let (bytes, items): (u64, u64) = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (n.into(), 0),
            Marker::Str8 | Marker::Bin8 => (read_u8(r)?.into(), 0),
            Marker::Str16 | Marker::Bin16 => (read_u16(r)?.into(), 0),
            Marker::Str32 | Marker::Bin32 => (read_u32(r)?.into(), 0),
            Marker::FixArray(n) => (0, n.into()),
            Marker::Array16 => (0, read_u16(r)?.into()),
            Marker::Array32 => (0, read_u32(r)?.into()),
            Marker::FixMap(n) => (0, 2 * u64::from(n)),
            Marker::Map16 => (0, 2 * u64::from(read_u16(r)?)),
            Marker::Map32 => (0, 2 * u64::from(read_u32(r)?)),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (u64::from(read_u8(r)?) + 1, 0),
            Marker::Ext16 => (u64::from(read_u16(r)?) + 1, 0),
            Marker::Ext32 => (u64::from(read_u32(r)?) + 1, 0),
            Marker::Reserved => {
                return Err(Problem::Malformed(
                    "it holds the reserved MessagePack byte 0xc1".to_owned(),
                ));
            }
        };
        skip_bytes(r, bytes)?;
        if items > 0 {
            if pending.len() > MAX_DEPTH {
                return Err(Problem::Malformed(format!(
                    "a value is nested more than {MAX_DEPTH} levels deep"
                )));
            }
            pending.push(items);
        }
    }
    Ok(())
}

/// What a MessagePack marker introduces, for error messages.
fn kind(marker: Marker) -> &'static str {
    match marker {
        Marker::FixPos(_)
        | Marker::FixNeg(_)
        | Marker::U8
        | Marker::U16
        | Marker::U32
        | Marker::U64
        | Marker::I8
        | Marker::I16
        | Marker::I32
        | Marker::I64 => "an integer",
        Marker::Null => "nil",
        Marker::True | Marker::False => "a boolean",
        Marker::F32 | Marker::F64 => "a float",
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => "a string",
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => "binary data",
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => "an array",
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => "a map",
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32 => "an extension value",
        Marker::Reserved => "the reserved byte 0xc1",
    }
}

// --- Reader layers -----------------------------------------------------------

/// Counts the bytes read (or consumed, as a `BufRead`) through it.
struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R> Counted<R> {
    fn new(inner: R) -> Self {
        Self { inner, count: 0 }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += u64::try_from(n).unwrap_or(u64::MAX);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.count += u64::try_from(amt).unwrap_or(u64::MAX);
    }
}

/// Remembers the first error of the reader below it, whether it ended and
/// how much it delivered, so that a failure seen above (by the MessagePack
/// reader) can be traced to its layer: the file or the decompressor.
struct Watched<R> {
    inner: R,
    error: Option<io::Error>,
    eof: bool,
    count: u64,
}

impl<R> Watched<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            error: None,
            eof: false,
            count: 0,
        }
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.eof = true;
                Ok(0)
            }
            Ok(n) => {
                self.count += u64::try_from(n).unwrap_or(u64::MAX);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                if self.error.is_none() {
                    self.error = Some(e);
                }
                Err(copy)
            }
        }
    }
}
