//! The rooms a server hosts: each has its own scene, users, settings and
//! record in the data directory. Joining, leaving, switching, creating and
//! closing rooms, and the limits across rooms.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rmpv::Value;

use super::room_password::RoomPassword;
use super::{Core, protocol_error};
use crate::config::{Config, Limits};
use crate::protocol::{AuthStatus, ErrorCode, RoomInfo, SessionState, check_name};
use crate::room::{ClientId, Room, RoomError};
use tokio::sync::Notify;

use crate::store::Change;
use crate::store::db::{Store, StoreError};
use crate::store::recorder::Recorder;

/// The room of clients that name none. It always exists.
pub const DEFAULT_ROOM: &str = "default";
/// Where rooms other than the default one keep their records, in the data
/// directory.
const ROOMS_DIR: &str = "rooms";

/// One room and what the server keeps with it.
pub struct RoomEntry {
    pub room: Room,
    /// Its record, unless the server runs in memory.
    pub store: Option<Recorder>,
    /// Stays when its last user leaves.
    pub keep_open: bool,
    /// Needed to join, besides the server's password.
    pub password: Option<RoomPassword>,
    /// Changed since its last autosave.
    pub changed_since_autosave: bool,
    /// Its users are to be told of changes to the user list.
    pub presence_due: bool,
    /// What its presence messages may still send.
    pub presence_budget: Budget,
}

/// Bytes a room's presence messages may send (each message counted once
/// per recipient): refilled at the configured rate, up to one second's
/// worth. A message may overdraw it; the debt then delays the next one,
/// so over any stretch of time the room sends at most the rate, plus one
/// message.
#[derive(Debug, Default)]
pub struct Budget {
    /// Bytes left (negative: owed), as of `at`.
    bytes: f64,
    at: Option<std::time::Instant>,
}

impl Budget {
    /// How long to wait before sending, at `rate` bytes a second: None
    /// when the budget is not in debt.
    pub fn wait(&mut self, now: std::time::Instant, rate: usize) -> Option<std::time::Duration> {
        let rate = rate as f64;
        let elapsed = self
            .at
            .map_or(1.0, |at| now.duration_since(at).as_secs_f64());
        self.bytes = (self.bytes + elapsed * rate).min(rate);
        self.at = Some(now);
        (self.bytes < 0.0).then(|| std::time::Duration::from_secs_f64(-self.bytes / rate))
    }

    pub fn spend(&mut self, bytes: usize) {
        self.bytes -= bytes as f64;
    }
}

impl RoomEntry {
    pub fn new(room: Room, store: Option<Recorder>) -> Self {
        Self {
            room,
            store,
            keep_open: false,
            password: None,
            changed_since_autosave: false,
            presence_due: false,
            presence_budget: Budget::default(),
        }
    }

    /// Records a room setting, when the room is recorded.
    fn record_setting(&mut self, key: &str, value: Option<String>) {
        if let Some(store) = &mut self.store {
            store.record([Change::Setting {
                key: key.to_owned(),
                value,
            }]);
        }
    }
}

/// Every room, by name.
#[derive(Default)]
pub struct Rooms {
    entries: BTreeMap<Arc<str>, RoomEntry>,
    /// Notified by the rooms' recorders each time they commit a batch in
    /// the background.
    wake: Arc<Notify>,
}

impl Rooms {
    /// What the rooms' recorders notify.
    pub fn wake(&self) -> &Arc<Notify> {
        &self.wake
    }

    pub fn insert(&mut self, name: &str, mut entry: RoomEntry) {
        entry.room.set_name(name);
        self.entries.insert(Arc::from(name), entry);
    }

