//! A joiner's snapshot stream: captured at one instant, sent in a bounded
//! window the client opens with acknowledgements, and followed, in order, by
//! the live traffic that happened meanwhile.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::protocol::Wire;
use crate::protocol::batch::{BatchLimits, DatablocksBuilder};

/// How a client asked for its snapshot: the keys of its SNAPSHOT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// The window in messages it wants (capped by the server's).
    pub window: Option<u32>,
    /// It reads DATABLOCKS, several datablocks in one message.
    pub batches: bool,
}

/// A snapshot message waiting for the window.
#[derive(Debug)]
pub enum Queued {
    /// Sent as it is.
    Message(Wire),
    /// A datablock whose data is inline: its encoded DATABLOCK header and
    /// its data. Sent alone, or in a DATABLOCKS with its neighbours to a
    /// client that reads them; the batch is built only when the window lets
    /// it go, so a large scene is never copied all at once.
    Datablock { header: Bytes, data: Bytes },
}

/// Most bytes of the stream one call of [`Download::pump`] releases. The
/// window lets a client have megabytes in flight, but releasing them all at
/// once means building every batch before the first is sent; in slices, the
/// core hands the first ones to libzmq at the end of the turn and builds
/// the next ones in the following turns while they travel and the client
/// reads them (docs/architecture.md, "Snapshot streams").
pub const PUMP_BYTES: usize = 1 << 20;

/// The state of one client's download.
#[derive(Debug)]
pub struct Download {
    /// Snapshot messages not yet handed to the transport.
    queue: VecDeque<Queued>,
    /// Set when the client reads DATABLOCKS.
    batches: Option<DatablocksBuilder>,
    /// Stream positions and sizes of messages sent but not acknowledged.
    in_flight: VecDeque<(u64, usize)>,
    in_flight_bytes: usize,
    /// Messages sent so far (the next message's stream position).
    sent: u64,
    window_messages: usize,
    window_bytes: usize,
    /// Live traffic that arrived after the capture, held back until every
    /// snapshot message is sent so the client sees one ordered stream.
    held: VecDeque<Wire>,
    held_bytes: usize,
}

/// What an acknowledgement or a new message let through.
#[derive(Debug, Default)]
pub struct Released {
    pub wires: Vec<Wire>,
    /// True once the whole snapshot was sent: the client is live from now on.
    pub finished: bool,
}

