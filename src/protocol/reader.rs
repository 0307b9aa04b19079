//! A reader of MessagePack headers that takes each known key by its marker,
//! for the messages read at full rate (UPDATE on the server, DATABLOCKS and
//! a snapshot's CATALOGUE on the client), where serde's reading of an
//! internally tagged enum would first copy the message into buffers of its
//! own. It accepts what serde accepts for the same fields: integers in any
//! width when they fit, strings as `str` or as `bin` holding UTF-8, `nil`
//! for an absent optional field.

use super::codec::skip_value;
use super::{MAX_DEPTH, ProtocolError};

#[cold]
fn duplicate(name: &str) -> ProtocolError {
    ProtocolError::Invalid(format!("duplicate field `{name}`"))
}

/// A known key's value, once it has been read.
pub(super) struct Field<T> {
    name: &'static str,
    pub(super) value: Option<T>,
}

impl<T> Field<T> {
    pub(super) fn new(name: &'static str) -> Self {
        Self { name, value: None }
    }

    #[inline]
    pub(super) fn set(&mut self, value: T) -> Result<(), ProtocolError> {
        if self.value.is_some() {
            return Err(duplicate(self.name));
        }
        self.value = Some(value);
        Ok(())
    }
}

pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    #[inline]
    pub(super) fn marker(&mut self) -> Result<u8, ProtocolError> {
        let m = *self.bytes.get(self.pos).ok_or_else(truncated)?;
        self.pos += 1;
        Ok(m)
    }

    #[inline]
    pub(super) fn peek(&self) -> Result<u8, ProtocolError> {
        self.bytes.get(self.pos).copied().ok_or_else(truncated)
    }

    /// The next `width` bytes as a big-endian number.
    pub(super) fn number(&mut self, width: usize) -> Result<u64, ProtocolError> {
        let raw = self
            .bytes
            .get(self.pos..self.pos + width)
            .ok_or_else(truncated)?;
        self.pos += width;
        Ok(raw.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// The next `len` bytes.
    #[inline]
    pub(super) fn take(&mut self, len: u64) -> Result<&'a [u8], ProtocolError> {
        let len = usize::try_from(len).map_err(|_| truncated())?;
        let end = self.pos.checked_add(len).ok_or_else(truncated)?;
        let out = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(out)
    }

    pub(super) fn map_len(&mut self) -> Result<u64, ProtocolError> {
        match self.marker()? {
            m @ 0x80..=0x8f => Ok(u64::from(m & 0x0f)),
            0xde => self.number(2),
            0xdf => self.number(4),
            _ => Err(ProtocolError::Invalid("a message must be a map".into())),
        }
    }

    /// A map key: a `str`, as `walk_header` checked. Its bytes are compared
    /// with the known names, so a key that is not UTF-8 is simply unknown.
    #[inline]
    pub(super) fn key(&mut self) -> Result<&'a [u8], ProtocolError> {
        match self.str_len()? {
            Some(len) => self.take(len),
            None => Err(ProtocolError::Invalid("map keys must be strings".into())),
        }
    }

    /// The length of a `str` whose marker is next, or None (nothing read)
    /// for any other marker.
    #[inline]
    pub(super) fn str_len(&mut self) -> Result<Option<u64>, ProtocolError> {
        let len = match self.peek()? {
            m @ 0xa0..=0xbf => {
                self.pos += 1;
                return Ok(Some(u64::from(m & 0x1f)));
            }
            0xd9 => 1,
            0xda => 2,
            0xdb => 4,
            _ => return Ok(None),
        };
        self.pos += 1;
        self.number(len).map(Some)
    }

    pub(super) fn skip(&mut self) -> Result<(), ProtocolError> {
        self.pos = skip_value(self.bytes, self.pos, MAX_DEPTH)?;
        Ok(())
    }

    /// `nil` as None, anything else read by `read`.
    #[inline]
    pub(super) fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, ProtocolError>,
    ) -> Result<Option<T>, ProtocolError> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            return Ok(None);
        }
        read(self).map(Some)
    }

    /// An integer of any width whose value is not negative.
    pub(super) fn u64(&mut self) -> Result<u64, ProtocolError> {
        let value: i128 = match self.marker()? {
            m @ 0x00..=0x7f => i128::from(m),
            m @ 0xe0..=0xff => i128::from(m as i8),
            0xcc => i128::from(self.number(1)?),
            0xcd => i128::from(self.number(2)?),
            0xce => i128::from(self.number(4)?),
            0xcf => i128::from(self.number(8)?),
            0xd0 => i128::from(self.number(1)? as u8 as i8),
            0xd1 => i128::from(self.number(2)? as u16 as i16),
            0xd2 => i128::from(self.number(4)? as u32 as i32),
            0xd3 => i128::from(self.number(8)? as i64),
            _ => return Err(wrong_type("an unsigned integer")),
        };
        u64::try_from(value).map_err(|_| {
            ProtocolError::Invalid(format!(
                "invalid value {value}, expected an unsigned integer"
            ))
        })
    }

    pub(super) fn u32(&mut self) -> Result<u32, ProtocolError> {
        let value = self.u64()?;
        u32::try_from(value)
            .map_err(|_| ProtocolError::Invalid(format!("invalid value {value}, expected a u32")))
    }

    pub(super) fn bool(&mut self) -> Result<bool, ProtocolError> {
        match self.marker()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => Err(wrong_type("a boolean")),
        }
    }

    /// A `str`, or a `bin` holding UTF-8 (serde reads both into a String).
    pub(super) fn string(&mut self) -> Result<String, ProtocolError> {
        let len = match self.str_len()? {
            Some(len) => len,
            None => match self.marker()? {
                0xc4 => self.number(1)?,
                0xc5 => self.number(2)?,
                0xc6 => self.number(4)?,
                _ => return Err(wrong_type("a string")),
            },
        };
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|e| ProtocolError::Invalid(format!("invalid UTF-8 in a string: {e}")))
    }

    /// True when a map comes next.
    pub(super) fn at_map(&self) -> bool {
        matches!(self.peek(), Ok(0x80..=0x8f | 0xde | 0xdf))
    }

    /// True when `nil` comes next.
    pub(super) fn at_nil(&self) -> bool {
        self.peek() == Ok(0xc0)
    }

    /// The length of the array that comes next, refused when the frame
    /// cannot hold that many items of a byte each.
    pub(super) fn array_len(&mut self) -> Result<usize, ProtocolError> {
        let len = match self.marker()? {
            m @ 0x90..=0x9f => u64::from(m & 0x0f),
            0xdc => self.number(2)?,
            0xdd => self.number(4)?,
            _ => return Err(wrong_type("an array")),
        };
        if len > (self.bytes.len() - self.pos) as u64 {
            return Err(truncated());
        }
        usize::try_from(len).map_err(|_| truncated())
    }

    pub(super) fn strings(&mut self) -> Result<Vec<String>, ProtocolError> {
        if !matches!(self.peek()?, 0x90..=0x9f | 0xdc | 0xdd) {
            self.pos += 1;
            return Err(wrong_type("a list of strings"));
        }
        let len = self.array_len()?;
        (0..len).map(|_| self.string()).collect()
    }
}

#[cold]
fn wrong_type(expected: &str) -> ProtocolError {
    ProtocolError::Invalid(format!("invalid type, expected {expected}"))
}

#[cold]
fn truncated() -> ProtocolError {
    ProtocolError::Malformed("truncated MessagePack".into())
}