    pub fn get(&self, name: &str) -> Option<&RoomEntry> {
        self.entries.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut RoomEntry> {
        self.entries.get_mut(name)
    }

    /// The shared name of a room, for sessions to point at.
    pub fn key(&self, name: &str) -> Option<Arc<str>> {
        self.entries.get_key_value(name).map(|(k, _)| k.clone())
    }

    /// How many rooms there are (never zero once the server runs: the
    /// default room always exists).
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    pub fn names(&self) -> Vec<Arc<str>> {
        self.entries.keys().cloned().collect()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut RoomEntry)> {
        self.entries.iter_mut()
    }

    pub fn remove(&mut self, name: &str) -> Option<RoomEntry> {
        self.entries.remove(name)
    }

    /// Users, datablocks and bytes in all rooms together.
    pub fn totals(&self) -> (usize, usize, usize) {
        self.entries.values().fold((0, 0, 0), |(u, d, b), e| {
            let s = e.room.status();
            (u + s.users, d + s.datablocks, b + s.bytes)
        })
    }

    /// The listing SERVER_INFO and the console show: the default room
    /// first, then by name.
    pub fn infos(&self, server_private: bool) -> Vec<RoomInfo> {
        let mut infos: Vec<RoomInfo> = self
            .entries
            .iter()
            .map(|(name, e)| {
                let s = e.room.status();
                RoomInfo {
                    name: name.to_string(),
                    users_online: s.users as u64,
                    private: server_private || e.password.is_some(),
                    state: s.state,
                    datablocks: s.datablocks as u64,
                    bytes: s.bytes as u64,
                    keep_open: e.keep_open || &**name == DEFAULT_ROOM,
                }
            })
            .collect();
        infos.sort_by_key(|i| i.name != DEFAULT_ROOM);
        infos
    }
}

/// Opens every recorded room in the data directory: the default room in
/// the directory itself, the others under `rooms/`.
pub fn open_recorded(
    config: &Config,
    dir: &Path,
    wake: &Arc<Notify>,
) -> Result<Vec<(String, RoomEntry)>, StoreError> {
    let mut found = Vec::new();
    let rooms_dir = dir.join(ROOMS_DIR);
    let listing = match std::fs::read_dir(&rooms_dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(source) => {
            return Err(StoreError::Directory {
                dir: rooms_dir,
                source,
            });
        }
    };
    let mut dirs: Vec<PathBuf> = listing
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    // Records of rooms closed just before the last stop, not yet removed.
    dirs.retain(|p| {
        let closing = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(CLOSING_PREFIX));
        if closing {
            tracing::info!(dir = %p.display(), "removing the record of a room closed before the last stop");
            remove_dir(p);
        }
        !closing
    });
    dirs.sort();
    for room_dir in dirs {
        let (store, recovered) = Store::open(&room_dir, config.durability)?;
        let Some(name) = store.setting("name")? else {
            return Err(StoreError::Damaged {
                file: store.file().to_owned(),
                detail: "the room's record has no name".into(),
            });
        };
        let room = match recovered.image {
            Some(image) => Room::restore(config.limits.clone(), image),
            None => Room::new(config.limits.clone()),
        };
        let mut entry = RoomEntry::new(room, None);
        entry.keep_open = store.setting("keep_open")?.as_deref() == Some("true");
        let recorded = store.setting("password")?;
        entry.store = Some(Recorder::spawn(store, wake.clone())?);
        if let Some(text) = recorded {
            let (password, rewrite) = RoomPassword::from_record(&text);
            if rewrite {
                entry.record_setting("password", Some(password.recorded().to_owned()));
                if let Some(store) = &mut entry.store {
                    store.commit_and_wait()?;
                }
                tracing::info!(room = name, "the room's password is now recorded hashed");
            }
            entry.password = Some(password);
        }
        tracing::info!(
            room = name,
            datablocks = entry.room.status().datablocks,
            "restored a recorded room"
        );
        found.push((name, entry));
    }
    Ok(found)
}

/// A closed room's directory is renamed to this prefix and a number, then
/// removed in the background. Room directories never start with `.`
/// ([`dir_name`]), so the two cannot meet, and one left by a stop before
/// its removal ended is removed at the next start.
const CLOSING_PREFIX: &str = ".closing-";

