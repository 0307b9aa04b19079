//! The users of a session.

use rmpv::Value;

use super::{ClientId, Download, RoomError, StreamOptions};
use crate::protocol::codec::encode_value;
use crate::protocol::{ErrorCode, UserState, UserStatus};

/// Most keys in one user's presence map.
const MAX_METADATA_KEYS: usize = 256;

/// One user in the session.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub admin: bool,
    pub status: UserStatus,
    /// Presence: frame, mode, view, selection, scene, colour, anything else.
    pub metadata: Vec<(Value, Value)>,
    pub latency_ms: Option<f64>,
    /// The status and latency the others were last told.
    pub shown_status: UserStatus,
    pub shown_latency: Option<f64>,
    /// The client receives live traffic on its subscriber channel (it asked
    /// with SNAPSHOT, or it uploaded the scene).
    pub subscribed: bool,
    /// The client sent SNAPSHOT on this connection.
    pub requested: bool,
    /// What the client asked for in SNAPSHOT.
    pub stream: StreamOptions,
    /// Snapshot in progress.
    pub download: Option<Download>,
    /// When the snapshot in progress started.
    pub stream_started: Option<std::time::Instant>,
    /// Messages of the finished snapshot stream, so that acknowledgements
    /// arriving after the last message was sent are still accepted.
    pub snapshot_sent: u64,
    /// Came from another room: acknowledgements of that room's snapshot
    /// may still be in flight, and are ignored until this member sends
    /// SNAPSHOT here.
    pub switched: bool,
}

impl Member {
    pub fn new(name: &str, admin: bool) -> Self {
        Self {
            name: name.to_owned(),
            admin,
            status: UserStatus::Lobby,
            metadata: Vec::new(),
            latency_ms: None,
            shown_status: UserStatus::Lobby,
            shown_latency: None,
            subscribed: false,
            requested: false,
            switched: false,
            stream: StreamOptions::default(),
            download: None,
            stream_started: None,
            snapshot_sent: 0,
        }
    }

    /// Merges a presence update: each key replaces the previous value; a nil
    /// value removes the key. Refused, changing nothing, when the result
    /// would pass `max_bytes` encoded. Returns the keys it set, as given.
    pub fn merge_metadata(
        &mut self,
        update: Value,
        max_bytes: usize,
    ) -> Result<Vec<(Value, Value)>, RoomError> {
        let entries = check_metadata(update)?;
        let mut merged = self.metadata.clone();
        for (key, value) in entries.iter().cloned() {
            let slot = merged.iter().position(|(k, _)| *k == key);
            match (slot, value.is_nil()) {
                (Some(i), true) => {
                    merged.remove(i);
                }
                (Some(i), false) => {
                    if let Some(entry) = merged.get_mut(i) {
                        entry.1 = value;
                    }
                }
                (None, true) => {}
                (None, false) => merged.push((key, value)),
            }
        }
        if merged.len() > MAX_METADATA_KEYS {
            return Err(too_many_keys());
        }
        let merged = Value::Map(merged);
        let size = encode_value(&merged).len();
        if size > max_bytes {
            return Err(RoomError::new(
                ErrorCode::LimitExceeded,
                format!("metadata would take {size} bytes; the limit is {max_bytes}"),
            ));
        }
        if let Value::Map(merged) = merged {
            self.metadata = merged;
        }
        Ok(entries)
    }

    pub fn state(&self) -> UserState {
        UserState {
            name: self.name.clone(),
            admin: self.admin,
            status: self.status,
            latency_ms: self.latency_ms,
            metadata: Value::Map(self.metadata.clone()),
        }
    }
}

/// Presence metadata must be a map with string keys.
pub fn check_metadata(value: Value) -> Result<Vec<(Value, Value)>, RoomError> {
    let Value::Map(entries) = value else {
        return Err(RoomError::new(
            ErrorCode::InvalidMessage,
            "metadata must be a map with string keys",
        ));
    };
    if entries.iter().any(|(k, _)| !k.is_str()) {
        return Err(RoomError::new(
            ErrorCode::InvalidMessage,
            "metadata keys must be strings",
        ));
    }
    if entries.len() > MAX_METADATA_KEYS {
        return Err(too_many_keys());
    }
    Ok(entries)
}

fn too_many_keys() -> RoomError {
    RoomError::new(
        ErrorCode::LimitExceeded,
        format!("metadata may hold at most {MAX_METADATA_KEYS} keys"),
    )
}

/// The users, in join order (sessions hold tens of users: a vector is the
/// simplest and fastest structure at that size).
#[derive(Debug, Default)]
pub struct Members {
    list: Vec<(ClientId, Member)>,
}

impl Members {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn add(&mut self, id: ClientId, member: Member) {
        self.list.push((id, member));
    }

    pub fn remove(&mut self, id: ClientId) -> Option<Member> {
        let i = self.list.iter().position(|(c, _)| *c == id)?;
        Some(self.list.remove(i).1)
    }

    pub fn get(&self, id: ClientId) -> Option<&Member> {
        self.list.iter().find(|(c, _)| *c == id).map(|(_, m)| m)
    }

    pub fn get_mut(&mut self, id: ClientId) -> Option<&mut Member> {
        self.list.iter_mut().find(|(c, _)| *c == id).map(|(_, m)| m)
    }

    pub fn find(&self, name: &str) -> Option<ClientId> {
        self.list
            .iter()
            .find(|(_, m)| m.name == name)
            .map(|(c, _)| *c)
    }

    pub fn iter(&self) -> impl Iterator<Item = (ClientId, &Member)> {
        self.list.iter().map(|(c, m)| (*c, m))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ClientId, &mut Member)> {
        self.list.iter_mut().map(|(c, m)| (*c, m))
    }

    pub fn ids(&self) -> Vec<ClientId> {
        self.list.iter().map(|(c, _)| *c).collect()
    }

    pub fn states(&self) -> Vec<UserState> {
        self.list.iter().map(|(_, m)| m.state()).collect()
    }
}
