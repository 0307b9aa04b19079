//! Changes to datablocks in a live session: updates and patches, ownership,
//! deletion, and fetching the current state.

use super::*;

/// Patches to one datablock are recorded as such until they add up to more
/// than its data or this, whichever is larger; then its full data is.
const COMPACT_MIN_BYTES: usize = 16 << 10;

impl Room {
    /// Whether `id` may update `uuid` now: the session is live, the
    /// datablock exists for a patch, its owner allows it and `base_revision`
    /// matches. Checked when an update is announced and again when applied.
    pub fn can_update(
        &self,
        id: ClientId,
        uuid: &str,
        patch: bool,
        base_revision: Option<u64>,
    ) -> Result<(), RoomError> {
        let member = self.members.get(id).ok_or_else(not_member)?;
        if self.state != SessionState::Active {
            return Err(RoomError::new(
                ErrorCode::SessionNotActive,
                format!(
                    "the session is {}; updates are accepted once it is ACTIVE",
                    self.state
                ),
            ));
        }
        match self.repository.get(uuid) {
            None if patch => Err(RoomError::new(
                ErrorCode::UnknownDatablock,
                format!("cannot patch unknown datablock {uuid}"),
            )),
            None if base_revision.is_some_and(|r| r != 0) => Err(RoomError::new(
                ErrorCode::StaleRevision,
                format!("datablock {uuid} does not exist (base_revision must be 0 or absent)"),
            )),
            None => Ok(()),
            Some(block) => {
                check_owner(block, uuid, &member.name, false, member.admin)?;
                match base_revision {
                    Some(base) if base != block.revision => Err(RoomError::new(
                        ErrorCode::StaleRevision,
                        format!(
                            "datablock {uuid} is at revision {}, not {base}",
                            block.revision
                        ),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// A live UPDATE: full data or a patch. Applied, then forwarded to every
    /// other subscribed client with the sender's bytes unchanged.
    pub fn update(
        &mut self,
        id: ClientId,
        spec: BlockSpec,
        patch: bool,
        base_revision: Option<u64>,
        payload: Bytes,
    ) -> Result<Effects, RoomError> {
        self.can_update(id, &spec.uuid, patch, base_revision)?;
        let mut fx = Effects::default();
        if !self.repository.contains(&spec.uuid) {
            let user = self.members.get(id).ok_or_else(not_member)?.name.clone();
            let uuid = spec.uuid.clone();
            self.create(&user, spec, payload.clone())?;
            self.record_put(&mut fx, &uuid);
            return self.forward_update(id, &uuid, patch, payload, fx);
        }
        let BlockSpec {
            uuid,
            type_id,
            owner,
            deps,
        } = spec;
        let patch_deps = if self.recording && patch {
            deps.clone()
        } else {
            None
        };
        let Some(block) = self.repository.get(&uuid) else {
            return Err(RoomError::new(
                ErrorCode::UnknownDatablock,
                format!("datablock {uuid} is gone"),
            ));
        };
        if type_id.as_ref().is_some_and(|t| *t != block.type_id) {
            return Err(RoomError::new(
                ErrorCode::InvalidMessage,
                format!(
                    "datablock {uuid} is a {}; its type cannot change",
                    block.type_id
                ),
            ));
        }
        if owner.as_ref().is_some_and(|o| *o != block.owner) {
            return Err(RoomError::new(
                ErrorCode::InvalidMessage,
                "an UPDATE cannot change the owner; send RIGHT",
            ));
        }
        let before = block.content.size();
        let growth = if patch { payload.len() } else { 0 };
        let after = if patch {
            before + growth
        } else {
            payload.len()
        };
        self.check_room_bytes(before, after)?;
        let parsed = if patch {
            let value = decode_value(&payload)
                .map_err(|e| RoomError::new(ErrorCode::PatchFailed, e.to_string()))?;
            Some(
                Patch::from_value(value)
                    .map_err(|e| RoomError::new(ErrorCode::PatchFailed, e.to_string()))?,
            )
        } else {
            None
        };
        let max = self.limits.max_datablock_bytes;
        self.repository
            .edit(&uuid, |b| {
                match &parsed {
                    Some(p) => {
                        // A patch grows the data by at most its own
                        // size; measure exactly only near the limit.
                        if b.content.size_bound() + payload.len() > max
                            && b.content.encoded().len() + payload.len() > max
                        {
                            return Err(RoomError::new(
                                ErrorCode::TooLarge,
                                format!("this patch could grow datablock {uuid} beyond the limit of {max} bytes; send the full data instead"),
                            ));
                        }
                        b.content.apply(p, payload.len()).map_err(|e| {
                            RoomError::new(ErrorCode::PatchFailed, e.to_string())
                        })?;
                    }
                    None => {
                        let old =
                            std::mem::replace(&mut b.content, Content::from_encoded(payload.clone()));
                        let bytes = old.size();
                        crate::memory::release(old, bytes);
                    }
                }
                if let Some(deps) = deps {
                    b.deps = deps;
                }
                b.revision += 1;
                Ok::<(), RoomError>(())
            })
            .unwrap_or(Ok(()))?;
        self.record_edit(&mut fx, &uuid, patch.then_some(&payload), patch_deps);
        self.forward_update(id, &uuid, patch, payload, fx)
    }

    /// Forwards an applied update to every other subscribed client with the
    /// sender's bytes unchanged. An update that fits in one message is
    /// batchable (protocol section 15), and its header is written directly:
    /// this runs once per update at full rate.
    fn forward_update(
        &mut self,
        id: ClientId,
        uuid: &str,
        patch: bool,
        payload: Bytes,
        mut fx: Effects,
    ) -> Result<Effects, RoomError> {
        let sender = &self.members.get(id).ok_or_else(not_member)?.name;
        let Some(block) = self.repository.get(uuid) else {
            return Ok(fx);
        };
        if payload.len() <= self.limits.chunk_bytes {
            self.scratch.clear();
            block
                .fields(uuid)
                .write_update_header(sender, patch, &mut self.scratch);
            let wire = Wire {
                header: Bytes::copy_from_slice(&self.scratch),
                payload: Some(payload),
                batchable: true,
            };
            self.broadcast(Some(id), wire, &mut fx);
            return Ok(fx);
        }
        let (header, sender) = (block.header(uuid), sender.clone());
        let transfer = self.next_transfer;
        self.next_transfer += 1;
        let wires = with_payload(
            |chunk| ServerMessage::Update {
                header,
                sender,
                patch,
                chunk,
            },
            payload,
            self.limits.chunk_bytes,
            transfer,
        );
        for wire in wires {
            self.broadcast(Some(id), wire, &mut fx);
        }
        Ok(fx)
    }

    /// Records an accepted update: the patch, or the full data after a full
    /// update or once the recorded patches outweigh the data (compaction).
    fn record_edit(
        &mut self,
        fx: &mut Effects,
        uuid: &str,
        patch: Option<&Bytes>,
        deps: Option<Vec<String>>,
    ) {
        if !self.recording {
            return;
        }
        let Some(patch) = patch else {
            return self.record_put(fx, uuid);
        };
        let Some(block) = self.repository.get(uuid) else {
            return;
        };
        let recorded = block.recorded_patch_bytes + patch.len();
        if recorded > block.content.size().max(COMPACT_MIN_BYTES) {
            return self.record_put(fx, uuid);
        }
        let revision = block.revision;
        self.repository
            .edit(uuid, |b| b.recorded_patch_bytes = recorded);
        fx.changes.push(Change::Patch {
            uuid: uuid.to_owned(),
            revision,
            deps,
            patch: patch.clone(),
        });
    }

    /// RIGHT: gives the listed datablocks to `owner` (a user in the session or
    /// COMMON). All or nothing.
    pub fn change_owner(
        &mut self,
        id: ClientId,
        req_id: Option<u64>,
        uuids: Vec<String>,
        owner: String,
        force: bool,
    ) -> Result<Effects, RoomError> {
        let member = self.members.get(id).ok_or_else(not_member)?;
        self.require_active()?;
        if uuids.is_empty() {
            return Err(RoomError::new(
                ErrorCode::InvalidMessage,
                "RIGHT needs at least one uuid",
            ));
        }
        if owner != COMMON && self.members.find(&owner).is_none() {
            return Err(RoomError::new(
                ErrorCode::UnknownUser,
                format!("no user named {owner:?} is in the session"),
            ));
        }
        for uuid in &uuids {
            let block = self.repository.get(uuid).ok_or_else(|| unknown(uuid))?;
            check_owner(block, uuid, &member.name, force, member.admin)?;
        }
        let sender = member.name.clone();
        let now = std::time::SystemTime::now();
        for uuid in &uuids {
            self.repository.edit(uuid, |b| {
                b.owner.clone_from(&owner);
                b.since = now;
            });
        }
        tracing::debug!(
            room = %self.name,
            by = %sender,
            owner = %owner,
            force,
            datablocks = ?uuids,
            "ownership changed"
        );
        let mut fx = Effects::default();
        self.record(&mut fx, || Change::Owner {
            uuids: uuids.clone(),
            owner: owner.clone(),
        });
        fx.reply(
            id,
            &ServerMessage::Right {
                id: req_id,
                uuids: uuids.clone(),
                owner: owner.clone(),
                sender: None,
            },
        );
        let msg = ServerMessage::Right {
            id: None,
            uuids,
            owner,
            sender: Some(sender),
        };
        self.broadcast(Some(id), Wire::message(&msg), &mut fx);
        Ok(fx)
    }

    /// DELETE of one datablock.
    pub fn delete(
        &mut self,
        id: ClientId,
        req_id: Option<u64>,
        uuid: String,
        force: bool,
    ) -> Result<Effects, RoomError> {
        let member = self.members.get(id).ok_or_else(not_member)?;
        self.require_active()?;
        let block = self.repository.get(&uuid).ok_or_else(|| unknown(&uuid))?;
        check_owner(block, &uuid, &member.name, force, member.admin)?;
        let sender = member.name.clone();
        if let Some(old) = self.repository.remove(&uuid) {
            let bytes = old.content.size();
            crate::memory::release(old, bytes);
        }
        let mut fx = Effects::default();
        self.record(&mut fx, || Change::Delete { uuid: uuid.clone() });
        fx.reply(
            id,
            &ServerMessage::Delete {
                id: req_id,
                uuid: uuid.clone(),
                sender: None,
            },
        );
        let msg = ServerMessage::Delete {
            id: None,
            uuid,
            sender: Some(sender),
        };
        self.broadcast(Some(id), Wire::message(&msg), &mut fx);
        Ok(fx)
    }

    /// FETCH: the current state of one datablock, on the subscriber channel
    /// (behind the snapshot if the client is still downloading).
    pub fn fetch(
        &mut self,
        id: ClientId,
        req_id: Option<u64>,
        uuid: &str,
    ) -> Result<Effects, RoomError> {
        self.members.get(id).ok_or_else(not_member)?;
        self.require_active()?;
        if !self.repository.contains(uuid) {
            return Err(unknown(uuid));
        }
        let wires = self.datablock_wires(uuid, req_id);
        let mut fx = Effects::default();
        let Some(member) = self.members.get_mut(id) else {
            return Ok(fx);
        };
        match member.download.as_mut() {
            Some(download) => {
                let (max_messages, max_bytes) = (
                    self.limits.outbox_max_messages,
                    self.limits.outbox_max_bytes,
                );
                if !wires
                    .into_iter()
                    .all(|wire| download.hold(wire, max_messages, max_bytes))
                {
                    fx.disconnect.push((id, TOO_SLOW.to_owned()));
                }
            }
            None => {
                for wire in wires {
                    fx.send(id, Channel::Subscriber, wire);
                }
            }
        }
        Ok(fx)
    }
}

/// The ownership rule: a datablock may be changed by anyone while COMMON, by
/// its owner, and by an admin who forces it.
fn check_owner(
    block: &Datablock,
    uuid: &str,
    user: &str,
    force: bool,
    admin: bool,
) -> Result<(), RoomError> {
    if block.owner == COMMON || block.owner == user || (force && admin) {
        return Ok(());
    }
    let hint = if force {
        " (only admins may force)"
    } else {
        ""
    };
    Err(RoomError {
        held: Some(Held {
            datablock: uuid.to_owned(),
            owner: block.owner.clone(),
        }),
        ..RoomError::new(
            ErrorCode::NotOwner,
            format!("datablock {uuid} is owned by {}{hint}", block.owner),
        )
    })
}

fn unknown(uuid: &str) -> RoomError {
    RoomError::new(
        ErrorCode::UnknownDatablock,
        format!("no datablock {uuid} in the session"),
    )
}
