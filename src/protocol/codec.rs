//! Encoding and decoding of frames, with size and depth limits checked before
//! any allocation that depends on the input.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::marker::{extent, length_width};
use super::message::{PublisherMessage, ServerMessage};
use super::snapshot_header::{read_datablocks, read_snapshot};
use super::update_header::read_update;
use super::{MAX_DEPTH, ProtocolError};

/// Decodes a header frame of at most `limit` bytes into a message.
pub fn decode_header<T: DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, ProtocolError> {
    check_header(frame, limit)?;
    deserialize(frame)
}

/// The size limit, then one walk of the frame: it bounds nesting before
/// serde recurses, rejects trailing garbage, and insists on a map with
/// string keys (serde would also take an array of fields, or binary keys).
/// Returns the message's `type`, as [`walk_header`] notes it.
fn check_header(frame: &[u8], limit: usize) -> Result<Option<&[u8]>, ProtocolError> {
    if frame.len() > limit {
        return Err(ProtocolError::TooLarge {
            size: frame.len(),
            limit,
        });
    }
    walk_header(frame)
}

/// Decodes a publisher-channel header frame, like [`decode_header`].
///
/// UPDATE, which every edit travels in, is read straight into its fields
/// (see `update_header`); the other messages go through serde.
pub fn decode_publisher(frame: &[u8], limit: usize) -> Result<PublisherMessage, ProtocolError> {
    if check_header(frame, limit)? == Some(b"UPDATE".as_slice()) {
        read_update(frame)
    } else {
        deserialize(frame)
    }
}

/// Decodes a header frame from the server, like [`decode_header`].
///
/// A late joiner's stream (SNAPSHOT and DATABLOCKS, a thousand datablocks
/// at a time) is read by `snapshot_header`'s readers, which leave any other
/// shape to serde, so the result, or the error, is the same either way.
pub fn decode_server(frame: &[u8], limit: usize) -> Result<ServerMessage, ProtocolError> {
    let fast = match check_header(frame, limit)? {
        Some(b"DATABLOCKS") => read_datablocks(frame),
        Some(b"SNAPSHOT") => read_snapshot(frame),
        _ => None,
    };
    match fast {
        Some(message) => Ok(message),
        None => deserialize(frame),
    }
}

pub(super) fn deserialize<T: DeserializeOwned>(frame: &[u8]) -> Result<T, ProtocolError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(frame);
    // rmp-serde refuses once its budget reaches zero, so the budget is one
    // more than the depth validate_header already allowed.
    de.set_max_depth(MAX_DEPTH + 1);
    T::deserialize(&mut de).map_err(|e| ProtocolError::Invalid(e.to_string()))
}

/// The string at `pos` and the offset after it, if a string is there.
fn read_str(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let mut at = pos + 1;
    let len = match *bytes.get(pos)? {
        m @ 0xa0..=0xbf => u64::from(m & 0x1f),
        0xd9 => read_len(bytes, &mut at, 1).ok()?,
        0xda => read_len(bytes, &mut at, 2).ok()?,
        0xdb => read_len(bytes, &mut at, 4).ok()?,
        _ => return None,
    };
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    Some((bytes.get(at..end)?, end))
}

/// Encodes a server message as a MessagePack map with string keys.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    // Serializing into a Vec only fails for types MessagePack cannot express
    // (non-string map keys from serde structs never occur here).
    match rmp_serde::to_vec_named(msg) {
        Ok(v) => Bytes::from(v),
        Err(e) => unreachable_encode(&e),
    }
}

#[cold]
fn unreachable_encode(e: &rmp_serde::encode::Error) -> Bytes {
    tracing::error!(error = %e, "failed to encode a server message");
    Bytes::new()
}

/// Encodes any MessagePack value (used for datablock data the server itself
/// produced, e.g. after applying a patch).
pub fn encode_value(value: &rmpv::Value) -> Bytes {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, value);
    Bytes::from(out)
}

