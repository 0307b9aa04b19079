//! Commands that wait for their room's changes to be recorded.
//!
//! While a room's record is written in the background
//! ([`crate::store::recorder`]), what its members are sent waits until the
//! batch it may report is committed: nothing is forwarded or acknowledged
//! before it is recorded. Everyone else is served meanwhile. A command for
//! a client that already has commands waiting on the same channel waits
//! behind them, so that each client's order on each channel is kept; a
//! disconnection waits behind everything its client is owed.

use std::collections::VecDeque;
use std::sync::Arc;

use foldhash::{HashMap, HashSet, HashSetExt};

use crate::protocol::Channel;
use crate::transport::{Command, Identity};

/// A room's background batch that a command waits for: the room's name
/// and the batch's number.
pub type Await = (Arc<str>, u64);

#[derive(Debug)]
struct Held {
    command: Command,
    after: Vec<Await>,
}

/// The commands waiting, in the order they were made.
#[derive(Debug, Default)]
pub struct Gate {
    held: VecDeque<Held>,
    /// Held commands per client and channel: later ones wait behind them.
    waiting: HashMap<Identity, [u32; 4]>,
}

impl Gate {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Sends `command` (into `out`) unless it waits for one of `after` or
    /// for its client's earlier commands.
    pub fn admit(&mut self, command: Command, after: Vec<Await>, out: &mut Vec<Command>) {
        if after.is_empty() && !self.behind_others(&command) {
            out.push(command);
            return;
        }
        let waiting = &mut self.waiting;
        for_each_lane(&command, |identity, channels| {
            let counts = match waiting.get_mut(identity) {
                Some(counts) => counts,
                None => waiting.entry(identity.clone()).or_default(),
            };
            for channel in channels {
                counts[*channel as usize] += 1;
            }
            false
        });
        self.held.push_back(Held { command, after });
    }

    /// Sends (into `out`) every held command whose batches are committed
    /// (`committed(room, batch)`) and that waits behind nothing still held.
    pub fn release(&mut self, committed: impl Fn(&str, u64) -> bool, out: &mut Vec<Command>) {
        if self.held.is_empty() {
            return;
        }
        let ready = |held: &Held| held.after.iter().all(|(room, n)| committed(room, *n));
        // Usually a turn's commands wait for the same commits, and all go.
        if self.held.iter().all(ready) {
            out.extend(self.held.drain(..).map(|h| h.command));
            self.waiting.clear();
            return;
        }
        // Client and channel of every command that stays: what follows for
        // them stays too.
        let mut blocked: HashSet<(Identity, Channel)> = HashSet::new();
        let mut kept = VecDeque::with_capacity(self.held.len());
        for held in self.held.drain(..) {
            let go = ready(&held)
                && !for_each_lane(&held.command, |identity, channels| {
                    channels
                        .iter()
                        .any(|c| blocked.contains(&(identity.clone(), *c)))
                });
            if go {
                let waiting = &mut self.waiting;
                for_each_lane(&held.command, |identity, channels| {
                    if let Some(counts) = waiting.get_mut(identity) {
                        for channel in channels {
                            counts[*channel as usize] = counts[*channel as usize].saturating_sub(1);
                        }
                        if counts.iter().all(|&n| n == 0) {
                            waiting.remove(identity);
                        }
                    }
                    false
                });
                out.push(held.command);
            } else {
                for_each_lane(&held.command, |identity, channels| {
                    for channel in channels {
                        blocked.insert((identity.clone(), *channel));
                    }
                    false
                });
                kept.push_back(held);
            }
        }
        self.held = kept;
    }

    /// Whether a client of `command` has earlier commands waiting on a
    /// channel it uses.
    fn behind_others(&self, command: &Command) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        for_each_lane(command, |identity, channels| {
            self.waiting
                .get(identity)
                .is_some_and(|counts| channels.iter().any(|c| counts[*c as usize] > 0))
        })
    }
}

