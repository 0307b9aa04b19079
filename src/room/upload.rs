//! The admin's initial upload (SERVER_SNAPSHOT INIT / SET / END) and the
//! creation of datablocks.

use super::*;

impl Room {
    /// SERVER_SNAPSHOT INIT / SET / END from an admin uploading the scene.
    pub fn upload(
        &mut self,
        id: ClientId,
        step: UploadStep,
        req_id: Option<u64>,
        block: Option<(BlockSpec, Bytes)>,
    ) -> Result<Effects, RoomError> {
        let member = self.members.get(id).ok_or_else(not_member)?;
        let mut fx = Effects::default();
        let answer = |status, refusal: Option<(ErrorCode, String)>, datablocks| {
            let (code, reason) = refusal.unzip();
            ServerMessage::ServerSnapshot {
                id: req_id,
                step,
                status,
                code,
                reason,
                datablocks,
            }
        };
        match step {
            UploadStep::Init => {
                let refusal = if !member.admin {
                    Some((
                        ErrorCode::NotAdmin,
                        "only an admin may upload the initial scene".to_owned(),
                    ))
                } else {
                    match (self.state, self.uploader.and_then(|u| self.members.get(u))) {
                        (SessionState::Waiting, _) => None,
                        (SessionState::SrvSync, up) => Some((
                            ErrorCode::UploadInProgress,
                            match up {
                                Some(up) => format!("{} is already uploading the scene", up.name),
                                None => "an upload is in progress".to_owned(),
                            },
                        )),
                        (SessionState::Active, _) => Some((
                            ErrorCode::AlreadyInitialised,
                            "the session already has a scene".to_owned(),
                        )),
                    }
                };
                if let Some(refusal) = refusal {
                    fx.reply(id, &answer(UploadStatus::Rejected, Some(refusal), None));
                    return Ok(fx);
                }
                self.state = SessionState::SrvSync;
                self.uploader = Some(id);
                self.record(&mut fx, || Change::State(SessionState::SrvSync));
                if let Some(m) = self.members.get_mut(id) {
                    m.status = UserStatus::Uploading;
                }
                fx.presence_changed = true;
                fx.reply(id, &answer(UploadStatus::Accepted, None, None));
            }
            UploadStep::Set => {
                self.check_uploader(id)?;
                let (spec, payload) = block.ok_or_else(|| {
                    RoomError::new(ErrorCode::InvalidMessage, "SET needs a datablock")
                })?;
                let name = member.name.clone();
                let uuid = spec.uuid.clone();
                self.create(&name, spec, payload)?;
                self.record_put(&mut fx, &uuid);
            }
            UploadStep::End => {
                self.check_uploader(id)?;
                self.state = SessionState::Active;
                self.uploader = None;
                self.record(&mut fx, || Change::State(SessionState::Active));
                if let Some(m) = self.members.get_mut(id) {
                    m.status = UserStatus::Active;
                    m.subscribed = true;
                    m.download = None;
                }
                let count = self.repository.len() as u64;
                tracing::info!(
                    datablocks = count,
                    bytes = self.repository.bytes(),
                    "initial upload complete; session is ACTIVE"
                );
                fx.reply(id, &answer(UploadStatus::Done, None, Some(count)));
                let waiting: Vec<ClientId> = self
                    .members
                    .iter_mut()
                    .filter(|(other, m)| *other != id && m.subscribed)
                    .map(|(other, _)| other)
                    .collect();
                for other in waiting {
                    self.start_download(other, &mut fx);
                }
                fx.presence_changed = true;
            }
        }
        Ok(fx)
    }

    fn check_uploader(&self, id: ClientId) -> Result<(), RoomError> {
        if self.uploader == Some(id) {
            Ok(())
        } else {
            Err(RoomError::new(
                ErrorCode::NoUpload,
                "no upload in progress from this client; send SERVER_SNAPSHOT INIT first",
            ))
        }
    }

    /// Adds a new datablock for `user` after checking it.
    pub(super) fn create(
        &mut self,
        user: &str,
        spec: BlockSpec,
        payload: Bytes,
    ) -> Result<(), RoomError> {
        if self.repository.contains(&spec.uuid) {
            return Err(RoomError::new(
                ErrorCode::DuplicateDatablock,
                format!("datablock {} already exists", spec.uuid),
            ));
        }
        let type_id = spec.type_id.ok_or_else(|| {
            RoomError::new(
                ErrorCode::InvalidMessage,
                format!("new datablock {} needs a type_id", spec.uuid),
            )
        })?;
        let owner = match spec.owner.as_deref() {
            None => user.to_owned(),
            Some(o) if o == COMMON || o == user => o.to_owned(),
            Some(o) => {
                return Err(RoomError::new(
                    ErrorCode::InvalidMessage,
                    format!("a new datablock belongs to its creator or {COMMON}, not {o:?}"),
                ));
            }
        };
        self.check_room_bytes(0, payload.len())?;
        if self.repository.len() >= self.limits.max_datablocks {
            return Err(RoomError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the session holds the maximum of {} datablocks",
                    self.limits.max_datablocks
                ),
            ));
        }
        if owner != COMMON {
            tracing::debug!(
                room = %self.name,
                datablock = %spec.uuid,
                owner = %owner,
                "ownership: a new datablock is held by its creator"
            );
        }
        self.repository.insert(
            spec.uuid,
            type_id,
            owner,
            spec.deps.unwrap_or_default(),
            Content::from_encoded(payload),
        );
        Ok(())
    }

    /// Whether `id` may upload a datablock now (checked when a chunked SET
    /// is announced, before its data arrives).
    pub fn can_upload(&self, id: ClientId) -> Result<(), RoomError> {
        self.members.get(id).ok_or_else(not_member)?;
        self.check_uploader(id)
    }
}