/// Decodes one MessagePack value that [`validate_value`] accepted.
pub fn decode_value(bytes: &[u8]) -> Result<rmpv::Value, ProtocolError> {
    validate_value(bytes)?;
    let mut rd = bytes;
    // rmpv spends two units of its budget per container level and up to
    // three on the innermost value; validate_value already bounded the real
    // depth (and so the recursion) to MAX_DEPTH.
    rmpv::decode::read_value_with_max_depth(&mut rd, 2 * MAX_DEPTH + 3)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Checks that a header frame is exactly one map whose keys are all strings
/// (values are checked like [`validate_value`]).
pub fn validate_header(bytes: &[u8]) -> Result<(), ProtocolError> {
    walk_header(bytes).map(|_| ())
}

/// The `type` of a header frame, without decoding the rest of it; `None`
/// when the frame is not a valid header or names no single type. For
/// readers that pass raw frames on and only pick out a few kinds.
pub fn header_type(frame: &[u8]) -> Option<&[u8]> {
    walk_header(frame).ok().flatten()
}

/// [`validate_header`]'s walk, which also notes the message's `type` on the
/// way: the string, when the map has exactly one `type` key and its value
/// is a string.
fn walk_header(bytes: &[u8]) -> Result<Option<&[u8]>, ProtocolError> {
    let mut pos = 1usize;
    let entries = match bytes.first() {
        Some(&m @ 0x80..=0x8f) => u64::from(m & 0x0f),
        Some(0xde) => read_len(bytes, &mut pos, 2)?,
        Some(0xdf) => read_len(bytes, &mut pos, 4)?,
        Some(_) => {
            // Bytes that are not MessagePack at all are malformed; valid
            // MessagePack of another shape is an invalid message.
            validate_value(bytes)?;
            return Err(ProtocolError::Invalid(
                "a message must be a MessagePack map with string keys".into(),
            ));
        }
        None => return Err(ProtocolError::Malformed("empty frame".into())),
    };
    let mut kind = None;
    let mut kinds = 0;
    for _ in 0..entries {
        match bytes.get(pos) {
            Some(0xa0..=0xbf | 0xd9..=0xdb) => {}
            Some(_) => {
                return Err(ProtocolError::Invalid(format!(
                    "map keys must be strings (offset {pos})"
                )));
            }
            None => return Err(truncated(pos, "a map key")),
        }
        let key_end = skip_value(bytes, pos, MAX_DEPTH)?;
        let value_end = skip_value(bytes, key_end, MAX_DEPTH - 1)?;
        if read_str(bytes, pos).is_some_and(|(key, _)| key == b"type") {
            kinds += 1;
            kind = read_str(bytes, key_end).map(|(value, _)| value);
        }
        pos = value_end;
    }
    if pos != bytes.len() {
        return Err(ProtocolError::Malformed(format!(
            "{} unexpected bytes after the message at offset {pos}",
            bytes.len() - pos
        )));
    }
    // A second `type` is left to serde, which refuses it.
    Ok(if kinds == 1 { kind } else { None })
}

/// Checks that `bytes` holds exactly one well-formed MessagePack value nested
/// at most [`MAX_DEPTH`] deep, without recursing (and without allocating
/// below 16 levels). Used on every datablock payload the server stores and
/// forwards without decoding.
pub fn validate_value(bytes: &[u8]) -> Result<(), ProtocolError> {
    let end = skip_value(bytes, 0, MAX_DEPTH)?;
    if end != bytes.len() {
        return Err(ProtocolError::Malformed(format!(
            "{} unexpected bytes after the value at offset {end}",
            bytes.len() - end
        )));
    }
    Ok(())
}

/// Walks one value starting at `start`, with at most `max_depth` levels of
/// containers, and returns the offset just after it.
#[inline]
pub(super) fn skip_value(
    bytes: &[u8],
    start: usize,
    max_depth: usize,
) -> Result<usize, ProtocolError> {
    // Single-byte values and short strings, which most keys and header
    // values are, need none of the bookkeeping of `skip_other`, nor a call.
    match bytes.get(start) {
        Some(0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3) => Ok(start + 1),
        Some(&m @ 0xa0..=0xbf) if start + 1 + usize::from(m & 0x1f) <= bytes.len() => {
            Ok(start + 1 + usize::from(m & 0x1f))
        }
        _ => skip_other(bytes, start, max_depth),
    }
}

/// [`skip_value`] for everything but single-byte values and short strings.
#[inline(never)]
fn skip_other(bytes: &[u8], start: usize, max_depth: usize) -> Result<usize, ProtocolError> {
    // Headers and most data nest only a few levels: their stack of open
    // containers fits on this one, and only deeper values are walked again
    // with a stack on the heap.
    match skip_nested(bytes, start, max_depth, &mut Inline::default()) {
        Ok(Some(end)) => Ok(end),
        Ok(None) => skip_nested(bytes, start, max_depth, &mut Vec::new())
            .map(|end| end.unwrap_or(bytes.len())),
        Err(e) => Err(e),
    }
}

/// The open containers of [`skip_nested`]: the items each still holds.
trait Stack {
    /// Adds a level; false when this stack is full.
    fn push(&mut self, items: u64) -> bool;
    fn pop(&mut self);
    fn last_mut(&mut self) -> Option<&mut u64>;
    fn depth(&self) -> usize;
}

/// A stack of up to 16 levels, without allocation.
#[derive(Default)]
struct Inline {
    items: [u64; 16],
    len: usize,
}

impl Stack for Inline {
    fn push(&mut self, items: u64) -> bool {
        let Some(slot) = self.items.get_mut(self.len) else {
            return false;
        };
        *slot = items;
        self.len += 1;
        true
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    fn last_mut(&mut self) -> Option<&mut u64> {
        self.items[..self.len].last_mut()
    }

    fn depth(&self) -> usize {
        self.len
    }
}

impl Stack for Vec<u64> {
    fn push(&mut self, items: u64) -> bool {
        Vec::push(self, items);
        true
    }

    fn pop(&mut self) {
        Vec::pop(self);
    }

    fn last_mut(&mut self) -> Option<&mut u64> {
        self.as_mut_slice().last_mut()
    }

    fn depth(&self) -> usize {
        self.len()
    }
}

/// [`skip_value`]'s walk; None when `pending` could not hold the nesting.
fn skip_nested(
    bytes: &[u8],
    start: usize,
    max_depth: usize,
    pending: &mut impl Stack,
) -> Result<Option<usize>, ProtocolError> {
    let mut pos = start;
    let mut remaining_top: u64 = 1;
    loop {
        // Close finished containers.
        while let Some(&mut 0) = pending.last_mut() {
            pending.pop();
        }
        let slot = match pending.last_mut() {
            Some(n) => n,
            None if remaining_top > 0 => &mut remaining_top,
            None => break,
        };
        *slot -= 1;
        let marker = *bytes.get(pos).ok_or_else(|| truncated(pos, "a value"))?;
        pos += 1;
        let width = length_width(marker);
        let len = if width > 0 {
            read_len(bytes, &mut pos, width)?
        } else {
            0
        };
        let Some((skip, children)) = extent(marker, len) else {
            return Err(ProtocolError::Malformed(format!(
                "reserved byte 0xc1 at offset {}",
                pos - 1
            )));
        };
        let end = u64::try_from(pos)
            .ok()
            .and_then(|p| p.checked_add(skip))
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| truncated(pos, "value contents"))?;
        pos = end as usize;
        if children > 0 {
            // Every child needs at least one byte: reject counts the frame
            // cannot hold before tracking them.
            if children > (bytes.len() - pos) as u64 {
                return Err(truncated(pos, "container elements"));
            }
            if pending.depth() >= max_depth {
                return Err(ProtocolError::Malformed(format!(
                    "nesting deeper than {MAX_DEPTH} levels at offset {pos}"
                )));
            }
            if !pending.push(children) {
                return Ok(None);
            }
        }
    }
    Ok(Some(pos))
}

fn read_len(bytes: &[u8], pos: &mut usize, width: usize) -> Result<u64, ProtocolError> {
    let raw = bytes
        .get(*pos..*pos + width)
        .ok_or_else(|| truncated(*pos, "a length"))?;
    *pos += width;
    Ok(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

#[cold]
fn truncated(offset: usize, what: &str) -> ProtocolError {
    ProtocolError::Malformed(format!(
        "truncated MessagePack: expected {what} at offset {offset}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn enc(v: &Value) -> Vec<u8> {
        encode_value(v).to_vec()
    }

    fn map(entries: &[(&str, Value)]) -> Vec<u8> {
        enc(&Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        ))
    }

    #[test]
    fn publisher_reader_takes_update_directly_and_refuses_what_the_enum_refuses() {
        let update = map(&[
            ("uuid", Value::from("cube")),
            ("later_field", Value::from(1)),
            ("type", Value::from("UPDATE")),
            ("transfer", Value::from(3)),
            ("chunks", Value::from(2)),
            ("size", Value::from(10)),
        ]);
        let fast = decode_publisher(&update, 1024).unwrap();
        assert_eq!(
            fast,
            decode_header::<PublisherMessage>(&update, 1024).unwrap()
        );
        let PublisherMessage::Update { uuid, chunk, .. } = fast else {
            panic!("not an update: {fast:?}")
        };
        assert_eq!((uuid.as_str(), chunk.chunks), ("cube", Some(2)));
        // Refused both ways: a second "type", a repeated field, a missing
        // uuid, a patch flag that is not a boolean, a frame over the limit.
        for bad in [
            map(&[
                ("type", Value::from("UPDATE")),
                ("uuid", Value::from("a")),
                ("type", Value::from("CHUNK")),
            ]),
            map(&[
                ("type", Value::from("UPDATE")),
                ("uuid", Value::from("a")),
                ("uuid", Value::from("b")),
            ]),
            map(&[("type", Value::from("UPDATE"))]),
            map(&[
                ("type", Value::from("UPDATE")),
                ("uuid", Value::from("a")),
                ("patch", Value::from(1)),
            ]),
        ] {
            assert!(decode_header::<PublisherMessage>(&bad, 1024).is_err());
            let e = decode_publisher(&bad, 1024).unwrap_err();
            assert!(matches!(e, ProtocolError::Invalid(_)), "{e:?}");
        }
        assert!(matches!(
            decode_publisher(&update, 8),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn accepts_every_kind_of_value() {
        let v = Value::Map(vec![
            (Value::from("a"), Value::from(1)),
            (Value::from("b"), Value::from(-200_000)),
            (Value::from("c"), Value::from(1.5f64)),
            (Value::from("d"), Value::Binary(vec![0; 300])),
            (Value::from("e"), Value::from("x".repeat(70_000))),
            (
                Value::from("f"),
                Value::Array((0..20).map(Value::from).collect()),
            ),
            (Value::from("g"), Value::Ext(5, vec![1, 2, 3, 4])),
            (Value::from("h"), Value::Nil),
            (Value::from("i"), Value::F32(2.0)),
        ]);
        validate_value(&enc(&v)).unwrap();
        assert_eq!(decode_value(&enc(&v)).unwrap(), v);
    }

    #[test]
    fn rejects_truncation_and_trailing_bytes() {
        let bytes = enc(&Value::from("hello"));
        for cut in 0..bytes.len() {
            assert!(validate_value(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(validate_value(&extra).is_err());
    }

    #[test]
    fn rejects_huge_claimed_lengths_without_allocating() {
        // array32 claiming 4 billion elements in a 5-byte frame
        assert!(validate_value(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        // bin32 claiming 4 GiB
        assert!(validate_value(&[0xc6, 0xff, 0xff, 0xff, 0xff, 1]).is_err());
    }

    #[test]
    fn rejects_deep_nesting() {
        let deep = vec![0x91u8; 10_000];
        let err = validate_value(&deep).unwrap_err();
        assert!(err.to_string().contains("nesting"), "{err}");
        let mut ok = vec![0x91u8; MAX_DEPTH];
        ok.push(0xc0);
        validate_value(&ok).unwrap();
        // Around the depth where the walk moves its stack to the heap.
        for depth in [15, 16, 17, 40] {
            let mut nested = vec![0x92u8; depth];
            nested.push(0xc0);
            nested.extend(vec![0x05; depth]);
            validate_value(&nested).unwrap();
            let err = validate_value(&nested[..nested.len() - 1]).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{depth}: {err}");
            let err = skip_value(&nested, 0, depth - 1).unwrap_err();
            assert!(err.to_string().contains("nesting"), "{depth}: {err}");
        }
    }

    #[test]
    fn headers_are_maps_with_string_keys() {
        let map = Value::Map(vec![(Value::from("type"), Value::from("PING"))]);
        validate_header(&enc(&map)).unwrap();
        let array = Value::Array(vec![Value::from("PING"), Value::from(1)]);
        assert!(validate_header(&enc(&array)).is_err());
        let bin_key = Value::Map(vec![(Value::Binary(b"type".to_vec()), Value::from("PING"))]);
        assert!(validate_header(&enc(&bin_key)).is_err());
        let int_key = Value::Map(vec![(Value::from(1), Value::from("PING"))]);
        assert!(validate_header(&enc(&int_key)).is_err());
        assert!(validate_header(&[]).is_err());
        let mut trailing = enc(&map);
        trailing.push(0xc0);
        assert!(validate_header(&trailing).is_err());
        let mut deep = vec![0x81, 0xa1, b'k'];
        deep.extend(vec![0x91u8; MAX_DEPTH]);
        deep.push(0xc0);
        assert!(
            validate_header(&deep).is_err(),
            "nesting counts the map itself"
        );
    }

    #[test]
    fn header_limit_is_checked_first() {
        let err = decode_header::<Value>(&[0u8; 100], 10).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::TooLarge {
                size: 100,
                limit: 10
            }
        );
    }
}
