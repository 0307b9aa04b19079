//! The console's `reset [ROOM]`: the room's users are disconnected, its
//! scene is written to a backup off the core's thread, and only once the
//! backup is on disk is the room emptied (in memory and in its record). If
//! the backup cannot be written, nothing is reset.

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::backups::{self, Target};
use super::rooms::dir_name;
use super::{Core, ResetDone, SavedFile};
use crate::protocol::SessionState;
use crate::room::Room;
use crate::store::Change;

/// A reset whose backup is being written.
pub(super) struct PendingReset {
    room: String,
    users: usize,
    saving: JoinHandle<Result<SavedFile, String>>,
    reply: oneshot::Sender<Result<ResetDone, String>>,
}

/// Waits for the pending reset's backup (never, without one).
pub(super) async fn backup_written(
    pending: &mut Option<PendingReset>,
) -> Result<SavedFile, String> {
    match pending {
        Some(p) => match (&mut p.saving).await {
            Ok(result) => result,
            Err(e) => Err(format!("the backup stopped: {e}")),
        },
        None => std::future::pending().await,
    }
}

impl Core {
    /// Starts resetting `room`: disconnects its users and writes its scene
    /// to a backup, then [`Self::finish_reset`] empties it.
    pub(super) async fn start_reset(
        &mut self,
        room: String,
        reply: oneshot::Sender<Result<ResetDone, String>>,
    ) {
        if self.reset.is_some() {
            let _ = reply.send(Err(
                "another reset is being done; try again once it has finished".into(),
            ));
            return;
        }
        let Some(entry) = self.rooms.get_mut(&room) else {
            let _ = reply.send(Err(format!("no room named {room:?}")));
            return;
        };
        // Taken before anyone leaves, so that it is the scene as it was.
        let image = entry.room.image();
        let users = entry.room.client_ids();
        let why = format!(
            "room {room} was reset by the server admin; its scene was kept as a backup; join again to start a new session"
        );
        for id in &users {
            self.disconnect(*id, &why).await;
        }
        match image {
            Some(image) => {
                let path = backups::new_path(
                    &self.config.backup_dir(),
                    &format!("before-reset-{}", dir_name(&room)),
                );
                let saving = tokio::task::spawn_blocking(move || {
                    backups::save_to(&image, &Target::InBackups(path))
                });
                self.reset = Some(PendingReset {
                    room,
                    users: users.len(),
                    saving,
                    reply,
                });
            }
            // No complete scene: nothing to keep.
            None => {
                let closed = self.empty_room(&room, None).await;
                let _ = reply.send(Ok(ResetDone {
                    backup: None,
                    users: users.len(),
                    closed,
                }));
            }
        }
    }

    /// The backup of a pending reset is written (or failed): empties the
    /// room, or leaves it as it is.
    pub(super) async fn finish_reset(&mut self, saved: Result<SavedFile, String>) {
        let Some(PendingReset {
            room, users, reply, ..
        }) = self.reset.take()
        else {
            return;
        };
        match saved {
            Ok(saved) => {
                let closed = self.empty_room(&room, Some(&saved)).await;
                let _ = reply.send(Ok(ResetDone {
                    backup: Some(saved.path),
                    users,
                    closed,
                }));
            }
            Err(e) => {
                tracing::error!(
                    room,
                    "reset abandoned: the backup could not be written: {e}"
                );
                let _ = reply.send(Err(format!(
                    "the backup could not be written, so nothing was reset (its users were disconnected and may join again): {e}"
                )));
            }
        }
    }

    /// Empties `room`: anyone who joined since the reset began is
    /// disconnected too, then the room waits for a new upload, with its
    /// settings (password, keep-open) kept. Returns true when the room had
    /// closed instead, its last user gone and nothing keeping it.
    async fn empty_room(&mut self, room: &str, saved: Option<&SavedFile>) -> bool {
        let late: Vec<_> = match self.rooms.get(room) {
            Some(entry) => entry.room.client_ids(),
            None => return true,
        };
        for id in late {
            self.disconnect(id, "the room was reset by the server admin; join again")
                .await;
        }
        let limits = self.config.limits.clone();
        let Some(entry) = self.rooms.get_mut(room) else {
            return true;
        };
        let mut fresh = Room::new(limits);
        fresh.set_name(room);
        fresh.set_recording(entry.store.is_some());
        entry.room = fresh;
        entry.changed_since_autosave = false;
        if let Some(store) = &mut entry.store {
            self.recording_open = true;
            store.record([Change::Clear, Change::State(SessionState::Waiting)]);
        }
        match saved {
            Some(saved) => tracing::info!(
                room,
                backup = %saved.path.display(),
                datablocks = saved.summary.datablocks,
                "room reset from the console; its scene was saved first; it waits for a new upload"
            ),
            None => tracing::info!(
                room,
                "room reset from the console (it had no complete scene); it waits for a new upload"
            ),
        }
        false
    }
}
