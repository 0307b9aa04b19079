//! UPDATES: several updates in one message, in both directions (protocol
//! section 15). A batch means exactly its updates one by one, in order; it
//! exists because every message costs the sender, the server and each
//! receiver a fixed amount of work in libzmq and the kernel.

use bytes::{Bytes, BytesMut};

use super::{ChunkFields, ProtocolError, PublisherMessage, Wire};

/// Most updates in one UPDATES message, in either direction.
pub const MAX_BATCH: usize = 1024;

/// Most data the server puts in one UPDATES. libzmq queues up to its
/// high-water mark in messages, not bytes, for a client that stops reading:
/// small batches keep that queue about as small as single updates did,
/// while 64 updates of 1 KB already pay one message's cost between them.
pub const SERVER_BATCH_DATA: usize = 64 * 1024;

/// The most a batch built by [`Batcher`] may hold.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Largest data frame (the clients' `chunk_bytes`).
    pub max_data: usize,
    /// Largest header frame (the clients' `max_header_bytes`).
    pub max_header: usize,
}

/// Bytes of an UPDATES header around its items: the map, its keys and the
/// two array headers, with room for the lengths' encoding.
const ENVELOPE_BYTES: usize = 64;
/// Most bytes one length adds to the header (a u64).
const LENGTH_BYTES: usize = 9;

/// Checks an UPDATES from a client as a whole and cuts its data frame into
/// each update's payload, in order. Any problem refuses the whole batch, so
/// that none of it is applied.
pub fn split(
    updates: Vec<PublisherMessage>,
    lengths: Vec<u64>,
    payload: Option<&[u8]>,
    max_data: usize,
) -> Result<impl Iterator<Item = (PublisherMessage, &[u8])>, ProtocolError> {
    let invalid = |why: String| Err(ProtocolError::Invalid(why));
    let Some(data) = payload else {
        return invalid("UPDATES needs a data frame holding the updates' data".into());
    };
    if updates.is_empty() || updates.len() > MAX_BATCH {
        return invalid(format!(
            "UPDATES holds {} updates; it must hold 1 to {MAX_BATCH}",
            updates.len()
        ));
    }
    if lengths.len() != updates.len() {
        return invalid(format!(
            "UPDATES has {} updates but {} lengths",
            updates.len(),
            lengths.len()
        ));
    }
    if data.len() > max_data {
        return Err(ProtocolError::TooLarge {
            size: data.len(),
            limit: max_data,
        });
    }
    let mut total: u64 = 0;
    for (i, &length) in lengths.iter().enumerate() {
        if length == 0 {
            return invalid(format!("UPDATES length {i} is 0; every update needs data"));
        }
        total = total.saturating_add(length);
    }
    if total != data.len() as u64 {
        return invalid(format!(
            "UPDATES lengths add up to {total} bytes but the data frame has {}",
            data.len()
        ));
    }
    for (i, update) in updates.iter().enumerate() {
        match update {
            PublisherMessage::Update { chunk, .. } if *chunk == ChunkFields::default() => {}
            PublisherMessage::Update { .. } => {
                return invalid(format!(
                    "UPDATES element {i} announces chunks; send a chunked payload as a single UPDATE"
                ));
            }
            _ => return invalid(format!("UPDATES element {i} is not an UPDATE header")),
        }
    }
    let mut offset = 0usize;
    Ok(updates
        .into_iter()
        .zip(lengths)
        .map(move |(update, length)| {
            // The lengths add up to the frame's size, so each fits in usize.
            let end = offset + length as usize;
            let slice = &data[offset..end];
            offset = end;
            (update, slice)
        }))
}

/// Gathers forwarded UPDATEs (each an encoded header and an inline data
/// frame) into UPDATES messages within the limits, without decoding or
/// re-encoding their headers.
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    items: Vec<Wire>,
    header_bytes: usize,
    data_bytes: usize,
}

impl Batcher {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            items: Vec::new(),
            header_bytes: ENVELOPE_BYTES,
            data_bytes: 0,
        }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// True when `wire` may join the batch without passing a limit.
    pub fn fits(&self, wire: &Wire) -> bool {
        let data = wire.payload.as_ref().map_or(0, Bytes::len);
        self.items.is_empty()
            || (self.items.len() < MAX_BATCH
                && self.header_bytes + wire.header.len() + LENGTH_BYTES <= self.limits.max_header
                && self.data_bytes + data <= self.limits.max_data)
    }

    /// Adds a forwarded UPDATE; the caller checks [`Batcher::fits`] first.
    pub fn push(&mut self, wire: Wire) {
        self.header_bytes += wire.header.len() + LENGTH_BYTES;
        self.data_bytes += wire.payload.as_ref().map_or(0, Bytes::len);
        self.items.push(wire);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The updates gathered so far.
    pub fn items(&self) -> &[Wire] {
        &self.items
    }

    /// Empties the batcher, handing out its updates; it keeps its capacity
    /// for the next batch.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Wire> {
        self.header_bytes = ENVELOPE_BYTES;
        self.data_bytes = 0;
        self.items.drain(..)
    }
}

