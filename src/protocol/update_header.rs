//! Reading an UPDATE header straight into [`PublisherMessage::Update`].
//!
//! Every edit travels in an UPDATE, so this runs once per update at full
//! rate. serde would read the internally tagged enum by first copying the
//! whole message into a buffer of its own, and a helper struct would repeat
//! the message's fields; this reader walks the map once and takes each known
//! key by its MessagePack marker. It accepts exactly what serde accepts (the
//! property tests in `tests/codec_props.rs` hold it to that on arbitrary
//! input): every known key at most once and of its type, `uuid` required,
//! integers in any width when they fit, strings as `str` or as `bin` holding
//! UTF-8, `nil` for an absent optional field, other keys skipped.

use super::codec::skip_value;
use super::{ChunkFields, MAX_DEPTH, ProtocolError, PublisherMessage};

/// Reads a header that `walk_header` accepted (one well-formed map with
/// string keys, nested at most `MAX_DEPTH` deep) whose `type` is UPDATE.
pub(super) fn read_update(bytes: &[u8]) -> Result<PublisherMessage, ProtocolError> {
    let mut r = Reader { bytes, pos: 0 };
    let entries = r.map_len()?;
    let mut id = Field::new("id");
    let mut uuid = Field::new("uuid");
    let mut type_id = Field::new("type_id");
    let mut owner = Field::new("owner");
    let mut deps = Field::new("deps");
    let mut patch = Field::new("patch");
    let mut base_revision = Field::new("base_revision");
    let mut transfer = Field::new("transfer");
    let mut chunks = Field::new("chunks");
    let mut size = Field::new("size");
    for _ in 0..entries {
        let key = r.key()?;
        match key {
            b"id" => id.set(r.optional(Reader::u64)?)?,
            b"uuid" => uuid.set(r.string()?)?,
            b"type_id" => type_id.set(r.optional(Reader::string)?)?,
            b"owner" => owner.set(r.optional(Reader::string)?)?,
            b"deps" => deps.set(r.optional(Reader::strings)?)?,
            b"patch" => patch.set(r.bool()?)?,
            b"base_revision" => base_revision.set(r.optional(Reader::u64)?)?,
            b"transfer" => transfer.set(r.optional(Reader::u64)?)?,
            b"chunks" => chunks.set(r.optional(Reader::u32)?)?,
            b"size" => size.set(r.optional(Reader::u64)?)?,
            // `type` (checked by the caller) and keys of later versions.
            _ => r.skip()?,
        }
    }
    Ok(PublisherMessage::Update {
        id: id.value.flatten(),
        uuid: uuid
            .value
            .ok_or_else(|| ProtocolError::Invalid("missing field `uuid`".into()))?,
        type_id: type_id.value.flatten(),
        owner: owner.value.flatten(),
        deps: deps.value.flatten(),
        patch: patch.value.unwrap_or(false),
        base_revision: base_revision.value.flatten(),
        chunk: ChunkFields {
            transfer: transfer.value.flatten(),
            chunks: chunks.value.flatten(),
            size: size.value.flatten(),
        },
    })
}

#[cold]
fn duplicate(name: &str) -> ProtocolError {
    ProtocolError::Invalid(format!("duplicate field `{name}`"))
}

/// A known key's value, once it has been read.
struct Field<T> {
    name: &'static str,
    value: Option<T>,
}

impl<T> Field<T> {
    fn new(name: &'static str) -> Self {
        Self { name, value: None }
    }

