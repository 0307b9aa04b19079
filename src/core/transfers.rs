//! Reassembly of payloads a client sends in chunks.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use foldhash::HashMap;

use crate::config::Limits;
use crate::protocol::value_check::ValueCheck;
use crate::protocol::{BlockSpec, Channel, ErrorCode};
use crate::room::RoomError;

impl Pending {
    /// The datablock the payload is for.
    pub fn uuid(&self) -> &str {
        match self {
            Pending::UploadSet { spec, .. } | Pending::Update { spec, .. } => &spec.uuid,
        }
    }

    /// Whether the payload is a datablock's whole data (which must be one
    /// MessagePack value), not a patch.
    pub fn whole_value(&self) -> bool {
        !matches!(self, Pending::Update { patch: true, .. })
    }
}

/// What to do with a payload once all its chunks are in.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// A datablock of the initial upload (SERVER_SNAPSHOT SET).
    UploadSet {
        req_id: Option<u64>,
        spec: BlockSpec,
    },
    /// A live UPDATE.
    Update {
        req_id: Option<u64>,
        spec: BlockSpec,
        patch: bool,
        base_revision: Option<u64>,
    },
}

/// A refused chunk: the error, and the request whose data it refuses when
/// the data itself is wrong (the ERROR then refers to that SET or UPDATE,
/// as it would had the data arrived whole).
#[derive(Debug)]
pub struct ChunkRefused {
    pub error: RoomError,
    pub data_of: Option<Box<Pending>>,
}

impl From<RoomError> for ChunkRefused {
    fn from(error: RoomError) -> Self {
        Self {
            error,
            data_of: None,
        }
    }
}

#[derive(Debug)]
struct Partial {
    pending: Pending,
    /// When the header or the last chunk arrived.
    last_activity: Instant,
    chunks: u32,
    size: u64,
    next_index: u32,
    data: BytesMut,
    /// The data is checked to be one MessagePack value chunk by chunk
    /// (full data; a patch is decoded whole when applied).
    check: Option<ValueCheck>,
}

/// A client's unfinished transfers, keyed by channel and transfer id.
#[derive(Debug, Default)]
pub struct Transfers {
    partial: HashMap<(Channel, u64), Partial>,
    /// Bytes announced by unfinished transfers.
    reserved: u64,
}