/// Calls `visit` with each client a command goes to and the channels whose
/// order it must keep for it (a disconnection ends them all), until
/// `visit` returns true; returns whether it did.
fn for_each_lane(command: &Command, mut visit: impl FnMut(&Identity, &[Channel]) -> bool) -> bool {
    match command {
        Command::Deliver { channel, to, .. } => {
            let channels = one_channel(*channel);
            to.iter().any(|identity| visit(identity, channels))
        }
        Command::Disconnect { identity, .. } => visit(identity, &Channel::ALL),
        Command::Hold {
            channel, identity, ..
        }
        | Command::Release { channel, identity } => visit(identity, one_channel(*channel)),
        Command::Frames { identity, .. } => visit(identity, one_channel(Channel::Commands)),
        Command::Users { .. } => false,
    }
}

fn one_channel(channel: Channel) -> &'static [Channel] {
    let i = channel as usize;
    Channel::ALL.get(i..=i).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::Wire;

    fn deliver(channel: Channel, to: &[&'static str], tag: &'static str) -> Command {
        Command::Deliver {
            channel,
            to: to
                .iter()
                .map(|t| Bytes::from_static(t.as_bytes()))
                .collect::<Vec<_>>()
                .into(),
            wire: Wire {
                header: Bytes::from_static(tag.as_bytes()),
                payload: None,
                batchable: false,
            },
        }
    }

    fn tag(command: &Command) -> &[u8] {
        match command {
            Command::Deliver { wire, .. } => &wire.header,
            Command::Disconnect { .. } => b"disconnect",
            _ => b"other",
        }
    }

    fn tags(out: &[Command]) -> Vec<&[u8]> {
        out.iter().map(tag).collect()
    }

    fn waiting_for(room: &str, n: u64) -> Vec<Await> {
        vec![(Arc::from(room), n)]
    }

    #[test]
    fn commands_wait_for_their_batch_and_others_pass() {
        let mut gate = Gate::default();
        let mut out = Vec::new();
        gate.admit(
            deliver(Channel::Subscriber, &["b1", "b2"], "forward"),
            waiting_for("B", 1),
            &mut out,
        );
        gate.admit(
            deliver(Channel::Subscriber, &["a1"], "other room"),
            Vec::new(),
            &mut out,
        );
        assert_eq!(tags(&out), [b"other room"]);
        out.clear();
        gate.release(|_, _| false, &mut out);
        assert!(out.is_empty(), "batch 1 of B is not committed");
        gate.release(|room, n| room == "B" && n <= 1, &mut out);
        assert_eq!(tags(&out), [b"forward"]);
        assert!(gate.is_empty());
        assert!(gate.waiting.is_empty());
    }

    #[test]
    fn a_client_keeps_its_order_on_each_channel() {
        let mut gate = Gate::default();
        let mut out = Vec::new();
        gate.admit(
            deliver(Channel::Commands, &["x"], "ack"),
            waiting_for("B", 2),
            &mut out,
        );
        // Nothing to wait for itself, but behind the ACK on its channel.
        gate.admit(
            deliver(Channel::Commands, &["x", "y"], "reply"),
            Vec::new(),
            &mut out,
        );
        // Another channel of the same client is not held up.
        gate.admit(
            deliver(Channel::Heartbeat, &["x"], "ping"),
            Vec::new(),
            &mut out,
        );
        assert_eq!(tags(&out), [b"ping"]);
        out.clear();
        gate.admit(
            Command::Disconnect {
                identity: Bytes::from_static(b"y"),
                last: None,
            },
            Vec::new(),
            &mut out,
        );
        assert!(out.is_empty(), "y's disconnection waits behind its reply");
        gate.release(|_, n| n <= 2, &mut out);
        assert_eq!(tags(&out), [&b"ack"[..], b"reply", b"disconnect"]);
        assert!(gate.waiting.is_empty());
    }

    #[test]
    fn a_later_batch_does_not_overtake_an_earlier_one_for_the_same_client() {
        let mut gate = Gate::default();
        let mut out = Vec::new();
        gate.admit(
            deliver(Channel::Subscriber, &["x"], "first"),
            waiting_for("B", 1),
            &mut out,
        );
        gate.admit(
            deliver(Channel::Subscriber, &["x"], "second"),
            waiting_for("A", 1),
            &mut out,
        );
        gate.release(|room, _| room == "A", &mut out);
        assert!(out.is_empty(), "the second waits behind the first");
        gate.release(|_, _| true, &mut out);
        assert_eq!(tags(&out), [&b"first"[..], b"second"]);
    }
}
