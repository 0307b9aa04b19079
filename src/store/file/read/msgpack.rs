//! MessagePack primitives, bounded: no length read from a file allocates more
//! than a limit or than the file really holds.

use std::io::{self, Read};

use rmp::Marker;

use super::Problem;
use crate::protocol::MAX_DEPTH;

/// Map keys longer than this are unknown keys; they are skipped unread.
const MAX_KEY_BYTES: usize = 64;

pub(super) fn read_marker<R: Read>(r: &mut R) -> Result<Marker, Problem> {
    rmp::decode::read_marker(r).map_err(|e| Problem::Stream(e.0))
}

pub(super) fn read_u8<R: Read>(r: &mut R) -> Result<u8, Problem> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

pub(super) fn read_u16<R: Read>(r: &mut R) -> Result<u16, Problem> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

pub(super) fn read_u32<R: Read>(r: &mut R) -> Result<u32, Problem> {
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
pub(super) fn map_len<R: Read>(r: &mut R, marker: Marker) -> Result<Option<u32>, Problem> {
    Ok(Some(match marker {
        Marker::FixMap(n) => n.into(),
        Marker::Map16 => read_u16(r)?.into(),
        Marker::Map32 => read_u32(r)?,
        _ => return Ok(None),
    }))
}

/// The length of an array whose marker is read, or `None` if it is no array.
pub(super) fn array_len<R: Read>(r: &mut R, marker: Marker) -> Result<Option<u32>, Problem> {
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
pub(super) fn read_string<R: Read>(r: &mut R, what: &str, max: usize) -> Result<String, Problem> {
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
pub(super) fn read_key<R: Read>(r: &mut R) -> Result<Option<String>, Problem> {
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
pub(super) fn read_integer<R: Read>(r: &mut R, what: &str) -> Result<i128, Problem> {
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
pub(super) fn read_count<R: Read>(r: &mut R, what: &str) -> Result<u64, Problem> {
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
pub(super) fn skip_value<R: Read>(r: &mut R) -> Result<(), Problem> {
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
pub(super) fn kind(marker: Marker) -> &'static str {
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