impl Transfers {
    /// Registers a transfer announced by a header.
    pub fn begin(
        &mut self,
        channel: Channel,
        transfer: u64,
        chunks: u32,
        size: u64,
        pending: Pending,
        limits: &Limits,
    ) -> Result<(), RoomError> {
        let max_datablock = limits.max_datablock_bytes;
        let max_reserved = limits.max_transfer_bytes_per_client;
        if size > max_datablock as u64 {
            return Err(RoomError::new(
                ErrorCode::TooLarge,
                format!(
                    "payload of {size} bytes exceeds the datablock limit of {max_datablock} bytes"
                ),
            ));
        }
        if u64::from(chunks) > size {
            return Err(RoomError::new(
                ErrorCode::TransferFailed,
                format!("{chunks} chunks cannot carry {size} bytes"),
            ));
        }
        if self.partial.contains_key(&(channel, transfer)) {
            return Err(RoomError::new(
                ErrorCode::TransferFailed,
                format!("transfer {transfer} is already in progress"),
            ));
        }
        if self.reserved + size > max_reserved as u64 {
            return Err(RoomError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "unfinished transfers would exceed {max_reserved} bytes; wait for the others to finish"
                ),
            ));
        }
        self.reserved += size;
        let check = pending.whole_value().then(|| ValueCheck::new(size));
        self.partial.insert(
            (channel, transfer),
            Partial {
                pending,
                last_activity: Instant::now(),
                chunks,
                size,
                next_index: 0,
                // The whole payload in one allocation, so that it is never
                // copied again as it grows: the size is within the limits
                // checked above, and pages are only taken as chunks fill
                // them.
                data: BytesMut::with_capacity(usize::try_from(size).unwrap_or(0)),
                check,
            },
        );
        Ok(())
    }

    /// Adds a chunk; returns the finished payload with its purpose after the
    /// last one. A chunk out of order, too large or unknown aborts the
    /// transfer.
    pub fn chunk(
        &mut self,
        channel: Channel,
        transfer: u64,
        index: u32,
        data: &[u8],
    ) -> Result<Option<(Pending, Bytes)>, ChunkRefused> {
        let key = (channel, transfer);
        let Some(partial) = self.partial.get_mut(&key) else {
            return Err(RoomError::new(
                ErrorCode::TransferFailed,
                format!(
                    "no transfer {transfer} in progress on the {} channel",
                    channel.name()
                ),
            )
            .into());
        };
        let failure = if index != partial.next_index {
            Some(format!(
                "chunk {index} arrived; expected chunk {}",
                partial.next_index
            ))
        } else if partial.data.len() as u64 + data.len() as u64 > partial.size {
            Some(format!(
                "chunks exceed the announced size of {} bytes",
                partial.size
            ))
        } else if index + 1 == partial.chunks
            && partial.data.len() as u64 + data.len() as u64 != partial.size
        {
            Some(format!(
                "the last chunk leaves {} of {} bytes",
                partial.data.len() + data.len(),
                partial.size
            ))
        } else {
            None
        };
        if let Some(message) = failure {
            self.abort(channel, transfer);
            return Err(RoomError::new(
                ErrorCode::TransferFailed,
                format!("transfer {transfer} aborted: {message}"),
            )
            .into());
        }
        let last = index + 1 == partial.chunks;
        let checked = partial.check.as_mut().map_or(Ok(()), |check| {
            check
                .feed(data)
                .and_then(|()| if last { check.finish() } else { Ok(()) })
        });
        if let Err(e) = checked {
            let pending = self.abort(channel, transfer);
            let uuid = pending.as_ref().map_or("", Pending::uuid);
            return Err(ChunkRefused {
                error: RoomError::new(
                    ErrorCode::Malformed,
                    format!(
                        "transfer {transfer} aborted: the data of datablock {uuid} is not one \
                         MessagePack value: {e}"
                    ),
                ),
                data_of: pending.map(Box::new),
            });
        }
        partial.data.extend_from_slice(data);
        partial.next_index += 1;
        partial.last_activity = Instant::now();
        if !last {
            return Ok(None);
        }
        let Some(done) = self.partial.remove(&key) else {
            return Ok(None);
        };
        self.reserved -= done.size;
        Ok(Some((done.pending, done.data.freeze())))
    }

    /// Bytes announced by this client's unfinished transfers.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Drops the transfers that received nothing for `idle`, so that an
    /// abandoned upload does not hold memory until the client leaves;
    /// returns them with their transfer ids.
    pub fn expire(&mut self, now: Instant, idle: Duration) -> Vec<(Pending, u64)> {
        let stale: Vec<(Channel, u64)> = self
            .partial
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_activity) > idle)
            .map(|(key, _)| *key)
            .collect();
        stale
            .into_iter()
            .filter_map(|key| {
                let p = self.partial.remove(&key)?;
                self.reserved -= p.size;
                let received = p.data.len();
                crate::memory::release(p.data, received);
                Some((p.pending, key.1))
            })
            .collect()
    }

    /// Drops every unfinished transfer (the client left its room, where
    /// they were going).
    pub fn clear(&mut self) {
        let received = self.received();
        crate::memory::release(std::mem::take(&mut self.partial), received);
        self.reserved = 0;
    }

    /// Forgets a transfer; returns what it was for.
    fn abort(&mut self, channel: Channel, transfer: u64) -> Option<Pending> {
        let p = self.partial.remove(&(channel, transfer))?;
        self.reserved -= p.size;
        let received = p.data.len();
        crate::memory::release(p.data, received);
        Some(p.pending)
    }

    /// Bytes received by unfinished transfers (the memory they hold).
    fn received(&self) -> usize {
        self.partial.values().map(|p| p.data.len()).sum()
    }
}