/// Removes a closed room's record without holding the core: its recorder
/// may still be writing a large upload (seconds), and deleting a gigabyte
/// of files takes time too. The recorder is abandoned and the directory
/// renamed out of the way, at once, so a room of the same name can be
/// created and recorded right away; a thread of its own waits for the
/// recorder and removes the directory.
fn remove_record(room: &str, store: Recorder) {
    static CLOSED: AtomicU64 = AtomicU64::new(0);
    let dir = store.dir().to_owned();
    let trash = dir.with_file_name(format!(
        "{CLOSING_PREFIX}{}-{}",
        std::process::id(),
        CLOSED.fetch_add(1, Ordering::Relaxed)
    ));
    // Abandoned first, so that whatever fails once the directory has moved
    // is nobody's concern.
    let writer = store.abandon();
    if let Err(e) = std::fs::rename(&dir, &trash) {
        tracing::warn!(room, dir = %dir.display(), "cannot move the closed room's data aside ({e}); removing it in place");
        // The recorder ends first, so nothing writes into the directory
        // after.
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        remove_dir(&dir);
        return;
    }
    let removal = std::thread::Builder::new()
        .name("room-removal".into())
        .spawn(move || {
            if let Some(writer) = writer {
                let _ = writer.join();
            }
            remove_dir(&trash);
        });
    if let Err(e) = removal {
        tracing::warn!(dir = %dir.display(), "cannot start a thread to remove the closed room's data ({e}); it is removed at the next start");
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), "cannot remove a closed room's data: {e}");
    }
}

