//! Requests: authentication, upload, download, updates and patches, ownership,
//! deletion, fetch, presence, kick, leave.

use super::*;

impl Client {
    /// SERVER_INFO, allowed before authenticating.
    pub fn server_info(&mut self, timeout: Duration) -> Result<ServerMessage, ClientError> {
        let id = self.next_id();
        self.send(
            Channel::Commands,
            &CommandRequest::ServerInfo { id: Some(id) },
            None,
        )?;
        self.reply(id, timeout).map(|e| e.message)
    }

    /// AUTH: returns LOBBY or RUNNING, or the server's refusal.
    pub fn authenticate(&mut self, timeout: Duration) -> Result<AuthStatus, ClientError> {
        let id = self.next_id();
        let request = CommandRequest::Auth {
            id: Some(id),
            user: self.options.user.clone(),
            role: self.options.role,
            admin_password: self.options.admin_password.clone(),
            server_password: self.options.server_password.clone(),
            protocol_version: PROTOCOL_VERSION,
            metadata: None,
            room: self.options.room.clone(),
            room_password: self.options.room_password.clone(),
            batches: self.options.batches,
        };
        self.send(Channel::Commands, &request, None)?;
        let reply = match self.reply(id, timeout) {
            Err(ClientError::Timeout(t)) => {
                return Err(self.handshake_refusal().unwrap_or(ClientError::Timeout(t)));
            }
            other => other?,
        };
        match reply.message {
            ServerMessage::Auth {
                status: AuthStatus::Failed,
                code,
                reason,
                ..
            } => Err(ClientError::Refused {
                code: code.map(|c| format!("{c:?}")).unwrap_or_default(),
                message: reason.unwrap_or_default(),
            }),
            ServerMessage::Auth {
                status,
                token,
                chunk_bytes,
                room,
                ..
            } => {
                self.token = token.map(Bytes::from);
                self.room = room;
                if let Some(c) = chunk_bytes {
                    self.chunk_bytes = usize::try_from(c).unwrap_or(1 << 20).max(1);
                }
                for channel in std::mem::take(&mut self.resume_due) {
                    self.resume(channel)?;
                }
                Ok(status)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Uploads the initial scene: INIT, one SET per block (chunked when
    /// large), END. Returns the number of datablocks the server holds.
    pub fn upload(&mut self, blocks: &[Block], timeout: Duration) -> Result<u64, ClientError> {
        let id = self.next_id();
        self.send(
            Channel::Commands,
            &upload_step(id, UploadStep::Init, None, ChunkFields::default()),
            None,
        )?;
        expect_upload(self.reply(id, timeout)?.message, UploadStatus::Accepted)?;
        for block in blocks {
            let data = encode_value(&block.data);
            let spec = self.payload_spec(data.len());
            let msg = upload_step(
                0,
                UploadStep::Set,
                Some(block),
                ChunkFields::from_spec(spec),
            );
            self.send_with_payload(Channel::Commands, &msg, spec, &data)?;
        }
        let id = self.next_id();
        self.send(
            Channel::Commands,
            &upload_step(id, UploadStep::End, None, ChunkFields::default()),
            None,
        )?;
        match self.reply(id, timeout)?.message {
            ServerMessage::ServerSnapshot {
                status: UploadStatus::Done,
                datablocks,
                ..
            } => Ok(datablocks.unwrap_or_default()),
            other => Err(unexpected(&other)),
        }
    }

    fn payload_spec(&mut self, len: usize) -> PayloadSpec {
        if len <= self.chunk_bytes {
            return PayloadSpec::Inline;
        }
        let transfer = self.next_transfer;
        self.next_transfer += 1;
        PayloadSpec::Chunked {
            transfer,
            chunks: u32::try_from(len.div_ceil(self.chunk_bytes)).unwrap_or(u32::MAX),
            size: len as u64,
        }
    }

    fn send_with_payload<T: Serialize>(
        &self,
        channel: Channel,
        msg: &T,
        spec: PayloadSpec,
        data: &[u8],
    ) -> Result<(), ClientError> {
        match spec {
            PayloadSpec::Inline => self.send(channel, msg, Some(data)),
            PayloadSpec::Chunked { transfer, .. } => {
                self.send(channel, msg, None)?;
                for (index, chunk) in data.chunks(self.chunk_bytes).enumerate() {
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    if channel == Channel::Publisher {
                        self.send(
                            channel,
                            &PublisherMessage::Chunk { transfer, index },
                            Some(chunk),
                        )?;
                    } else {
                        self.send(
                            channel,
                            &CommandRequest::Chunk { transfer, index },
                            Some(chunk),
                        )?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Asks for the session on the subscriber channel (SNAPSHOT).
    pub fn subscribe(&mut self, window: Option<u32>) -> Result<(), ClientError> {
        self.send(
            Channel::Subscriber,
            &SubscriberRequest::Snapshot {
                window,
                batches: self.options.batches,
            },
            None,
        )
    }

    /// Subscribes and collects the snapshot until END, reporting progress as
    /// (datablocks received, datablocks announced).
    pub fn download(
        &mut self,
        timeout: Duration,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Vec<Received>, ClientError> {
        self.subscribe(None)?;
        let deadline = Instant::now() + timeout;
        let mut blocks = Vec::new();
        let mut total = 0;
        // Other traffic that arrives meanwhile is kept for the caller.
        let mut other = Vec::new();
        let result = loop {
            let Some(event) = self.next_event_until(deadline)? else {
                break Err(ClientError::Timeout(timeout));
            };
            match event.message {
                ServerMessage::Snapshot {
                    step: SnapshotStep::Begin,
                    datablocks,
                    ..
                } => total = datablocks.unwrap_or_default(),
                ServerMessage::Snapshot {
                    step: SnapshotStep::End,
                    ..
                } => break Ok(blocks),
                ServerMessage::Datablock {
                    header, id: None, ..
                } => {
                    blocks.push(Received {
                        header,
                        data: event.payload.unwrap_or_default(),
                    });
                    progress(blocks.len() as u64, total);
                }
                ServerMessage::Disconnect { reason } => {
                    break Err(ClientError::Disconnected(reason));
                }
                _ => other.push(event),
            }
        };
        for e in other.into_iter().rev() {
            self.events.push_front(e);
        }
        result
    }

    /// Sends a datablock's full data (creates it when new). Not
    /// acknowledged: a refusal arrives later as an ERROR event.
    pub fn update(&mut self, block: &Block) -> Result<(), ClientError> {
        let data = encode_value(&block.data);
        self.update_raw(block, &data)
    }

    /// Sends already-encoded data for a datablock, unacknowledged.
    pub fn update_raw(&mut self, block: &Block, data: &[u8]) -> Result<(), ClientError> {
        self.send_update(block, data, None)
    }

    /// Sends a datablock's full data and waits until the server has applied
    /// it; returns the new revision.
    pub fn update_confirmed(
        &mut self,
        block: &Block,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        self.update_raw_confirmed(block, &encode_value(&block.data), timeout)
    }

    /// Sends already-encoded data for a datablock and waits until the
    /// server has applied it; returns the new revision.
    pub fn update_raw_confirmed(
        &mut self,
        block: &Block,
        data: &[u8],
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        let id = self.next_id();
        self.send_update(block, data, Some(id))?;
        self.ack(id, timeout)
    }

    /// Sends several datablocks' already-encoded data, unacknowledged, in
    /// as few UPDATES messages as the limits allow; data larger than a
    /// chunk goes alone, chunked.
    pub fn updates_raw(&mut self, items: &[(&Block, &[u8])]) -> Result<(), ClientError> {
        let mut headers = Vec::new();
        let mut lengths = Vec::new();
        let mut data = Vec::new();
        for &(block, payload) in items {
            if payload.len() > self.chunk_bytes {
                self.send_update(block, payload, None)?;
                continue;
            }
            if headers.len() == MAX_BATCH || data.len() + payload.len() > self.chunk_bytes {
                self.send_batch(&mut headers, &mut lengths, &mut data)?;
            }
            headers.push(full_update(block, None, ChunkFields::default()));
            lengths.push(payload.len() as u64);
            data.extend_from_slice(payload);
        }
        self.send_batch(&mut headers, &mut lengths, &mut data)
    }

    fn send_batch(
        &self,
        headers: &mut Vec<PublisherMessage>,
        lengths: &mut Vec<u64>,
        data: &mut Vec<u8>,
    ) -> Result<(), ClientError> {
        if headers.is_empty() {
            return Ok(());
        }
        let msg = PublisherMessage::Updates {
            updates: std::mem::take(headers),
            lengths: std::mem::take(lengths),
        };
        self.send(Channel::Publisher, &msg, Some(data))?;
        data.clear();
        Ok(())
    }

    fn send_update(
        &mut self,
        block: &Block,
        data: &[u8],
        id: Option<u64>,
    ) -> Result<(), ClientError> {
        let spec = self.payload_spec(data.len());
        let msg = full_update(block, id, ChunkFields::from_spec(spec));
        self.send_with_payload(Channel::Publisher, &msg, spec, data)
    }

    /// Sends a patch for a datablock, unacknowledged.
    pub fn patch(
        &mut self,
        uuid: &str,
        patch: &Patch,
        base_revision: Option<u64>,
    ) -> Result<(), ClientError> {
        self.send_patch(uuid, patch, base_revision, None)
    }

    /// Sends a patch and waits until the server has applied it; returns the
    /// new revision.
    pub fn patch_confirmed(
        &mut self,
        uuid: &str,
        patch: &Patch,
        base_revision: Option<u64>,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        let id = self.next_id();
        self.send_patch(uuid, patch, base_revision, Some(id))?;
        self.ack(id, timeout)
    }

    fn send_patch(
        &mut self,
        uuid: &str,
        patch: &Patch,
        base_revision: Option<u64>,
        id: Option<u64>,
    ) -> Result<(), ClientError> {
        let data = encode_value(&patch.to_value());
        let spec = self.payload_spec(data.len());
        let msg = PublisherMessage::Update {
            id,
            uuid: uuid.to_owned(),
            type_id: None,
            owner: None,
            deps: None,
            patch: true,
            base_revision,
            chunk: ChunkFields::from_spec(spec),
        };
        self.send_with_payload(Channel::Publisher, &msg, spec, &data)
    }

    fn ack(&mut self, id: u64, timeout: Duration) -> Result<u64, ClientError> {
        match self.reply(id, timeout)?.message {
            ServerMessage::Ack { revision, .. } => Ok(revision),
            other => Err(unexpected(&other)),
        }
    }

    /// RIGHT: gives datablocks to `owner` (yourself to lock, COMMON to
    /// unlock); admins may `force`.
    pub fn change_owner(
        &mut self,
        uuids: &[&str],
        owner: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let id = self.next_id();
        let msg = CommandRequest::Right {
            id: Some(id),
            uuids: uuids.iter().map(|u| (*u).to_owned()).collect(),
            owner: owner.to_owned(),
            force,
        };
        self.send(Channel::Commands, &msg, None)?;
        self.reply(id, timeout).map(drop)
    }

    /// Locks datablocks for this user.
    pub fn lock(&mut self, uuids: &[&str], timeout: Duration) -> Result<(), ClientError> {
        let me = self.options.user.clone();
        self.change_owner(uuids, &me, false, timeout)
    }

    /// Releases datablocks to COMMON.
    pub fn unlock(&mut self, uuids: &[&str], timeout: Duration) -> Result<(), ClientError> {
        self.change_owner(uuids, crate::protocol::COMMON, false, timeout)
    }

    /// DELETE.
    pub fn delete(
        &mut self,
        uuid: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let id = self.next_id();
        let msg = CommandRequest::Delete {
            id: Some(id),
            uuid: uuid.to_owned(),
            force,
        };
        self.send(Channel::Commands, &msg, None)?;
        self.reply(id, timeout).map(drop)
    }

    /// FETCH: the server's current state of one datablock.
    pub fn fetch(&mut self, uuid: &str, timeout: Duration) -> Result<Received, ClientError> {
        let id = self.next_id();
        self.send(
            Channel::Subscriber,
            &SubscriberRequest::Fetch {
                id: Some(id),
                uuid: uuid.to_owned(),
            },
            None,
        )?;
        let event = self.reply(id, timeout)?;
        match event.message {
            ServerMessage::Datablock { header, .. } => Ok(Received {
                header,
                data: event.payload.unwrap_or_default(),
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// UPDATE_USER_METADATA (presence).
    pub fn set_metadata(&mut self, metadata: Value) -> Result<(), ClientError> {
        let msg = CommandRequest::UpdateUserMetadata { id: None, metadata };
        self.send(Channel::Commands, &msg, None)
    }

    /// KICK (admins only).
    pub fn kick(
        &mut self,
        user: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let id = self.next_id();
        let msg = CommandRequest::Kick {
            id: Some(id),
            user: user.to_owned(),
            reason: reason.map(str::to_owned),
        };
        self.send(Channel::Commands, &msg, None)?;
        self.reply(id, timeout).map(drop)
    }

    /// JOIN_ROOM: leaves the current room (if any) for `room`, creating it
    /// when it does not exist and this client may. Download the new room's
    /// scene afterwards, as after AUTH.
    pub fn join_room(
        &mut self,
        room: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<RoomJoined, ClientError> {
        let id = self.next_id();
        let msg = CommandRequest::JoinRoom {
            id: Some(id),
            room: room.to_owned(),
            room_password: password.map(str::to_owned),
            metadata: None,
        };
        self.send(Channel::Commands, &msg, None)?;
        match self.reply(id, timeout)?.message {
            ServerMessage::Room {
                room: Some(room),
                status: Some(status),
                created,
                admin,
                token,
                ..
            } => {
                self.room = Some(room.clone());
                self.token = token.map(Bytes::from).or(self.token.take());
                Ok(RoomJoined {
                    room,
                    status,
                    created: created.unwrap_or(false),
                    admin: admin.unwrap_or(false),
                })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// LEAVE_ROOM: leaves the current room and stays connected.
    pub fn leave_room(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let id = self.next_id();
        self.send(
            Channel::Commands,
            &CommandRequest::LeaveRoom { id: Some(id) },
            None,
        )?;
        match self.reply(id, timeout)?.message {
            ServerMessage::Room {
                room: None, token, ..
            } => {
                self.room = None;
                self.token = token.map(Bytes::from).or(self.token.take());
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    /// ROOM_SETTINGS: whether the current room stays when its last user
    /// leaves (admins of the room).
    pub fn set_keep_open(&mut self, keep_open: bool, timeout: Duration) -> Result<(), ClientError> {
        let id = self.next_id();
        self.send(
            Channel::Commands,
            &CommandRequest::RoomSettings {
                id: Some(id),
                keep_open,
            },
            None,
        )?;
        match self.reply(id, timeout)?.message {
            ServerMessage::RoomSettings { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// DISCONNECT: leaves the session.
    pub fn leave(&mut self) -> Result<(), ClientError> {
        self.send(
            Channel::Commands,
            &CommandRequest::Disconnect {
                reason: Some("leaving".into()),
            },
            None,
        )
    }

    /// Waits for the answer to request `id` (or an ERROR about it), keeping
    /// other messages as events.
    fn reply(&mut self, id: u64, timeout: Duration) -> Result<Event, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        let result = loop {
            let Some(event) = self.next_event_until(deadline)? else {
                break Err(ClientError::Timeout(timeout));
            };
            match &event.message {
                ServerMessage::Error {
                    code,
                    message,
                    refers_to,
                } if refers_to.id == Some(id) => {
                    break Err(ClientError::Refused {
                        code: format!("{code:?}"),
                        message: message.clone(),
                    });
                }
                ServerMessage::Disconnect { reason } => {
                    break Err(ClientError::Disconnected(reason.clone()));
                }
                msg if reply_id(msg) == Some(id) => break Ok(event),
                _ => skipped.push(event),
            }
        };
        for e in skipped.into_iter().rev() {
            self.events.push_front(e);
        }
        result
    }
}

fn upload_step(
    id: u64,
    step: UploadStep,
    block: Option<&Block>,
    chunk: ChunkFields,
) -> CommandRequest {
    CommandRequest::ServerSnapshot {
        id: (id != 0).then_some(id),
        step,
        uuid: block.map(|b| b.uuid.clone()),
        type_id: block.map(|b| b.type_id.clone()),
        owner: block.and_then(|b| b.owner.clone()),
        deps: block.map(|b| b.deps.clone()),
        chunk,
    }
}

fn expect_upload(message: ServerMessage, want: UploadStatus) -> Result<(), ClientError> {
    match message {
        ServerMessage::ServerSnapshot { status, .. } if status == want => Ok(()),
        ServerMessage::ServerSnapshot { code, reason, .. } => Err(ClientError::Refused {
            code: code.map_or_else(|| "Rejected".to_owned(), |c| format!("{c:?}")),
            message: reason.unwrap_or_default(),
        }),
        other => Err(unexpected(&other)),
    }
}

/// The request id an answer carries.
fn reply_id(message: &ServerMessage) -> Option<u64> {
    match message {
        ServerMessage::ServerInfo { id, .. }
        | ServerMessage::Auth { id, .. }
        | ServerMessage::ServerSnapshot { id, .. }
        | ServerMessage::Datablock { id, .. }
        | ServerMessage::Right { id, .. }
        | ServerMessage::Delete { id, .. }
        | ServerMessage::Kick { id, .. }
        | ServerMessage::Room { id, .. }
        | ServerMessage::RoomSettings { id, .. } => *id,
        ServerMessage::Ack { id, .. } => Some(*id),
        _ => None,
    }
}

/// The UPDATE header that replaces `block`'s data with its full data.
fn full_update(block: &Block, id: Option<u64>, chunk: ChunkFields) -> PublisherMessage {
    PublisherMessage::Update {
        id,
        uuid: block.uuid.clone(),
        type_id: Some(block.type_id.clone()),
        owner: block.owner.clone(),
        deps: Some(block.deps.clone()),
        patch: false,
        base_revision: None,
        chunk,
    }
}