    #[inline]
    fn set(&mut self, value: T) -> Result<(), ProtocolError> {
        if self.value.is_some() {
            return Err(duplicate(self.name));
        }
        self.value = Some(value);
        Ok(())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn marker(&mut self) -> Result<u8, ProtocolError> {
        let m = *self.bytes.get(self.pos).ok_or_else(truncated)?;
        self.pos += 1;
        Ok(m)
    }

    #[inline]
    fn peek(&self) -> Result<u8, ProtocolError> {
        self.bytes.get(self.pos).copied().ok_or_else(truncated)
    }

    /// The next `width` bytes as a big-endian number.
    fn number(&mut self, width: usize) -> Result<u64, ProtocolError> {
        let raw = self
            .bytes
            .get(self.pos..self.pos + width)
            .ok_or_else(truncated)?;
        self.pos += width;
        Ok(raw.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// The next `len` bytes.
    #[inline]
    fn take(&mut self, len: u64) -> Result<&'a [u8], ProtocolError> {
        let len = usize::try_from(len).map_err(|_| truncated())?;
        let end = self.pos.checked_add(len).ok_or_else(truncated)?;
        let out = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn map_len(&mut self) -> Result<u64, ProtocolError> {
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
    fn key(&mut self) -> Result<&'a [u8], ProtocolError> {
        match self.str_len()? {
            Some(len) => self.take(len),
            None => Err(ProtocolError::Invalid("map keys must be strings".into())),
        }
    }

    /// The length of a `str` whose marker is next, or None (nothing read)
    /// for any other marker.
    #[inline]
    fn str_len(&mut self) -> Result<Option<u64>, ProtocolError> {
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

    fn skip(&mut self) -> Result<(), ProtocolError> {
        self.pos = skip_value(self.bytes, self.pos, MAX_DEPTH)?;
        Ok(())
    }

    /// `nil` as None, anything else read by `read`.
    #[inline]
    fn optional<T>(
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
    fn u64(&mut self) -> Result<u64, ProtocolError> {
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

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let value = self.u64()?;
        u32::try_from(value)
            .map_err(|_| ProtocolError::Invalid(format!("invalid value {value}, expected a u32")))
    }

    fn bool(&mut self) -> Result<bool, ProtocolError> {
        match self.marker()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => Err(wrong_type("a boolean")),
        }
    }

    /// A `str`, or a `bin` holding UTF-8 (serde reads both into a String).
    fn string(&mut self) -> Result<String, ProtocolError> {
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

    fn strings(&mut self) -> Result<Vec<String>, ProtocolError> {
        let len = match self.marker()? {
            m @ 0x90..=0x9f => u64::from(m & 0x0f),
            0xdc => self.number(2)?,
            0xdd => self.number(4)?,
            _ => return Err(wrong_type("a list of strings")),
        };
        // Each element takes at least one byte: a count the frame cannot
        // hold is refused before anything is reserved for it.
        if len > (self.bytes.len() - self.pos) as u64 {
            return Err(truncated());
        }
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

#[cfg(test)]
mod tests {
    use crate::protocol::{PublisherMessage, decode_header, decode_publisher};

    /// An UPDATE of `uuid` "u" with `key` set to the raw MessagePack `value`
    /// (or, for `uuid` itself, with only that).
    fn update_with(key: &str, value: &[u8]) -> Vec<u8> {
        let mut out = vec![if key == "uuid" { 0x82 } else { 0x83 }];
        let _ = rmp::encode::write_str(&mut out, "type");
        let _ = rmp::encode::write_str(&mut out, "UPDATE");
        if key != "uuid" {
            let _ = rmp::encode::write_str(&mut out, "uuid");
            let _ = rmp::encode::write_str(&mut out, "u");
        }
        let _ = rmp::encode::write_str(&mut out, key);
        out.extend_from_slice(value);
        out
    }

    /// Every encoding MessagePack allows for the kinds of values UPDATE
    /// takes, including those an encoder would not choose (a positive
    /// number in a signed width, a string in a `bin`), which generated
    /// values never exercise.
    const VALUES: &[&[u8]] = &[
        &[0x05],
        &[0xff],
        &[0xcc, 200],
        &[0xcd, 1, 0],
        &[0xce, 0, 0, 1, 0],
        &[0xce, 0xff, 0xff, 0xff, 0xff],
        &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0],
        &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0xd0, 5],
        &[0xd0, 0xfb],
        &[0xd1, 0, 5],
        &[0xd1, 0xff, 0xfb],
        &[0xd2, 0, 0, 0, 5],
        &[0xd2, 0xff, 0xff, 0xff, 0xfb],
        &[0xd3, 0, 0, 0, 0, 0, 0, 0, 5],
        &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb],
        &[0xc0],
        &[0xc2],
        &[0xc3],
        &[0xca, 0x3f, 0x80, 0, 0],
        &[0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0],
        &[0xa1, b'x'],
        &[0xa1, 0xff],
        &[0xd9, 1, b'x'],
        &[0xda, 0, 1, b'x'],
        &[0xdb, 0, 0, 0, 1, b'x'],
        &[0xc4, 1, b'x'],
        &[0xc4, 1, 0xff],
        &[0xc5, 0, 1, b'x'],
        &[0xc6, 0, 0, 0, 1, b'x'],
        &[0x90],
        &[0x91, 0xa1, b'x'],
        &[0x91, 0xc4, 1, b'x'],
        &[0x92, 0xa1, b'x', 0x05],
        &[0x91, 0xc0],
        &[0x91, 0x91, 0xa1, b'x'],
        &[0xdc, 0, 1, 0xa1, b'x'],
        &[0xdd, 0, 0, 0, 1, 0xa1, b'x'],
        &[0x80],
        &[0x81, 0xa1, b'k', 0x01],
        &[0xd4, 1, 2],
    ];

    #[test]
    fn agrees_with_serde_on_every_encoding_of_every_field() {
        let keys = [
            "id",
            "uuid",
            "type_id",
            "owner",
            "deps",
            "patch",
            "base_revision",
            "transfer",
            "chunks",
            "size",
            "later",
        ];
        let mut accepted = 0;
        for key in keys {
            for value in VALUES {
                let frame = update_with(key, value);
                let ours = decode_publisher(&frame, usize::MAX).ok();
                let serde = decode_header::<PublisherMessage>(&frame, usize::MAX).ok();
                assert_eq!(ours, serde, "{key}: {value:02x?}");
                accepted += usize::from(ours.is_some());
            }
        }
        // Both sides accept a good share, so agreement is not just both
        // refusing everything.
        assert!(accepted > 100, "{accepted}");
    }
}
