//! Reading a session file: the header, then the records, streamed through
//! layers that trace any failure to the file, the decompressor or a record.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::Path;

use super::{
    FORMAT_VERSION, FileError, HEADER_BYTES, MAGIC, Record, SessionFileHeader, ZSTD_CHECKSUM_FLAG,
    ZSTD_MAGIC,
};
use crate::store::{SessionImage, StoredBlock};

mod layers;
mod msgpack;
mod records;

use layers::{Counted, Watched};
use msgpack::{map_len, read_marker};
use records::{check_counts, read_block, read_header, read_trailer};

/// Bytes of the zstd frame the reader inspects before decoding: the magic
/// number and the frame header descriptor.
const FRAME_PREFIX: usize = 5;

/// Most records or dependencies allocated ahead of reading them: a damaged
/// count must not allocate more than the file really holds.
const MAX_PREALLOCATED: usize = 4096;

/// After a malformed record, most decompressed bytes read on to find out
/// whether the compressed data is damaged (the likelier cause).
const DRAIN_LIMIT: u64 = 1 << 30;

/// Buffer size of file reads. Kept small so that the offset reported for
/// damaged compressed data (how far the file was read) stays close to the
/// damage: zstd reports it at the end of the block holding it (blocks are
/// at most 128 KiB), so the damage is at most this much more before it.
const READ_BUFFER: usize = 32 << 10;

/// Buffer between the decompressor and the MessagePack reader.
const DECODED_BUFFER: usize = 64 << 10;

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
