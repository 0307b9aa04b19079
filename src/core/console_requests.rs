//! Answers to the admin console: users, status, rooms, kick, close, save.

use super::rooms::{DEFAULT_ROOM, dir_name};
use super::{ConsoleRequest, Core, StatusReport, backups, kick_reason};

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
                    None => Ok(self
                        .rooms
                        .names()
                        .into_iter()
                        .filter_map(|name| {
                            let users = self.rooms.get(&name)?.room.users();
                            Some(users.into_iter().map(move |u| (name.to_string(), u)))
                        })
                        .flatten()
                        .collect()),
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
                        let path = path.unwrap_or_else(|| {
                            backups::new_path(
                                &self.config.backup_dir(),
                                &format!("session-{}", dir_name(&room)),
                            )
                        });
                        backups::save_in_background(image, path, move |result| {
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
