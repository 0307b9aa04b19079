//! A client's queue of outgoing messages on one channel, bounded by count and
//! bytes.

use std::collections::VecDeque;
use std::time::Instant;

use crate::protocol::Wire;

/// Messages waiting to be handed to libzmq for one client and channel.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Wire>,
    bytes: usize,
    /// Since when the connection has refused every message (EAGAIN).
    pub blocked_since: Option<Instant>,
}

impl Outbox {
    /// Queues a message; returns false when this goes over either limit.
    pub fn push(&mut self, wire: Wire, max_messages: usize, max_bytes: usize) -> bool {
        self.bytes += wire.len();
        self.queue.push_back(wire);
        self.queue.len() <= max_messages && self.bytes <= max_bytes
    }

    pub fn front(&self) -> Option<&Wire> {
        self.queue.front()
    }

    pub fn pop(&mut self) {
        if let Some(w) = self.queue.pop_front() {
            self.bytes -= w.len();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
        self.blocked_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn limits_count_messages_and_bytes() {
        let wire = Wire {
            header: Bytes::from_static(b"0123456789"),
            payload: None,
            batchable: false,
        };
        let mut outbox = Outbox::default();
        assert!(outbox.push(wire.clone(), 2, 100));
        assert!(outbox.push(wire.clone(), 2, 100));
        assert!(!outbox.push(wire.clone(), 2, 100));
        outbox.pop();
        outbox.pop();
        assert!(outbox.push(wire.clone(), 10, 25));
        assert!(!outbox.push(wire, 10, 25));
        outbox.clear();
        assert!(outbox.is_empty());
    }
}
