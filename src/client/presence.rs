//! The room's user list, kept from the whole list (CLIENTS_STATE) and the
//! changes (PRESENCE), with the protocol's rules (section 8).

use rmpv::Value;

use crate::protocol::{ServerMessage, UserState};

/// Applies a CLIENTS_STATE (replaces the list) or a PRESENCE (changes it).
pub fn apply(users: &mut Vec<UserState>, message: ServerMessage) {
    match message {
        ServerMessage::ClientsState { users: all } => *users = all,
        ServerMessage::Presence {
            left,
            joined,
            changed,
            latency,
        } => {
            users.retain(|u| !left.contains(&u.name));
            for user in joined {
                users.retain(|u| u.name != user.name);
                users.push(user);
            }
            for change in changed {
                let Some(user) = users.iter_mut().find(|u| u.name == change.name) else {
                    continue;
                };
                if let Some(status) = change.status {
                    user.status = status;
                }
                if let Some(Value::Map(keys)) = change.metadata {
                    merge(&mut user.metadata, keys);
                }
            }
            for user in users.iter_mut() {
                if let Some(ms) = latency.get(&user.name) {
                    user.latency_ms = Some(*ms);
                }
            }
        }
        _ => {}
    }
}

/// Merges changed keys into a metadata map: a value replaces the key's (in
/// place) or is added at the end; nil removes the key.
fn merge(metadata: &mut Value, keys: Vec<(Value, Value)>) {
    if !metadata.is_map() {
        *metadata = Value::Map(Vec::new());
    }
    let Value::Map(entries) = metadata else {
        return;
    };
    for (key, value) in keys {
        let slot = entries.iter().position(|(k, _)| *k == key);
        match (slot, value.is_nil()) {
            (Some(i), true) => {
                entries.remove(i);
            }
            (Some(i), false) => {
                if let Some(entry) = entries.get_mut(i) {
                    entry.1 = value;
                }
            }
            (None, true) => {}
            (None, false) => entries.push((key, value)),
        }
    }
}
