//! The shape of a MessagePack item, read from its marker: how wide its
//! length field is, and what follows it. Both walkers of raw MessagePack
//! (the codec's check of a whole buffer and `value_check`'s chunk by
//! chunk) read items through these, so they cannot disagree.

/// Bytes of the length field after `marker` (0: it has none).
#[inline]
pub fn length_width(marker: u8) -> usize {
    match marker {
        0xc4 | 0xc7 | 0xd9 => 1,
        0xc5 | 0xc8 | 0xda | 0xdc | 0xde => 2,
        0xc6 | 0xc9 | 0xdb | 0xdd | 0xdf => 4,
        _ => 0,
    }
}

/// What follows `marker` and its length field (which reads `len`; 0 when
/// it has none): the bytes of contents, and the items it contains. `None`
/// for 0xc1, which MessagePack reserves.
#[inline]
pub fn extent(marker: u8, len: u64) -> Option<(u64, u64)> {
    Some(match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
        0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
        0x90..=0x9f => (0, u64::from(marker & 0x0f)),
        0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
        0xc1 => return None,
        0xc4..=0xc6 | 0xd9..=0xdb => (len, 0),
        // An extension's type byte, then its data.
        0xc7..=0xc9 => (len + 1, 0),
        0xca => (4, 0),
        0xcb => (8, 0),
        0xcc | 0xd0 => (1, 0),
        0xcd | 0xd1 => (2, 0),
        0xce | 0xd2 => (4, 0),
        0xcf | 0xd3 => (8, 0),
        0xd4 => (2, 0),
        0xd5 => (3, 0),
        0xd6 => (5, 0),
        0xd7 => (9, 0),
        0xd8 => (17, 0),
        0xdc | 0xdd => (0, len),
        0xde | 0xdf => (0, 2 * len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every marker's shape agrees with what rmp writes: one value of each
    /// kind, encoded, is its marker, its length field and its contents.
    #[test]
    fn extents_match_encoded_values() {
        use rmpv::Value;
        let values = [
            Value::Nil,
            Value::from(true),
            Value::from(5),
            Value::from(-5),
            Value::from(300),
            Value::from(-300),
            Value::from(70_000),
            Value::from(u64::MAX),
            Value::F32(1.5),
            Value::F64(1.5),
            Value::from("hi"),
            Value::from("x".repeat(40)),
            Value::from("x".repeat(300)),
            Value::Binary(vec![1; 3]),
            Value::Binary(vec![1; 300]),
            Value::Ext(1, vec![1; 4]),
            Value::Ext(1, vec![1; 5]),
        ];
        for value in values {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &value).expect("encode");
            let marker = bytes[0];
            let width = length_width(marker);
            let len = bytes[1..1 + width]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            let (skip, children) = extent(marker, len).expect("not reserved");
            assert_eq!(children, 0, "{value:?}");
            assert_eq!(1 + width as u64 + skip, bytes.len() as u64, "{value:?}");
        }
        assert_eq!(extent(0x93, 0), Some((0, 3)));
        assert_eq!(extent(0x82, 0), Some((0, 4)));
        assert_eq!(extent(0xdc, 20), Some((0, 20)));
        assert_eq!(extent(0xdf, 20), Some((0, 40)));
        assert_eq!(extent(0xc1, 0), None);
    }
}
