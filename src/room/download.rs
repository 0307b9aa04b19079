//! A joiner's snapshot stream: captured at one instant, sent in a bounded
//! window the client opens with acknowledgements, and followed, in order, by
//! the live traffic that happened meanwhile.

use std::collections::VecDeque;

use crate::protocol::Wire;

/// The state of one client's download.
#[derive(Debug)]
pub struct Download {
    /// Snapshot messages not yet handed to the transport.
    queue: VecDeque<Wire>,
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
    pub fn new(queue: VecDeque<Wire>, window_messages: usize, window_bytes: usize) -> Self {
        Self {
            queue,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            sent: 0,
            window_messages: window_messages.max(1),
            window_bytes: window_bytes.max(1),
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// Sends what the window allows. Called when the download starts and
    /// after each acknowledgement.
    pub fn pump(&mut self) -> Released {
        let mut out = Released::default();
        while self.in_flight.len() < self.window_messages
            && (self.in_flight_bytes < self.window_bytes || self.in_flight.is_empty())
        {
            let Some(wire) = self.queue.pop_front() else {
                break;
            };
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
    use bytes::Bytes;

    fn wire(n: usize) -> Wire {
        Wire {
            header: Bytes::from(vec![0u8; n]),
            payload: None,
            batchable: false,
        }
    }

    #[test]
    fn window_limits_messages_and_bytes() {
        let mut d = Download::new((0..10).map(|_| wire(10)).collect(), 4, 1000);
        assert_eq!(d.pump().wires.len(), 4);
        assert_eq!(d.acknowledge(2).unwrap().wires.len(), 2);
        let mut d = Download::new((0..10).map(|_| wire(10)).collect(), 100, 25);
        assert_eq!(d.pump().wires.len(), 3);
    }

    #[test]
    fn live_traffic_waits_for_the_snapshot() {
        let mut d = Download::new((0..3).map(|_| wire(1)).collect(), 2, 100);
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
        let mut d = Download::new((0..3).map(|_| wire(1)).collect(), 1, 100);
        assert!(d.hold(wire(5), 2, 100));
        assert!(d.hold(wire(5), 2, 100));
        assert!(
            !d.hold(wire(5), 2, 100),
            "three messages pass a limit of two"
        );
        let mut d = Download::new((0..3).map(|_| wire(1)).collect(), 1, 100);
        assert!(
            !d.hold(wire(11), 10, 10),
            "eleven bytes pass a limit of ten"
        );
    }

    #[test]
    fn over_acknowledging_is_an_error() {
        let mut d = Download::new((0..3).map(|_| wire(1)).collect(), 1, 100);
        d.pump();
        assert!(d.acknowledge(2).is_err());
    }
}
