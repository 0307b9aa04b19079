//! Who is in the room, told as changes: a joiner gets the whole list once
//! (CLIENTS_STATE), everyone else only what changed since (PRESENCE): who
//! joined or left, a status, the keys of someone's metadata that changed,
//! and, after a heartbeat round, the latencies measured. Repeating every
//! user's metadata to every user each second made a room of 60 users with
//! 60 KB each send 248 MB/s.

use std::collections::BTreeMap;

use rmpv::Value;

use super::ClientId;
use super::members::Members;
use crate::protocol::{ServerMessage, UserChange};

/// Changes not told yet.
#[derive(Debug, Default)]
pub struct Pending {
    /// Joined since: the others get their whole entry, and they get the
    /// whole list.
    joined: Vec<ClientId>,
    /// Names of those who left since (and had been told to the others).
    left: Vec<String>,
    /// Metadata keys changed since, per user, merged in order.
    metadata: Vec<(ClientId, Vec<(Value, Value)>)>,
    /// A heartbeat round measured latencies.
    latency: bool,
}

impl Pending {
    pub fn joined(&mut self, id: ClientId) {
        self.joined.push(id);
    }

    /// `name` left: nobody needs what was pending about it, and those who
    /// were told it joined are told it left.
    pub fn left(&mut self, id: ClientId, name: &str) {
        self.metadata.retain(|(c, _)| *c != id);
        match self.joined.iter().position(|c| *c == id) {
            Some(i) => {
                self.joined.remove(i);
            }
            None => self.left.push(name.to_owned()),
        }
    }

    /// Keys of `id`'s metadata changed to these values (nil: removed).
    pub fn metadata(&mut self, id: ClientId, changes: Vec<(Value, Value)>) {
        if self.joined.contains(&id) {
            return;
        }
        let slot = match self.metadata.iter().position(|(c, _)| *c == id) {
            Some(i) => &mut self.metadata[i].1,
            None => {
                self.metadata.push((id, Vec::new()));
                let last = self.metadata.len() - 1;
                &mut self.metadata[last].1
            }
        };
        for (key, value) in changes {
            match slot.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = value,
                None => slot.push((key, value)),
            }
        }
    }

    pub fn latency(&mut self) {
        self.latency = true;
    }

    /// The messages due now: the whole list for each joiner, and the
    /// changes for everyone else (none when nothing changed). Takes the
    /// pending changes.
    pub fn messages(&mut self, members: &mut Members) -> Messages {
        let Pending {
            joined,
            left,
            metadata,
            latency,
        } = std::mem::take(self);
        let whole = ServerMessage::ClientsState {
            users: members.states(),
        };
        let mut changed = Vec::new();
        let mut latencies = BTreeMap::new();
        let mut others = Vec::new();
        let mut joined_states = Vec::new();
        for (id, member) in members.iter_mut() {
            if joined.contains(&id) {
                joined_states.push(member.state());
                member.shown_status = member.status;
                member.shown_latency = member.latency_ms;
                continue;
            }
            others.push(id);
            let status = (member.status != member.shown_status).then_some(member.status);
            member.shown_status = member.status;
            let keys = metadata
                .iter()
                .find(|(c, _)| *c == id)
                .map(|(_, keys)| Value::Map(keys.clone()));
            if status.is_some() || keys.is_some() {
                changed.push(UserChange {
                    name: member.name.clone(),
                    status,
                    metadata: keys,
                });
            }
            if latency
                && member.latency_ms != member.shown_latency
                && let Some(ms) = member.latency_ms
            {
                latencies.insert(member.name.clone(), ms);
                member.shown_latency = member.latency_ms;
            }
        }
        // Joiners' own latency needs no separate word: their entry has it.
        let changes = (!left.is_empty()
            || !joined_states.is_empty()
            || !changed.is_empty()
            || !latencies.is_empty())
        .then_some(ServerMessage::Presence {
            left,
            joined: joined_states,
            changed,
            latency: latencies,
        });
        Messages {
            whole: (!joined.is_empty()).then_some((joined, whole)),
            changes: changes.filter(|_| !others.is_empty()).map(|m| (others, m)),
        }
    }
}

/// What [`Pending::messages`] has to send, and to whom.
#[derive(Debug)]
pub struct Messages {
    pub whole: Option<(Vec<ClientId>, ServerMessage)>,
    pub changes: Option<(Vec<ClientId>, ServerMessage)>,
}