impl Download {
    /// A download of `queue`, gathering datablocks into DATABLOCKS within
    /// `batches` when the client reads them.
    pub fn new(
        queue: VecDeque<Queued>,
        window_messages: usize,
        window_bytes: usize,
        batches: Option<BatchLimits>,
    ) -> Self {
        Self {
            queue,
            batches: batches.map(DatablocksBuilder::new),
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            sent: 0,
            window_messages: window_messages.max(1),
            window_bytes: window_bytes.max(1),
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// Sends what the window allows, up to [`PUMP_BYTES`] (at least one
    /// message). Called when the download starts, after each
    /// acknowledgement, and at each turn of the core while
    /// [`Download::ready`] says more may go.
    pub fn pump(&mut self) -> Released {
        let mut out = Released::default();
        let mut released = 0;
        while self.window_open() && (released < PUMP_BYTES || out.wires.is_empty()) {
            let Some(wire) = self.next_message() else {
                break;
            };
            released += wire.len();
            self.in_flight.push_back((self.sent, wire.len()));
            self.in_flight_bytes += wire.len();
            self.sent += 1;
            out.wires.push(wire);
        }
        if self.queue.is_empty() {
            out.wires.extend(self.held.drain(..));
            self.held_bytes = 0;
            out.finished = true;
        }
        out
    }

    /// The next message of the stream, gathering the datablocks that follow
    /// into one DATABLOCKS when the client reads them.
    fn next_message(&mut self) -> Option<Wire> {
        let (header, data) = match self.queue.pop_front()? {
            Queued::Message(wire) => return Some(wire),
            Queued::Datablock { header, data } => (header, data),
        };
        let Some(batch) = self.batches.as_mut() else {
            return Some(Wire {
                header,
                payload: Some(data),
                batchable: false,
            });
        };
        batch.push(&header, data);
        while let Some(Queued::Datablock { header, data }) = self.queue.front() {
            if !batch.fits(header.len(), data.len()) {
                break;
            }
            if let Some(Queued::Datablock { header, data }) = self.queue.pop_front() {
                batch.push(&header, data);
            }
        }
        batch.finish()
    }

    /// True when messages wait that the window lets go now.
    pub fn ready(&self) -> bool {
        !self.queue.is_empty() && self.window_open()
    }

    fn window_open(&self) -> bool {
        self.in_flight.len() < self.window_messages
            && (self.in_flight_bytes < self.window_bytes || self.in_flight.is_empty())
    }

    /// The client has received the first `received` messages of the stream.
    /// Acknowledging more than was sent is a protocol error.
    pub fn acknowledge(&mut self, received: u64) -> Result<Released, String> {
        if received > self.sent {
            return Err(format!(
                "acknowledged {received} snapshot messages but only {} were sent",
                self.sent
            ));
        }
        while let Some(&(position, size)) = self.in_flight.front() {
            if position >= received {
                break;
            }
            self.in_flight.pop_front();
            self.in_flight_bytes -= size;
        }
        Ok(self.pump())
    }

    /// Holds live traffic until the snapshot is out. Returns false when the
    /// held traffic passes either limit: the client cannot keep up.
    pub fn hold(&mut self, wire: Wire, max_messages: usize, max_bytes: usize) -> bool {
        self.held_bytes += wire.len();
        self.held.push_back(wire);
        self.held.len() <= max_messages && self.held_bytes <= max_bytes
    }

    /// Snapshot messages sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::DatablockRef;
    use crate::protocol::{ServerMessage, decode_header};

    fn wire(n: usize) -> Wire {
        Wire {
            header: Bytes::from(vec![0u8; n]),
            payload: None,
            batchable: false,
        }
    }

    fn queued(n: usize) -> Queued {
        Queued::Message(wire(n))
    }

    fn datablock(uuid: &str, size: usize) -> Queued {
        let mut header = Vec::new();
        DatablockRef {
            uuid,
            type_id: "Mesh",
            owner: "COMMON",
            deps: &[],
            revision: 1,
        }
        .write_header(&mut header);
        Queued::Datablock {
            header: Bytes::from(header),
            data: Bytes::from(vec![0xc0; size]),
        }
    }

    /// The uuids a stream message carries, and whether it was a batch.
    fn carried(wire: &Wire) -> (Vec<String>, bool) {
        let uuid = |m: &ServerMessage| match m {
            ServerMessage::Datablock { header, .. } => header.uuid.clone(),
            other => panic!("not a DATABLOCK: {other:?}"),
        };
        match decode_header::<ServerMessage>(&wire.header, usize::MAX) {
            Ok(ServerMessage::Datablocks {
                datablocks,
                lengths,
            }) => {
                let total: u64 = lengths.iter().sum();
                assert_eq!(total as usize, wire.payload.as_ref().map_or(0, Bytes::len));
                (datablocks.iter().map(uuid).collect(), true)
            }
            Ok(m @ ServerMessage::Datablock { .. }) => (vec![uuid(&m)], false),
            _ => (Vec::new(), false),
        }
    }

    #[test]
    fn a_wide_window_is_filled_a_slice_at_a_time() {
        // Ten messages of just over a third of a slice each, a window that takes them
        // all: each pump releases one slice (and never less than a message),
        // in order, until the queue is empty.
        let size = PUMP_BYTES / 3 + 1;
        let queue: VecDeque<Queued> = (0..10).map(|_| queued(size)).collect();
        let mut d = Download::new(queue, 100, 100 * PUMP_BYTES, None);
        let mut slices = Vec::new();
        while d.ready() {
            let released = d.pump();
            let bytes: usize = released.wires.iter().map(Wire::len).sum();
            assert!(bytes < PUMP_BYTES + size, "a slice of {bytes} bytes");
            slices.push((released.wires.len(), released.finished));
        }
        assert_eq!(slices, [(3, false), (3, false), (3, false), (1, true)]);
        assert_eq!(d.sent(), 10);

        // A message larger than a slice still goes, alone.
        let mut d = Download::new(VecDeque::from([queued(3 * PUMP_BYTES)]), 100, 1 << 30, None);
        assert_eq!(d.pump().wires.len(), 1);
        assert!(!d.ready());
    }

    #[test]
    fn datablocks_are_gathered_as_the_window_lets_them_go() {
        let queue = || -> VecDeque<Queued> {
            let mut q: VecDeque<Queued> = ["a", "b", "c", "d", "e"]
                .iter()
                .map(|u| datablock(u, 100))
                .collect();
            q.push_front(queued(3));
            q.push_back(queued(3));
            q.push_back(datablock("f", 100));
            q.push_back(queued(3));
            q
        };
        let limits = BatchLimits {
            max_data: 250,
            max_header: 1 << 20,
        };
        let mut d = Download::new(queue(), 100, 1 << 20, Some(limits));
        let sent: Vec<(Vec<String>, bool)> = d.pump().wires.iter().map(carried).collect();
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            sent,
            [
                (vec![], false),
                (names(&["a", "b"]), true),
                (names(&["c", "d"]), true),
                (names(&["e"]), false),
                (vec![], false),
                (names(&["f"]), false),
                (vec![], false),
            ],
            "batches within the data limit; a message between datablocks ends a run"
        );
        // A batch counts as one message of the window.
        let mut d = Download::new(queue(), 2, 1 << 20, Some(limits));
        let first = d.pump();
        assert_eq!(first.wires.len(), 2);
        assert_eq!(carried(&first.wires[1]), (names(&["a", "b"]), true));
        assert_eq!(d.sent(), 2);
        // Without batches, each datablock travels alone.
        let mut d = Download::new(queue(), 100, 1 << 20, None);
        let alone = d.pump().wires;
        assert_eq!(alone.len(), 9);
        assert!(alone.iter().all(|w| !carried(w).1));
    }

    #[test]
    fn window_limits_messages_and_bytes() {
        let mut d = Download::new((0..10).map(|_| queued(10)).collect(), 4, 1000, None);
        assert_eq!(d.pump().wires.len(), 4);
        assert_eq!(d.acknowledge(2).unwrap().wires.len(), 2);
        let mut d = Download::new((0..10).map(|_| queued(10)).collect(), 100, 25, None);
        assert_eq!(d.pump().wires.len(), 3);
    }

    #[test]
    fn live_traffic_waits_for_the_snapshot() {
        let mut d = Download::new((0..3).map(|_| queued(1)).collect(), 2, 100, None);
        let first = d.pump();
        assert_eq!(first.wires.len(), 2);
        assert!(!first.finished);
        assert!(d.hold(wire(7), 10, 100));
        let rest = d.acknowledge(2).unwrap();
        assert!(rest.finished);
        assert_eq!(rest.wires.len(), 2);
        assert_eq!(rest.wires[1].len(), 7);
    }

    #[test]
    fn held_traffic_is_bounded() {
        let mut d = Download::new((0..3).map(|_| queued(1)).collect(), 1, 100, None);
        assert!(d.hold(wire(5), 2, 100));
        assert!(d.hold(wire(5), 2, 100));
        assert!(
            !d.hold(wire(5), 2, 100),
            "three messages pass a limit of two"
        );
        let mut d = Download::new((0..3).map(|_| queued(1)).collect(), 1, 100, None);
        assert!(
            !d.hold(wire(11), 10, 10),
            "eleven bytes pass a limit of ten"
        );
    }

    #[test]
    fn over_acknowledging_is_an_error() {
        let mut d = Download::new((0..3).map(|_| queued(1)).collect(), 1, 100, None);
        d.pump();
        assert!(d.acknowledge(2).is_err());
    }
}
