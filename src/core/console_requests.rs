//! Answers to the admin console: users, status, rooms, locks, kick, close,
//! save, reset; and the report the metrics and the JSON status show.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::rooms::{DEFAULT_ROOM, dir_name};
use super::{ConsoleRequest, Core, StatusReport, backups, kick_reason};
use crate::protocol::{RoomInfo, UserState};

/// A datablock held by a user, for `locks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub room: String,
    pub user: String,
    pub uuid: String,
    pub type_id: String,
    /// When the user got it.
    pub since: SystemTime,
}

/// What a reset did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetDone {
    /// The backup of the scene; `None` when the room had no complete scene.
    pub backup: Option<PathBuf>,
    /// Users disconnected.
    pub users: usize,
    /// The room closed, as nobody kept it open once its users were gone.
    pub closed: bool,
}

/// The whole state at a glance: what `status`, `rooms`, `users` and
/// `locks` show.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub uptime: Duration,
    pub rooms: Vec<RoomInfo>,
    /// Each user with their room.
    pub users: Vec<(String, UserState)>,
    /// Empty unless asked for.
    pub locks: Vec<Lock>,
    /// How many datablocks users hold, in all rooms.
    pub lock_count: usize,
}

impl Core {
    pub(super) async fn console(&mut self, request: ConsoleRequest) {
        match request {
            ConsoleRequest::Users { room, reply } => {
                let result = match room {
                    Some(room) => match self.rooms.get(&room) {
                        Some(entry) => Ok(entry
                            .room
                            .users()
                            .into_iter()
                            .map(|u| (room.clone(), u))
                            .collect()),
                        None => Err(format!("no room named {room:?}")),
                    },
                    None => Ok(self.all_users()),
                };
                let _ = reply.send(result);
            }
            ConsoleRequest::Status { room, reply } => {
                let uptime = self.started.elapsed();
                let reports: Vec<StatusReport> = self
                    .rooms
                    .infos(self.config.server_password.is_some())
                    .into_iter()
                    .filter(|info| room.as_deref().is_none_or(|r| r == info.name))
                    .map(|info| StatusReport {
                        room: info.name,
                        state: info.state,
                        datablocks: info.datablocks as usize,
                        bytes: info.bytes as usize,
                        users: info.users_online as usize,
                        keep_open: info.keep_open,
                        uptime,
                    })
                    .collect();
                let result = match (room, reports.is_empty()) {
                    (Some(room), true) => Err(format!("no room named {room:?}")),
                    _ => Ok(reports),
                };
                let _ = reply.send(result);
            }
            ConsoleRequest::Rooms(reply) => {
                let _ = reply.send(self.rooms.infos(self.config.server_password.is_some()));
            }
            ConsoleRequest::Close {
                room,
                reason,
                reply,
            } => {
                let result = self.close_room(&room, reason.as_deref()).await;
                let _ = reply.send(result);
            }
            ConsoleRequest::Save { path, room, reply } => {
                let room = room.unwrap_or_else(|| DEFAULT_ROOM.to_owned());
                let Some(entry) = self.rooms.get_mut(&room) else {
                    let _ = reply.send(Err(format!("no room named {room:?}")));
                    return;
                };
                match entry.room.image() {
                    Some(image) => {
                        let target = match path {
                            Some(path) => backups::Target::Named(path),
                            None => backups::Target::InBackups(backups::new_path(
                                &self.config.backup_dir(),
                                &format!("session-{}", dir_name(&room)),
                            )),
                        };
                        backups::save_in_background(image, target, move |result| {
                            let _ = reply.send(result);
                        });
                    }
                    None => {
                        let _ = reply.send(Err(format!(
                            "room {room} is {}: there is no scene to save yet",
                            entry.room.state()
                        )));
                    }
                }
            }
            ConsoleRequest::Locks { first, user, reply } => {
                let _ = reply.send(self.locks(first, user));
            }
            ConsoleRequest::Reset { room, reply } => {
                let room = room.unwrap_or_else(|| DEFAULT_ROOM.to_owned());
                self.start_reset(room, reply).await;
            }
            ConsoleRequest::Report { locks, reply } => {
                let _ = reply.send(self.report(locks));
            }
            ConsoleRequest::Kick {
                user,
                room,
                reason,
                reply,
            } => {
                // `kick NAME ROOM REASON`: the word after the name is a room
                // when a room has that name, else the reason's first word.
                let (room, reason) = match (room, reason) {
                    (None, Some(rest)) => {
                        let (first, more) = rest
                            .split_once(char::is_whitespace)
                            .map_or((rest.as_str(), ""), |(f, m)| (f, m.trim()));
                        if self.rooms.get(first).is_some() {
                            (
                                Some(first.to_owned()),
                                Some(more.to_owned()).filter(|m| !m.is_empty()),
                            )
                        } else {
                            (None, Some(rest))
                        }
                    }
                    other => other,
                };
                let _ = reply.send(self.console_kick(&user, room.as_deref(), reason).await);
            }
        }
    }

