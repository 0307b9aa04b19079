//! Checking that a chunked payload is exactly one MessagePack value, chunk
//! by chunk as it arrives, so that no single step walks a whole large
//! value: the same rules as [`super::validate_value`], which checks a
//! payload that arrived whole.

use super::marker::{extent, length_width};
use super::{MAX_DEPTH, ProtocolError};

/// The walk of one value, fed in pieces.
#[derive(Debug)]
pub struct ValueCheck {
    /// Items still expected in each open container; the first entry is
    /// the value itself.
    open: Vec<u64>,
    /// Bytes of the current item's contents still to pass.
    skip: u64,
    /// The current item's marker and length bytes, when a piece ended
    /// among them.
    head: [u8; 5],
    head_len: usize,
    /// Bytes fed so far, and the total announced.
    offset: u64,
    total: u64,
}

impl ValueCheck {
    /// A check of a payload announced as `total` bytes.
    pub fn new(total: u64) -> Self {
        Self {
            open: vec![1],
            skip: 0,
            head: [0; 5],
            head_len: 0,
            offset: 0,
            total,
        }
    }

    /// Walks the next piece of the payload.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ProtocolError> {
        loop {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(bytes.len(), |s| s.min(bytes.len()));
                self.skip -= n as u64;
                self.pass(&mut bytes, n);
                if self.skip > 0 {
                    return Ok(());
                }
            }
            while self.open.last() == Some(&0) {
                self.open.pop();
            }
            if self.open.is_empty() {
                if bytes.is_empty() {
                    return Ok(());
                }
                return Err(ProtocolError::Malformed(format!(
                    "unexpected bytes after the value at offset {}",
                    self.offset
                )));
            }
            let Some(&first) = bytes.first() else {
                return Ok(());
            };
            if self.head_len == 0 {
                self.head[0] = first;
                self.head_len = 1;
                self.pass(&mut bytes, 1);
            }
            let need = 1 + length_width(self.head[0]);
            let take = (need - self.head_len).min(bytes.len());
            if let (Some(to), Some(from)) = (
                self.head.get_mut(self.head_len..self.head_len + take),
                bytes.get(..take),
            ) {
                to.copy_from_slice(from);
            }
            self.head_len += take;
            self.pass(&mut bytes, take);
            if self.head_len < need {
                return Ok(());
            }
            self.item()?;
        }
    }

    /// Whether the value ended exactly where the payload did.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.open.is_empty() && self.skip == 0 && self.offset == self.total {
            return Ok(());
        }
        Err(ProtocolError::Malformed(format!(
            "truncated MessagePack: the value goes on after offset {}",
            self.offset
        )))
    }

    fn pass(&mut self, bytes: &mut &[u8], n: usize) {
        *bytes = bytes.get(n..).unwrap_or_default();
        self.offset += n as u64;
    }

    /// The item whose marker and length are in `head`.
    fn item(&mut self) -> Result<(), ProtocolError> {
        let marker = self.head[0];
        let at = self.offset - self.head_len as u64;
        self.head_len = 0;
        let len = self
            .head
            .get(1..=length_width(marker))
            .unwrap_or_default()
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let Some((skip, children)) = extent(marker, len) else {
            return Err(ProtocolError::Malformed(format!(
                "reserved byte 0xc1 at offset {at}"
            )));
        };
        if let Some(count) = self.open.last_mut() {
            *count -= 1;
        }
        let left = self.total.saturating_sub(self.offset);
        // Contents, or one byte per element, that the payload cannot hold.
        if skip > left {
            return Err(truncated(self.offset, "value contents"));
        }
        if children > left {
            return Err(truncated(self.offset, "container elements"));
        }
        self.skip = skip;
        if children > 0 {
            if self.open.len() > MAX_DEPTH {
                return Err(ProtocolError::Malformed(format!(
                    "nesting deeper than {MAX_DEPTH} levels at offset {}",
                    self.offset
                )));
            }
            self.open.push(children);
        }
        Ok(())
    }
}

fn truncated(offset: u64, what: &str) -> ProtocolError {
    ProtocolError::Malformed(format!(
        "truncated MessagePack: expected {what} at offset {offset}"
    ))
}

#[cfg(test)]
mod tests {
    use rmpv::Value;

    use super::*;
    use crate::protocol::codec::{encode_value, validate_value};

    /// The check's verdict on `bytes` fed in pieces of `piece` bytes.
    fn fed(bytes: &[u8], piece: usize) -> Result<(), ProtocolError> {
        let mut check = ValueCheck::new(bytes.len() as u64);
        for part in bytes.chunks(piece.max(1)) {
            check.feed(part)?;
        }
        check.finish()
    }

    fn samples() -> Vec<Vec<u8>> {
        let nested = (0..MAX_DEPTH).fold(Value::Nil, |v, _| Value::Array(vec![v]));
        let too_deep = Value::Array(vec![nested.clone()]);
        let mut out: Vec<Vec<u8>> = [
            Value::Nil,
            Value::from(-5),
            Value::from(u64::MAX),
            Value::F64(1.5),
            Value::from("a string of some length, over thirty-one bytes"),
            Value::Binary(vec![7; 70_000]),
            Value::Ext(3, vec![1; 300]),
            Value::Map(vec![
                (
                    Value::from("vertices"),
                    Value::Array((0..100).map(Value::from).collect()),
                ),
                (Value::from("name"), Value::from("Cube")),
            ]),
            nested,
            too_deep,
        ]
        .iter()
        .map(|v| encode_value(v).to_vec())
        .collect();
        out.push(vec![0xc1]);
        out.push(vec![0x92, 0x01]);
        out.push(vec![0x01, 0x02]);
        out.push(vec![0xc6, 0xff, 0xff, 0xff, 0xff]);
        out.push(vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0x00]);
        out.push(Vec::new());
        out
    }

    #[test]
    fn agrees_with_the_whole_check_whatever_the_pieces() {
        for bytes in samples() {
            let whole = validate_value(&bytes).is_ok();
            for piece in [1, 2, 3, 5, 7, 64, 4096, bytes.len()] {
                assert_eq!(
                    fed(&bytes, piece).is_ok(),
                    whole,
                    "{:?}... in pieces of {piece}",
                    &bytes[..bytes.len().min(8)]
                );
            }
        }
    }

    #[test]
    fn a_bad_value_is_refused_before_its_end_arrives() {
        // A binary announcing more than the payload holds fails at once.
        let mut check = ValueCheck::new(100);
        assert!(check.feed(&[0xc6, 0, 0, 1, 0]).is_err());
        let mut check = ValueCheck::new(100);
        assert!(check.feed(&[0x01, 0x02]).is_err(), "trailing bytes");
    }
}