/// Gathers a snapshot's consecutive inline datablocks (each an encoded
/// DATABLOCK header and its data) into one DATABLOCKS message within the
/// limits (protocol section 16). The data is copied once, into the batch's
/// data frame, when the batch is finished.
#[derive(Debug)]
pub struct DatablocksBuilder {
    limits: BatchLimits,
    /// The items' encoded headers, one after the other.
    headers: Vec<u8>,
    payloads: Vec<Bytes>,
    data_bytes: usize,
}

impl DatablocksBuilder {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            headers: Vec::new(),
            payloads: Vec::new(),
            data_bytes: 0,
        }
    }

    /// True when a datablock with a header of `header` bytes and `data`
    /// bytes of data may join the batch without passing a limit (the first
    /// always may).
    pub fn fits(&self, header: usize, data: usize) -> bool {
        self.payloads.is_empty()
            || (self.payloads.len() < MAX_BATCH
                && ENVELOPE_BYTES
                    + self.headers.len()
                    + header
                    + (self.payloads.len() + 1) * LENGTH_BYTES
                    <= self.limits.max_header
                && self.data_bytes + data <= self.limits.max_data)
    }

    /// Adds a datablock; the caller checks [`DatablocksBuilder::fits`]
    /// first.
    pub fn push(&mut self, header: &[u8], data: Bytes) {
        self.headers.extend_from_slice(header);
        self.data_bytes += data.len();
        self.payloads.push(data);
    }

    /// The batch, emptying the builder: a lone datablock as a plain
    /// DATABLOCK (its data shared, not copied), several as one DATABLOCKS.
    pub fn finish(&mut self) -> Option<Wire> {
        let wire = match self.payloads.len() {
            0 => return None,
            1 => Wire {
                header: Bytes::copy_from_slice(&self.headers),
                payload: self.payloads.pop(),
                batchable: false,
            },
            n => batch_message(
                "DATABLOCKS",
                "datablocks",
                n,
                [&self.headers[..]],
                self.payloads.iter().map(|p| &p[..]),
                (self.headers.len(), self.data_bytes),
            ),
        };
        self.headers.clear();
        self.payloads.clear();
        self.data_bytes = 0;
        Some(wire)
    }
}

/// One UPDATES message carrying `items` (forwarded UPDATEs with inline
/// data), in order. Their encoded headers are copied in as they are.
pub fn updates_message(items: &[Wire]) -> Wire {
    let header_len: usize = items.iter().map(|w| w.header.len()).sum();
    let data_len: usize = items
        .iter()
        .map(|w| w.payload.as_ref().map_or(0, Bytes::len))
        .sum();
    batch_message(
        "UPDATES",
        "updates",
        items.len(),
        items.iter().map(|w| &w.header[..]),
        items
            .iter()
            .map(|w| w.payload.as_deref().unwrap_or_default()),
        (header_len, data_len),
    )
}