/// A room's directory name: its name with every byte other than ASCII
/// letters, digits and `_` written `%XX`, so any name maps to one safe,
/// distinct name (no `/`, `.`, `-` or control characters).
pub fn dir_name(room: &str) -> String {
    let mut out = String::with_capacity(room.len());
    for b in room.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a client asks when it joins a room.
pub struct JoinRequest {
    pub room: Option<String>,
    pub room_password: Option<String>,
    pub metadata: Option<Value>,
}

/// The outcome of joining.
pub struct Joined {
    pub room: Arc<str>,
    pub status: AuthStatus,
    pub state: SessionState,
    pub created: bool,
    pub admin: bool,
}

impl Core {
    /// Checks that `user` may enter room `name` now: it exists and the
    /// password matches and the room has space, or it may be created.
    /// `new_user` counts the user against the server's total (a client
    /// switching rooms is already counted).
    pub(super) fn check_can_enter(
        &self,
        user: &str,
        server_admin: bool,
        name: &str,
        password: Option<&str>,
        metadata: Option<&Value>,
        new_user: bool,
    ) -> Result<(), RoomError> {
        check_name("room name", name).map_err(|e| protocol_error(e.code(), e.to_string()))?;
        let limits = &self.config.limits;
        let (users, _, _) = self.rooms.totals();
        if new_user && users >= limits.max_users_total {
            return Err(protocol_error(
                ErrorCode::LimitExceeded,
                format!(
                    "the server is full ({} users in all rooms)",
                    limits.max_users_total
                ),
            ));
        }
        match self.rooms.get(name) {
            Some(entry) => {
                if let Some(expected) = &entry.password
                    && !expected.matches(password)
                {
                    return Err(protocol_error(
                        ErrorCode::WrongRoomPassword,
                        format!("wrong password for room {name:?}"),
                    ));
                }
                entry.room.can_join(user, metadata)
            }
            None if !server_admin && !self.config.open_rooms => Err(protocol_error(
                ErrorCode::UnknownRoom,
                format!("there is no room named {name:?}, and only admins may create rooms here"),
            )),
            None if self.rooms.count() >= limits.max_rooms => Err(protocol_error(
                ErrorCode::LimitExceeded,
                format!(
                    "the server has the most rooms it allows ({})",
                    limits.max_rooms
                ),
            )),
            None => Room::new(limits.clone()).can_join(user, metadata),
        }
    }

    /// Adds the client to the room `request` names, creating it when
    /// missing and allowed. Nothing changes when this fails.
    pub(super) fn enter_room(
        &mut self,
        client: ClientId,
        user: &str,
        server_admin: bool,
        request: JoinRequest,
        new_user: bool,
    ) -> Result<Joined, RoomError> {
        let name = request.room.unwrap_or_else(|| DEFAULT_ROOM.to_owned());
        self.check_can_enter(
            user,
            server_admin,
            &name,
            request.room_password.as_deref(),
            request.metadata.as_ref(),
            new_user,
        )?;
        let created = self.prepare_room(&name, request.room_password)?;
        let admin = server_admin || created;
        let (key, entry) = self
            .rooms
            .key(&name)
            .zip(self.rooms.get_mut(&name))
            .ok_or_else(|| protocol_error(ErrorCode::UnknownRoom, "the room vanished"))?;
        let status = match entry.room.join(client, user, admin, request.metadata) {
            Ok(status) => status,
            Err(e) => {
                // Checked above, so not expected; never leave an empty
                // room behind for it.
                if created {
                    self.remove_room(&name);
                }
                return Err(e);
            }
        };
        let state = entry.room.state();
        if let Some(session) = self.sessions.get_mut(&client) {
            session.room = Some(key.clone());
            self.moved = true;
        }
        self.presence_changed(&key);
        Ok(Joined {
            room: key,
            status,
            state,
            created,
            admin,
        })
    }

    /// Creates room `name` if it does not exist (the caller checked it
    /// may); returns whether it did.
    pub(super) fn prepare_room(
        &mut self,
        name: &str,
        password: Option<String>,
    ) -> Result<bool, RoomError> {
        if self.rooms.get(name).is_some() {
            return Ok(false);
        }
        self.create_room(name, password)?;
        Ok(true)
    }

    /// A new, empty room, recorded in its own directory when the server
    /// records sessions.
    fn create_room(&mut self, name: &str, password: Option<String>) -> Result<(), RoomError> {
        let password = password.filter(|p| !p.is_empty());
        let store = match self.data_dir() {
            Some(dir) => {
                let room_dir = dir.join(ROOMS_DIR).join(dir_name(name));
                // A leftover of a room closed while the server was down.
                if room_dir.exists() {
                    let _ = std::fs::remove_dir_all(&room_dir);
                }
                let recorder = Store::open(&room_dir, self.config.durability)
                    .and_then(|(store, _)| Recorder::spawn(store, self.rooms.wake().clone()))
                    .map_err(|e| {
                        tracing::error!("{e}");
                        protocol_error(
                            ErrorCode::LimitExceeded,
                            "the server cannot record a new room now",
                        )
                    })?;
                Some(recorder)
            }
            None => None,
        };
        let mut entry = RoomEntry::new(Room::new(self.config.limits.clone()), store);
        entry.room.set_recording(entry.store.is_some());
        entry.password = password.as_deref().map(RoomPassword::new);
        let hashed = entry.password.as_ref().map(|p| p.recorded().to_owned());
        entry.record_setting("name", Some(name.to_owned()));
        entry.record_setting("password", hashed);
        self.recording_open |= entry.store.is_some();
        tracing::info!(room = name, "room created");
        self.rooms.insert(name, entry);
        Ok(())
    }

    /// Where rooms are recorded, unless the server runs in memory.
    fn data_dir(&self) -> Option<PathBuf> {
        (!self.config.in_memory).then(|| self.config.data_dir())
    }

    /// Removes a client from its room (it stays connected) and closes the
    /// room if that was its last user and nothing keeps it.
    pub(super) async fn leave_room(&mut self, client: ClientId) {
        let Some(room) = self.sessions.get_mut(&client).and_then(|s| {
            s.transfers.clear();
            s.room.take()
        }) else {
            return;
        };
        self.moved = true;
        let Some(entry) = self.rooms.get_mut(&room) else {
            return;
        };
        let effects = entry.room.leave(client);
        self.presence_changed(&room);
        Box::pin(self.apply(&room, effects)).await;
        self.close_if_abandoned(&room);
    }

    /// Closes a room nobody is in, unless it is the default room, an admin
    /// kept it open, or the configuration keeps every room.
    fn close_if_abandoned(&mut self, room: &str) {
        let Some(entry) = self.rooms.get(room) else {
            return;
        };
        if room == DEFAULT_ROOM
            || !entry.room.is_empty()
            || entry.keep_open
            || self.config.keep_rooms
        {
            return;
        }
        self.remove_room(room);
        tracing::info!(room, "the last user left; room closed and its data removed");
    }

    /// Drops a room and its record.
    pub(super) fn remove_room(&mut self, room: &str) {
        let Some(mut entry) = self.rooms.remove(room) else {
            return;
        };
        if let Some(store) = entry.store.take() {
            remove_record(room, store);
        }
        // A large scene is freed off the core (`memory::release`).
        let bytes = entry.room.status().bytes;
        crate::memory::release(entry, bytes);
    }

    /// The console's `close ROOM`: disconnects its users and removes it.
    pub(super) async fn close_room(
        &mut self,
        room: &str,
        reason: Option<&str>,
    ) -> Result<usize, String> {
        if room == DEFAULT_ROOM {
            return Err("the default room cannot be closed".into());
        }
        let Some(entry) = self.rooms.get(room) else {
            return Err(format!("no room named {room:?}"));
        };
        let users = entry.room.client_ids();
        let why = match reason {
            Some(r) if !r.trim().is_empty() => {
                format!("room {room} closed by the server admin: {r}")
            }
            _ => format!("room {room} closed by the server admin"),
        };
        for id in &users {
            self.disconnect(*id, &why).await;
        }
        self.remove_room(room);
        tracing::info!(room, users = users.len(), "room closed from the console");
        Ok(users.len())
    }

    /// ROOM_SETTINGS from an admin of the client's room.
    pub(super) fn set_keep_open(
        &mut self,
        client: ClientId,
        keep_open: bool,
    ) -> Result<Arc<str>, RoomError> {
        let room = self.room_of(client)?;
        let entry = self.rooms.get_mut(&room).ok_or_else(not_in_room)?;
        if !entry.room.member(client).is_some_and(|m| m.admin) {
            return Err(protocol_error(
                ErrorCode::NotAdmin,
                "only an admin of the room may change its settings",
            ));
        }
        entry.keep_open = keep_open;
        entry.record_setting("keep_open", Some(keep_open.to_string()));
        self.recording_open |= entry.store.is_some();
        tracing::info!(room = %room, keep_open, "room settings changed");
        Ok(room)
    }

    /// The room a client is in.
    pub(super) fn room_of(&self, client: ClientId) -> Result<Arc<str>, RoomError> {
        self.sessions
            .get(&client)
            .and_then(|s| s.room.clone())
            .ok_or_else(not_in_room)
    }

    /// The room a client is in, to act on.
    pub(super) fn room_mut(
        &mut self,
        client: ClientId,
    ) -> Result<(Arc<str>, &mut Room), RoomError> {
        let room = self.room_of(client)?;
        let entry = self.rooms.get_mut(&room).ok_or_else(not_in_room)?;
        Ok((room, &mut entry.room))
    }

    /// Checks the server-wide limits before a datablock is added or grows
    /// by up to `growth` bytes.
    pub(super) fn check_server_totals(
        &self,
        new_datablock: bool,
        growth: usize,
    ) -> Result<(), RoomError> {
        let limits: &Limits = &self.config.limits;
        let (_, datablocks, bytes) = self.rooms.totals();
        if new_datablock && datablocks >= limits.max_datablocks_total {
            return Err(protocol_error(
                ErrorCode::LimitExceeded,
                format!(
                    "the server holds the most datablocks it allows in all rooms ({})",
                    limits.max_datablocks_total
                ),
            ));
        }
        if bytes + growth > limits.max_bytes_total {
            return Err(protocol_error(
                ErrorCode::LimitExceeded,
                format!(
                    "the server would hold more than {} bytes of data in all rooms",
                    limits.max_bytes_total
                ),
            ));
        }
        Ok(())
    }
}

fn not_in_room() -> RoomError {
    protocol_error(
        ErrorCode::NotInRoom,
        "this client is in no room; send JOIN_ROOM first",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_are_safe_and_distinct() {
        assert_eq!(dir_name("Team_1"), "Team_1");
        assert_eq!(dir_name("a b"), "a%20b");
        assert_eq!(dir_name("../x"), "%2E%2E%2Fx");
        assert_eq!(dir_name("a-b"), "a%2Db");
        assert_eq!(dir_name("é"), "%C3%A9");
        assert_ne!(dir_name("a%20b"), dir_name("a b"));
    }
}
