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

use super::reader::{Field, Reader};
use super::{ChunkFields, ProtocolError, PublisherMessage};

/// Reads a header that `walk_header` accepted (one well-formed map with
/// string keys, nested at most `MAX_DEPTH` deep) whose `type` is UPDATE.
pub(super) fn read_update(bytes: &[u8]) -> Result<PublisherMessage, ProtocolError> {
    let mut r = Reader::new(bytes);
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