impl Drop for Transfers {
    /// A client that leaves in the middle of a large upload may hold a
    /// gigabyte of it: freed off the core (`memory::release`).
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_datablock_bytes: usize, max_transfer_bytes_per_client: usize) -> Limits {
        Limits {
            max_datablock_bytes,
            max_transfer_bytes_per_client,
            ..Limits::default()
        }
    }

    fn pending() -> Pending {
        Pending::Update {
            req_id: None,
            spec: BlockSpec::checked("u".into(), None, None, None).unwrap(),
            patch: false,
            base_revision: None,
        }
    }

    #[test]
    fn reassembles_in_order() {
        let mut t = Transfers::default();
        t.begin(Channel::Publisher, 7, 3, 5, pending(), &limits(100, 100))
            .unwrap();
        // The string "abcd", split inside its marker's contents.
        assert!(
            t.chunk(Channel::Publisher, 7, 0, b"\xa4a")
                .unwrap()
                .is_none()
        );
        assert!(t.chunk(Channel::Publisher, 7, 1, b"bc").unwrap().is_none());
        let (_, data) = t.chunk(Channel::Publisher, 7, 2, b"d").unwrap().unwrap();
        assert_eq!(&data[..], b"\xa4abcd");
        assert_eq!(t.reserved, 0);
    }

    #[test]
    fn data_that_is_not_one_value_aborts_at_the_chunk_that_shows_it() {
        let mut t = Transfers::default();
        t.begin(Channel::Publisher, 1, 3, 6, pending(), &limits(100, 100))
            .unwrap();
        // A string of 2 bytes, then a byte too many.
        t.chunk(Channel::Publisher, 1, 0, b"\xa2a").unwrap();
        let e = t.chunk(Channel::Publisher, 1, 1, b"bc").unwrap_err();
        assert_eq!(e.error.code, ErrorCode::Malformed, "{}", e.error.message);
        assert_eq!(
            e.data_of.as_deref(),
            Some(&pending()),
            "refers to the UPDATE"
        );
        assert_eq!(t.reserved, 0, "aborted");
        // A patch is not a whole value: it is decoded when applied.
        let patch = Pending::Update {
            req_id: None,
            spec: BlockSpec::checked("u".into(), None, None, None).unwrap(),
            patch: true,
            base_revision: None,
        };
        t.begin(Channel::Publisher, 2, 2, 2, patch, &limits(100, 100))
            .unwrap();
        t.chunk(Channel::Publisher, 2, 0, b"\xc1").unwrap();
        assert!(
            t.chunk(Channel::Publisher, 2, 1, b"\xc1")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn out_of_order_or_oversized_chunks_abort() {
        let mut t = Transfers::default();
        t.begin(Channel::Publisher, 1, 2, 4, pending(), &limits(100, 100))
            .unwrap();
        assert!(t.chunk(Channel::Publisher, 1, 1, b"ab").is_err());
        assert!(
            t.chunk(Channel::Publisher, 1, 0, b"ab").is_err(),
            "aborted transfers are gone"
        );
        t.begin(Channel::Publisher, 2, 2, 4, pending(), &limits(100, 100))
            .unwrap();
        assert!(t.chunk(Channel::Publisher, 2, 0, b"abcde").is_err());
        t.begin(Channel::Publisher, 3, 2, 4, pending(), &limits(100, 100))
            .unwrap();
        t.chunk(Channel::Publisher, 3, 0, b"a").unwrap();
        assert!(
            t.chunk(Channel::Publisher, 3, 1, b"b").is_err(),
            "short total"
        );
        assert_eq!(t.reserved, 0);
    }

    #[test]
    fn abandoned_transfers_expire() {
        let mut t = Transfers::default();
        t.begin(Channel::Publisher, 1, 2, 4, pending(), &limits(100, 100))
            .unwrap();
        t.begin(Channel::Commands, 2, 2, 4, pending(), &limits(100, 100))
            .unwrap();
        let idle = Duration::from_secs(120);
        assert!(
            t.expire(Instant::now(), idle).is_empty(),
            "fresh transfers stay"
        );
        let later = Instant::now() + Duration::from_secs(121);
        let mut expired: Vec<u64> = t
            .expire(later, idle)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        expired.sort_unstable();
        assert_eq!(expired, [1, 2]);
        assert_eq!(t.reserved(), 0);
        assert!(
            t.chunk(Channel::Publisher, 1, 0, b"ab").is_err(),
            "an expired transfer is gone"
        );
    }

    #[test]
    fn limits_are_enforced_at_announcement() {
        let mut t = Transfers::default();
        assert!(
            t.begin(Channel::Publisher, 1, 1, 101, pending(), &limits(100, 1000))
                .is_err()
        );
        t.begin(Channel::Publisher, 1, 1, 60, pending(), &limits(100, 100))
            .unwrap();
        assert!(
            t.begin(Channel::Publisher, 2, 1, 60, pending(), &limits(100, 100))
                .is_err()
        );
        assert!(
            t.begin(Channel::Publisher, 3, 9, 5, pending(), &limits(100, 100))
                .is_err()
        );
    }
}
