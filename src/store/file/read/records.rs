//! The records of a session file: the header, the datablocks, the trailer.

use std::io::{self, Read};

use bytes::Bytes;
use rmp::Marker;

use super::msgpack::{
    array_len, kind, map_len, read_count, read_integer, read_key, read_marker, read_string,
    read_u8, read_u16, read_u32, skip_value,
};
use super::{MAX_PREALLOCATED, Problem};
use crate::protocol::MAX_DEPS;
use crate::store::StoredBlock;
use crate::store::file::{FORMAT_VERSION, MAX_STRING_BYTES, SessionFileHeader, check_block};

/// A datablock's data buffer grows by at least this much at a time.
const DATA_CHUNK: usize = 64 << 10;

/// What the trailer record says.
pub(super) struct Trailer {
    datablocks: u64,
}

pub(super) fn check_counts(
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

pub(super) fn read_header<R: Read>(r: &mut R) -> Result<SessionFileHeader, Problem> {
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

pub(super) fn read_trailer<R: Read>(r: &mut R, len: u32) -> Result<Trailer, Problem> {
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
pub(super) fn read_block<R: Read>(
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