    /// Every user, with their room.
    fn all_users(&self) -> Vec<(String, UserState)> {
        self.rooms
            .names()
            .into_iter()
            .filter_map(|name| {
                let users = self.rooms.get(&name)?.room.users();
                Some(users.into_iter().map(move |u| (name.to_string(), u)))
            })
            .flatten()
            .collect()
    }

    /// The datablocks held in `room` (every room when `None`), by `user`
    /// (anyone when `None`), the longest held first.
    fn held(&self, room: Option<&str>, user: Option<&str>) -> Vec<Lock> {
        let mut locks: Vec<Lock> = self
            .rooms
            .names()
            .into_iter()
            .filter(|name| room.is_none_or(|r| r == &**name))
            .filter_map(|name| {
                let entry = self.rooms.get(&name)?;
                Some(
                    entry
                        .room
                        .locks()
                        .into_iter()
                        .filter(|l| user.is_none_or(|u| u == l.owner))
                        .map(move |l| Lock {
                            room: name.to_string(),
                            user: l.owner,
                            uuid: l.uuid,
                            type_id: l.type_id,
                            since: l.since,
                        }),
                )
            })
            .flatten()
            .collect();
        locks.sort_by_key(|l| l.since);
        locks
    }

    /// `locks [ROOM] [USER]`: one word is a room when a room has that name,
    /// else a user.
    fn locks(&self, first: Option<String>, user: Option<String>) -> Result<Vec<Lock>, String> {
        match (first, user) {
            (None, _) => Ok(self.held(None, None)),
            (Some(room), Some(user)) => {
                if self.rooms.get(&room).is_none() {
                    return Err(format!("no room named {room:?}"));
                }
                Ok(self.held(Some(&room), Some(&user)))
            }
            (Some(word), None) if self.rooms.get(&word).is_some() => {
                Ok(self.held(Some(&word), None))
            }
            (Some(word), None) => {
                let known = self.all_users().iter().any(|(_, u)| u.name == word);
                if !known {
                    return Err(format!("no room or connected user named {word:?}"));
                }
                Ok(self.held(None, Some(&word)))
            }
        }
    }

    fn report(&self, with_locks: bool) -> Report {
        let rooms = self.rooms.infos(self.config.server_password.is_some());
        let lock_count = self
            .rooms
            .names()
            .iter()
            .filter_map(|name| self.rooms.get(name))
            .map(|entry| entry.room.repository().held().count())
            .sum();
        Report {
            uptime: self.started.elapsed(),
            rooms,
            users: self.all_users(),
            locks: if with_locks {
                self.held(None, None)
            } else {
                Vec::new()
            },
            lock_count,
        }
    }

    /// Kicks `user` from `room`, or from the one room they are in when no
    /// room is named.
    async fn console_kick(
        &mut self,
        user: &str,
        room: Option<&str>,
        reason: Option<String>,
    ) -> Result<String, String> {
        let candidates: Vec<String> = match room {
            Some(room) => {
                if self.rooms.get(room).is_none() {
                    return Err(format!("no room named {room:?}"));
                }
                vec![room.to_owned()]
            }
            None => self
                .rooms
                .names()
                .into_iter()
                .filter(|name| {
                    self.rooms
                        .get(name)
                        .is_some_and(|e| e.room.find_user(user).is_some())
                })
                .map(|name| name.to_string())
                .collect(),
        };
        let room = match candidates.as_slice() {
            [one] => one.clone(),
            [] => return Err(format!("no user named {user:?} is in any room")),
            many => {
                return Err(format!(
                    "users named {user:?} are in rooms {}; say which: kick {user} ROOM",
                    many.join(", ")
                ));
            }
        };
        let victim = self
            .rooms
            .get(&room)
            .ok_or_else(|| format!("no room named {room:?}"))?
            .room
            .kick_target(None, user)
            .map_err(|e| e.message)?;
        let why = kick_reason("the server admin", reason.as_deref());
        tracing::info!(user, room, "kicked from the console");
        self.disconnect(victim, &why).await;
        Ok(room)
    }
}