/// A batch of `count` items: `{"type": kind, key: [headers], "lengths":
/// [...]}`, the encoded `headers` copied in as they are, and a data frame
/// joining the `payloads`. `sizes` are the headers' and payloads' total
/// bytes, for reserving.
fn batch_message<'a>(
    kind: &str,
    key: &str,
    count: usize,
    headers: impl IntoIterator<Item = &'a [u8]>,
    payloads: impl IntoIterator<Item = &'a [u8]>,
    sizes: (usize, usize),
) -> Wire {
    let mut header = Vec::with_capacity(ENVELOPE_BYTES + sizes.0 + count * LENGTH_BYTES);
    let mut data = BytesMut::with_capacity(sizes.1);
    // Writing to a Vec cannot fail.
    let _ = rmp::encode::write_map_len(&mut header, 3);
    let _ = rmp::encode::write_str(&mut header, "type");
    let _ = rmp::encode::write_str(&mut header, kind);
    let _ = rmp::encode::write_str(&mut header, key);
    let _ = rmp::encode::write_array_len(&mut header, count as u32);
    for item in headers {
        header.extend_from_slice(item);
    }
    let _ = rmp::encode::write_str(&mut header, "lengths");
    let _ = rmp::encode::write_array_len(&mut header, count as u32);
    for payload in payloads {
        let _ = rmp::encode::write_uint(&mut header, payload.len() as u64);
        data.extend_from_slice(payload);
    }
    Wire {
        header: Bytes::from(header),
        payload: Some(data.freeze()),
        batchable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChunkFields, DatablockHeader, ServerMessage, decode_header, encode};

    fn update(uuid: &str) -> PublisherMessage {
        update_with(uuid, ChunkFields::default())
    }

    fn update_with(uuid: &str, chunk: ChunkFields) -> PublisherMessage {
        PublisherMessage::Update {
            id: None,
            uuid: uuid.into(),
            type_id: Some("Object".into()),
            owner: None,
            deps: None,
            patch: false,
            base_revision: None,
            chunk,
        }
    }

    fn forwarded(uuid: &str, revision: u64, data: &[u8]) -> (ServerMessage, Wire) {
        let msg = ServerMessage::Update {
            header: DatablockHeader {
                uuid: uuid.into(),
                type_id: "Object".into(),
                owner: "COMMON".into(),
                deps: vec!["dep".into()],
                revision,
            },
            sender: "ann".into(),
            patch: false,
            chunk: ChunkFields::default(),
        };
        let wire = Wire {
            header: encode(&msg),
            payload: Some(Bytes::copy_from_slice(data)),
            batchable: true,
        };
        (msg, wire)
    }

    #[test]
    fn split_cuts_the_data_frame_in_order() {
        let data = b"\x01\xa2hi\xc0";
        let parts: Vec<_> = split(
            vec![update("a"), update("b"), update("c")],
            vec![1, 3, 1],
            Some(data),
            1024,
        )
        .unwrap()
        .collect();
        let slices: Vec<&[u8]> = parts.iter().map(|(_, d)| *d).collect();
        assert_eq!(slices, [&b"\x01"[..], b"\xa2hi", b"\xc0"]);
        assert!(matches!(&parts[1].0, PublisherMessage::Update { uuid, .. } if uuid == "b"));
    }

    #[test]
    fn split_refuses_every_malformed_batch() {
        let data = || Some(&b"\x01\x02"[..]);
        let chunked = update_with(
            "a",
            ChunkFields {
                transfer: Some(1),
                chunks: Some(1),
                size: Some(2),
            },
        );
        let nested = PublisherMessage::Updates {
            updates: vec![update("a")],
            lengths: vec![1],
        };
        type Case = (
            Vec<PublisherMessage>,
            Vec<u64>,
            Option<&'static [u8]>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (vec![update("a")], vec![2], None, "needs a data frame"),
            (vec![], vec![], data(), "1 to 1024"),
            (
                vec![update("a"); MAX_BATCH + 1],
                vec![1; MAX_BATCH + 1],
                data(),
                "1 to 1024",
            ),
            (
                vec![update("a"), update("b")],
                vec![2],
                data(),
                "2 updates but 1 lengths",
            ),
            (
                vec![update("a"), update("b")],
                vec![2, 0],
                data(),
                "length 1 is 0",
            ),
            (
                vec![update("a"), update("b")],
                vec![1, 2],
                data(),
                "add up to 3 bytes",
            ),
            (
                vec![update("a"), update("b")],
                vec![u64::MAX, 1],
                data(),
                "add up to",
            ),
            (vec![chunked], vec![2], data(), "announces chunks"),
            (vec![nested], vec![2], data(), "not an UPDATE header"),
        ];
        for (updates, lengths, payload, expected) in cases {
            let Err(err) = split(updates, lengths, payload, 1024) else {
                panic!("{expected}: accepted");
            };
            assert_eq!(err.code(), crate::protocol::ErrorCode::InvalidMessage);
            assert!(err.to_string().contains(expected), "{err} lacks {expected}");
        }
        let Err(err) = split(vec![update("a")], vec![2], data(), 1) else {
            panic!("a batch over the limit was accepted");
        };
        assert_eq!(err.code(), crate::protocol::ErrorCode::TooLarge);
    }

    #[test]
    fn the_built_message_decodes_to_its_updates() {
        let (first, a) = forwarded("a", 2, b"\x01");
        let (second, b) = forwarded("b", 7, b"\x92\x01\x02");
        let wire = updates_message(&[a, b]);
        let decoded: ServerMessage = decode_header(&wire.header, 1 << 20).unwrap();
        assert_eq!(
            decoded,
            ServerMessage::Updates {
                updates: vec![first.clone(), second.clone()],
                lengths: vec![1, 3],
            }
        );
        // Byte for byte what the serde encoding of the same message gives.
        let via_serde = encode(&ServerMessage::Updates {
            updates: vec![first, second],
            lengths: vec![1, 3],
        });
        assert_eq!(wire.header, via_serde);
        assert_eq!(wire.payload.as_deref(), Some(&b"\x01\x92\x01\x02"[..]));
        assert!(!wire.batchable);
    }

    #[test]
    fn asking_for_batches_takes_a_real_boolean() {
        use crate::protocol::CommandRequest;
        use rmpv::Value;
        let auth = |batches: Value| {
            let map = Value::Map(vec![
                (Value::from("type"), Value::from("AUTH")),
                (Value::from("user"), Value::from("ann")),
                (Value::from("role"), Value::from("CLIENT")),
                (Value::from("protocol_version"), Value::from(2)),
                (Value::from("batches"), batches),
            ]);
            decode_header::<CommandRequest>(&crate::protocol::codec::encode_value(&map), 1 << 20)
        };
        assert!(matches!(
            auth(Value::Boolean(true)),
            Ok(CommandRequest::Auth { batches: true, .. })
        ));
        assert!(auth(Value::Nil).is_err());
        assert!(auth(Value::from(1)).is_err());
    }

    #[test]
    fn a_built_datablocks_is_what_serde_would_write() {
        let header = |uuid: &str| DatablockHeader {
            uuid: uuid.into(),
            type_id: "Mesh".into(),
            owner: "ann".into(),
            deps: vec!["m".into()],
            revision: 3,
        };
        let message = |uuid: &str| ServerMessage::Datablock {
            header: header(uuid),
            id: None,
            chunk: ChunkFields::default(),
        };
        let mut builder = DatablocksBuilder::new(BatchLimits {
            max_data: 1 << 20,
            max_header: 1 << 20,
        });
        for (uuid, data) in [("a", &b"\x01"[..]), ("b", b"\x92\x01\x02")] {
            let encoded = encode(&message(uuid));
            assert!(builder.fits(encoded.len(), data.len()));
            builder.push(&encoded, Bytes::copy_from_slice(data));
        }
        let wire = builder.finish().unwrap();
        let via_serde = encode(&ServerMessage::Datablocks {
            datablocks: vec![message("a"), message("b")],
            lengths: vec![1, 3],
        });
        assert_eq!(wire.header, via_serde);
        assert_eq!(wire.payload.as_deref(), Some(&b"\x01\x92\x01\x02"[..]));
        assert!(builder.finish().is_none(), "finishing empties the builder");
        // One datablock stays a DATABLOCK, its data shared.
        let data = Bytes::from_static(b"\xc0");
        builder.push(&encode(&message("c")), data.clone());
        let alone = builder.finish().unwrap();
        assert_eq!(alone.header, encode(&message("c")));
        assert_eq!(alone.payload.unwrap().as_ptr(), data.as_ptr());
        // The limits, counted with the envelope.
        let mut narrow = DatablocksBuilder::new(BatchLimits {
            max_data: 10,
            max_header: ENVELOPE_BYTES + 2 * (40 + LENGTH_BYTES),
        });
        narrow.push(&[0; 40], Bytes::from_static(&[0; 6]));
        assert!(narrow.fits(40, 4));
        assert!(!narrow.fits(40, 5), "11 bytes of data pass 10");
        assert!(!narrow.fits(41, 1), "the header passes its limit");
    }

    #[test]
    fn the_batcher_keeps_within_its_limits() {
        let (_, wire) = forwarded("a", 1, &[0xc0; 100]);
        let mut batcher = Batcher::new(BatchLimits {
            max_data: 250,
            max_header: 1 << 20,
        });
        assert!(batcher.fits(&wire));
        batcher.push(wire.clone());
        batcher.push(wire.clone());
        assert!(!batcher.fits(&wire), "300 bytes of data passes 250");
        assert_eq!(batcher.drain().len(), 2);
        assert!(batcher.is_empty());
        // An item alone always fits, whatever its size.
        let mut tiny = Batcher::new(BatchLimits {
            max_data: 1,
            max_header: 1,
        });
        assert!(tiny.fits(&wire));
        tiny.push(wire.clone());
        assert!(!tiny.fits(&wire));
        // The header limit, counted with the envelope.
        let mut narrow = Batcher::new(BatchLimits {
            max_data: 1 << 20,
            max_header: ENVELOPE_BYTES + 2 * (wire.header.len() + LENGTH_BYTES),
        });
        narrow.push(wire.clone());
        assert!(narrow.fits(&wire));
        narrow.push(wire.clone());
        assert!(!narrow.fits(&wire));
        let built = updates_message(narrow.items());
        assert!(built.header.len() <= ENVELOPE_BYTES + 2 * (wire.header.len() + LENGTH_BYTES));
        // The count limit.
        let mut many = Batcher::new(BatchLimits {
            max_data: usize::MAX,
            max_header: usize::MAX,
        });
        for _ in 0..MAX_BATCH {
            assert!(many.fits(&wire));
            many.push(wire.clone());
        }
        assert!(!many.fits(&wire));
    }
}
