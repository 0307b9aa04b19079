//! Turning each inbound message into a room operation, after checking who
//! sent it.

use bytes::Bytes;
use rand::RngExt;
use tokio::time::Instant;

use super::auth::{Guarded, place};
use super::payloads::invalid;
use super::rooms::{DEFAULT_ROOM, JoinRequest};
use super::transfers::Pending;
use super::{Core, Session, kick_reason, protocol_error};
use crate::protocol::{
    AuthStatus, BlockSpec, Channel, CommandRequest, ErrorCode, HeartbeatMessage, PROTOCOL_VERSION,
    ProtocolError, PublisherMessage, RefersTo, Role, ServerMessage, SessionState,
    SubscriberRequest, UploadStep, Wire, batch, check_name, encode,
};
use crate::room::{ClientId, Effects, RoomError, StreamOptions, TOO_SLOW};
use crate::transport::{ClientMessage, Command, Frame, Identity, Inbound, Recipients};

impl Core {
    pub(super) async fn inbound(&mut self, event: Inbound) {
        // A message from a connection that has not proven its session waits.
        if let Inbound::Message {
            channel,
            identity: Some(identity),
            ..
        } = &event
            && let Some(&id) = self.by_identity.get(identity)
            && self
                .sessions
                .get(&id)
                .is_some_and(|s| !s.links.is_confirmed(*channel))
        {
            return self.unconfirmed(id, event).await;
        }
        match event {
            Inbound::TooSlow { identity } => {
                if let Some(&id) = self.by_identity.get(&identity) {
                    self.disconnect(id, TOO_SLOW).await;
                } else {
                    self.send(Command::Disconnect {
                        identity,
                        last: None,
                    })
                    .await;
                }
            }
            Inbound::Connected { channel, identity } => self.connected(channel, identity).await,
            Inbound::Message {
                channel,
                identity,
                token,
                peer_address,
                message,
                payload,
            } => {
                let sender = match (&identity, &token) {
                    (Some(identity), _) => self.by_identity.get(identity).copied(),
                    (None, Some(token)) => self.by_token.get(&token[..]).copied(),
                    (None, None) => None,
                };
                if let Some(id) = sender
                    && let Some(s) = self.sessions.get_mut(&id)
                {
                    s.last_seen = Instant::now();
                }
                let message = match message {
                    Ok(m) => m,
                    Err(e) => return self.malformed(channel, identity, sender, e).await,
                };
                match (message, identity, sender) {
                    (ClientMessage::Command(request), Some(identity), _) => {
                        self.command(identity, sender, peer_address, request, payload)
                            .await;
                    }
                    (ClientMessage::Publisher(msg), _, Some(id)) => {
                        self.publisher(id, msg, payload).await;
                    }
                    (ClientMessage::Subscriber(request), _, Some(id)) => {
                        self.subscriber(id, request).await;
                    }
                    // Answered with or without a session: a client asks it
                    // before it connects (protocol section 18).
                    (
                        ClientMessage::Heartbeat(HeartbeatMessage::ServerKey { id, .. }),
                        Some(identity),
                        _,
                    ) => {
                        let answer = self.transport.server_key_answer(id);
                        self.send(Command::Deliver {
                            channel: Channel::Heartbeat,
                            to: Recipients::One(identity),
                            wire: Wire {
                                header: encode(&answer),
                                payload: None,
                                batchable: false,
                            },
                        })
                        .await;
                    }
                    (ClientMessage::Heartbeat(msg), Some(identity), Some(id)) => {
                        self.heartbeat_message(id, identity, msg).await;
                    }
                    (ClientMessage::OldMultiUser(request), Some(identity), None) => {
                        self.old_client(channel, identity, peer_address, request)
                            .await;
                    }
                    // A session speaks this protocol: a pickle from it is
                    // garbage, answered as such.
                    (ClientMessage::OldMultiUser(_), identity, Some(id)) => {
                        let error = ProtocolError::Malformed(
                            "a pickled frame (an old Multi-User client's message)".to_owned(),
                        );
                        self.malformed(channel, identity, Some(id), error).await;
                    }
                    _ => {
                        tracing::warn!(
                            channel = channel.name(),
                            "dropped a message from a client that has not authenticated"
                        );
                    }
                }
            }
        }
    }

    /// A message that could not be decoded: ERROR where there is a reply path.
    async fn malformed(
        &mut self,
        channel: Channel,
        identity: Option<Identity>,
        sender: Option<ClientId>,
        error: ProtocolError,
    ) {
        let identity = identity
            .or_else(|| sender.and_then(|id| self.sessions.get(&id).map(|s| s.identity.clone())));
        let error = protocol_error(error.code(), format!("{} channel: {error}", channel.name()));
        match identity {
            // Only the commands channel answers identities without a
            // session; on the others they are dropped like their valid
            // messages are.
            Some(identity) if channel == Channel::Commands || sender.is_some() => {
                self.error_to(&identity, &error, RefersTo::default()).await;
            }
            _ => tracing::warn!(
                channel = channel.name(),
                "dropped a malformed message: {}",
                error.message
            ),
        }
    }

    async fn command(
        &mut self,
        identity: Identity,
        sender: Option<ClientId>,
        peer_address: Option<String>,
        request: CommandRequest,
        payload: Option<Frame>,
    ) {
        let refers_to = RefersTo {
            kind: Some(request.kind().to_owned()),
            id: request.id(),
            uuid: match &request {
                CommandRequest::Delete { uuid, .. } => Some(uuid.clone()),
                CommandRequest::ServerSnapshot { uuid, .. } => uuid.clone(),
                _ => None,
            },
            transfer: match &request {
                CommandRequest::ServerSnapshot { chunk, .. } => chunk.transfer,
                CommandRequest::Chunk { transfer, .. } => Some(*transfer),
                _ => None,
            },
        };
        let result = match (request, sender) {
            (CommandRequest::ServerInfo { id }, _) => {
                let private = self.config.server_password.is_some();
                let rooms = self.rooms.infos(private);
                // The top-level fields describe the default room, as they
                // did before rooms.
                let default = rooms.iter().find(|r| r.name == DEFAULT_ROOM);
                let msg = ServerMessage::ServerInfo {
                    id,
                    protocol_version: PROTOCOL_VERSION,
                    server_version: env!("CARGO_PKG_VERSION").to_owned(),
                    private,
                    state: default.map_or(SessionState::Waiting, |r| r.state),
                    users_online: default.map_or(0, |r| r.users_online),
                    datablocks: default.map_or(0, |r| r.datablocks),
                    open_rooms: self.config.open_rooms,
                    rooms,
                };
                self.reply_to(&identity, &msg).await;
                Ok(())
            }
            (request @ CommandRequest::Auth { .. }, None) => {
                self.auth(identity.clone(), peer_address, request).await;
                Ok(())
            }
            (CommandRequest::Auth { id, .. }, Some(_)) => {
                self.reply_to(
                    &identity,
                    &auth_failed(
                        id,
                        ErrorCode::AlreadyAuthenticated,
                        "this connection is already authenticated",
                    ),
                )
                .await;
                Ok(())
            }
            (_, None) => Err(protocol_error(
                ErrorCode::NotAuthenticated,
                "authenticate with AUTH first",
            )),
            (request, Some(id)) => self.session_command(id, request, payload).await,
        };
        if let Err(error) = result {
            self.error_to(&identity, &error, refers_to).await;
        }
    }

    async fn auth(
        &mut self,
        identity: Identity,
        peer_address: Option<String>,
        request: CommandRequest,
    ) {
        let CommandRequest::Auth {
            id,
            user,
            role,
            admin_password,
            server_password,
            protocol_version,
            metadata,
            room,
            room_password,
            batches,
        } = request
        else {
            return;
        };
        let place = place(peer_address.as_deref(), &identity);
        let peer = peer_address
            .as_deref()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .map(|a| a.to_canonical());
        let now = Instant::now();
        let refusal = if protocol_version != PROTOCOL_VERSION {
            Err((
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version mismatch: the client speaks version {protocol_version}, this server speaks version {PROTOCOL_VERSION}{}",
                    if protocol_version < PROTOCOL_VERSION {
                        "; update the client"
                    } else {
                        "; update the server"
                    }
                ),
            ))
        } else if let Err(e) = check_name("user name", &user) {
            Err((ErrorCode::InvalidMessage, e.to_string()))
        } else {
            self.check_password(&place, Guarded::Server, server_password.as_deref())
                .and_then(|()| match role {
                    Role::Admin => {
                        self.check_password(&place, Guarded::Admin, admin_password.as_deref())
                    }
                    Role::Client => Ok(()),
                })
        };
        if let Err((code, reason)) = refusal {
            self.metrics.refused(code);
            tracing::warn!(user, peer = %place, ?code, "login refused: {reason}");
            self.reply_to(&identity, &auth_failed(id, code, &reason))
                .await;
            return;
        }
        let client = self.new_client_id();
        let admin = role == Role::Admin;
        let span = tracing::info_span!("client", user = %user);
        self.sessions.insert(
            client,
            Session {
                identity: identity.clone(),
                token: Bytes::new(),
                user: user.clone(),
                last_seen: now,
                ping: None,
                transfers: Default::default(),
                span: span.clone(),
                room: None,
                admin,
                place: place.clone(),
                batches,
                links: Default::default(),
                previous_token: None,
                peer,
            },
        );
        let room_name = room.clone().unwrap_or_else(|| DEFAULT_ROOM.to_owned());
        let guarded = Guarded::Room(&room_name);
        let request = JoinRequest {
            room,
            room_password,
            metadata,
        };
        let entered = match self.logins.wait(&place, guarded, now.into_std()) {
            Some(wait) => Err(protocol_error(
                ErrorCode::TooManyAttempts,
                format!(
                    "too many wrong passwords for this room; retry in {:.1} s",
                    wait.as_secs_f64()
                ),
            )),
            None => self.enter_room(client, &user, admin, request, true),
        };
        let joined = match entered {
            Ok(joined) => joined,
            Err(e) => {
                self.remove_session(client);
                if e.code == ErrorCode::WrongRoomPassword {
                    self.logins.failed(&place, guarded, now.into_std());
                }
                self.metrics.refused(e.code);
                tracing::warn!(user, peer = %place, code = ?e.code, "login refused: {}", e.message);
                self.reply_to(&identity, &auth_failed(id, e.code, &e.message))
                    .await;
                return;
            }
        };
        let token = new_token();
        if let Some(session) = self.sessions.get_mut(&client) {
            session.token = token.clone();
        }
        span.in_scope(|| {
            tracing::info!(admin, peer = %place, room = %joined.room, status = ?joined.status, created = joined.created, "client joined")
        });
        self.by_identity.insert(identity.clone(), client);
        self.by_token.insert(token.clone(), client);
        if let Some(address) = peer {
            self.send(Command::Users { address, delta: 1 }).await;
        }
        let limits = &self.config.limits;
        let msg = ServerMessage::Auth {
            id,
            status: joined.status,
            protocol_version: PROTOCOL_VERSION,
            code: None,
            reason: None,
            token: Some(String::from_utf8_lossy(&token).into_owned()),
            state: Some(joined.state),
            heartbeat_ms: Some(self.config.heartbeat_interval_ms),
            timeout_ms: Some(self.config.timeout_ms),
            chunk_bytes: Some(limits.chunk_bytes as u64),
            max_header_bytes: Some(limits.max_header_bytes as u64),
            room: Some(joined.room.to_string()),
            created: Some(joined.created),
            batches: batches.then_some(true),
        };
        self.reply_to(&identity, &msg).await;
    }

    /// Commands from an authenticated client.
    async fn session_command(
        &mut self,
        id: ClientId,
        request: CommandRequest,
        payload: Option<Frame>,
    ) -> Result<(), RoomError> {
        match request {
            CommandRequest::JoinRoom {
                id: req_id,
                room,
                room_password,
                metadata,
            } => {
                return self
                    .switch_room(id, req_id, room, room_password, metadata)
                    .await;
            }
            CommandRequest::LeaveRoom { id: req_id } => {
                self.room_of(id)?;
                self.leave_room(id).await;
                let reply = ServerMessage::Room {
                    id: req_id,
                    room: None,
                    status: None,
                    state: None,
                    created: None,
                    admin: None,
                    token: None,
                };
                self.room_changed(id, reply).await;
                return Ok(());
            }
            CommandRequest::RoomSettings {
                id: req_id,
                keep_open,
            } => {
                let room = self.set_keep_open(id, keep_open)?;
                let reply = ServerMessage::RoomSettings {
                    id: req_id,
                    room: room.to_string(),
                    keep_open,
                };
                self.reply_to_client(id, &reply).await;
                return Ok(());
            }
            CommandRequest::Disconnect { reason } => {
                let why = reason.unwrap_or_else(|| "left".to_owned());
                if let Some(s) = self.sessions.get(&id) {
                    s.span
                        .in_scope(|| tracing::info!(reason = %why, "client is leaving"));
                }
                self.disconnect(id, "goodbye").await;
                return Ok(());
            }
            // A confirmed connection has nothing to prove.
            CommandRequest::ServerInfo { .. }
            | CommandRequest::Auth { .. }
            | CommandRequest::Resume { .. } => return Ok(()),
            _ => {}
        }
        let (room, _) = self.room_mut(id)?;
        let effects = match request {
            CommandRequest::ServerInfo { .. }
            | CommandRequest::Auth { .. }
            | CommandRequest::JoinRoom { .. }
            | CommandRequest::LeaveRoom { .. }
            | CommandRequest::RoomSettings { .. }
            | CommandRequest::Disconnect { .. }
            | CommandRequest::Resume { .. } => Effects::default(),
            CommandRequest::ServerSnapshot {
                id: req_id,
                step,
                uuid,
                type_id,
                owner,
                deps,
                chunk,
            } => {
                if step != UploadStep::Set {
                    self.room_mut(id)?.1.upload(id, step, req_id, None)?
                } else {
                    let uuid = uuid.ok_or_else(|| {
                        protocol_error(ErrorCode::InvalidMessage, "SET needs a uuid")
                    })?;
                    let spec = BlockSpec::checked(uuid, type_id, owner, deps).map_err(invalid)?;
                    let pending = Pending::UploadSet { req_id, spec };
                    let payload = payload.as_deref().map(owned);
                    self.datablock_message(id, Channel::Commands, pending, &chunk, payload)
                        .await;
                    Effects::default()
                }
            }
            CommandRequest::Chunk { transfer, index } => {
                // Copied once, from libzmq's frame into the transfer.
                self.chunk_message(id, Channel::Commands, transfer, index, payload.as_deref())
                    .await;
                Effects::default()
            }
            CommandRequest::Right {
                id: req_id,
                uuids,
                owner,
                force,
            } => self
                .room_mut(id)?
                .1
                .change_owner(id, req_id, uuids, owner, force)?,
            CommandRequest::Delete {
                id: req_id,
                uuid,
                force,
            } => self.room_mut(id)?.1.delete(id, req_id, uuid, force)?,
            CommandRequest::UpdateUserMetadata { metadata, .. } => {
                self.room_mut(id)?.1.set_metadata(id, metadata)?
            }
            CommandRequest::Kick {
                id: req_id,
                user,
                reason,
            } => {
                let victim = self.room_mut(id)?.1.kick_target(Some(id), &user)?;
                let kicker = self
                    .sessions
                    .get(&id)
                    .map(|s| s.user.clone())
                    .unwrap_or_default();
                if let Some(s) = self.sessions.get(&id) {
                    s.span
                        .in_scope(|| tracing::info!(target_user = %user, "kicked a user"));
                }
                let ack = ServerMessage::Kick { id: req_id, user };
                if let Some(identity) = self.sessions.get(&id).map(|s| s.identity.clone()) {
                    self.reply_to(&identity, &ack).await;
                }
                self.disconnect(victim, &kick_reason(&kicker, reason.as_deref()))
                    .await;
                Effects::default()
            }
        };
        self.apply(&room, effects).await;
        Ok(())
    }

    async fn publisher(&mut self, id: ClientId, msg: PublisherMessage, payload: Option<Frame>) {
        let payload = payload.as_deref();
        match msg {
            PublisherMessage::Updates { updates, lengths } => {
                let max_data = self.config.limits.chunk_bytes;
                match batch::split(updates, lengths, payload, max_data) {
                    Ok(items) => {
                        // Each its own copy: one stored datablock must not
                        // keep the whole batch's data alive.
                        for (update, data) in items {
                            self.update(id, update, Some(owned(data))).await;
                        }
                    }
                    Err(e) => {
                        let refers_to = RefersTo {
                            kind: Some("UPDATES".into()),
                            ..RefersTo::default()
                        };
                        self.error_to_client(id, &invalid(e), refers_to).await;
                    }
                }
            }
            update @ PublisherMessage::Update { .. } => {
                self.update(id, update, payload.map(owned)).await;
            }
            PublisherMessage::Chunk { transfer, index } => {
                self.chunk_message(id, Channel::Publisher, transfer, index, payload)
                    .await;
            }
        }
    }

    /// One UPDATE, alone or out of an UPDATES.
    async fn update(&mut self, id: ClientId, msg: PublisherMessage, payload: Option<Bytes>) {
        match msg {
            PublisherMessage::Update {
                id: req_id,
                uuid,
                type_id,
                owner,
                deps,
                patch,
                base_revision,
                chunk,
            } => {
                // Checked on borrowed fields: the error's context is built
                // only for a refusal, not for every update.
                let checked =
                    BlockSpec::check(&uuid, type_id.as_deref(), owner.as_deref(), deps.as_deref());
                if let Err(e) = checked {
                    let refers_to = RefersTo {
                        kind: Some("UPDATE".into()),
                        id: req_id,
                        uuid: Some(uuid),
                        transfer: chunk.transfer,
                    };
                    return self.error_to_client(id, &invalid(e), refers_to).await;
                }
                let spec = BlockSpec {
                    uuid,
                    type_id,
                    owner,
                    deps,
                };
                let pending = Pending::Update {
                    req_id,
                    spec,
                    patch,
                    base_revision,
                };
                self.datablock_message(id, Channel::Publisher, pending, &chunk, payload)
                    .await;
            }
            // Only UPDATEs reach here.
            PublisherMessage::Chunk { .. } | PublisherMessage::Updates { .. } => {}
        }
    }

    async fn subscriber(&mut self, id: ClientId, request: SubscriberRequest) {
        let refers_to = RefersTo {
            kind: Some(request.kind().to_owned()),
            id: match &request {
                SubscriberRequest::Fetch { id, .. } => *id,
                _ => None,
            },
            uuid: match &request {
                SubscriberRequest::Fetch { uuid, .. } => Some(uuid.clone()),
                _ => None,
            },
            transfer: None,
        };
        let result = self.room_mut(id).and_then(|(name, room)| {
            let effects = match request {
                SubscriberRequest::Snapshot { window, batches } => {
                    room.subscribe(id, StreamOptions { window, batches })
                }
                SubscriberRequest::SnapshotAck { received } => room.acknowledge(id, received),
                SubscriberRequest::Fetch { id: req_id, uuid } => room.fetch(id, req_id, &uuid),
                SubscriberRequest::Resume { .. } => Ok(Effects::default()),
            }?;
            Ok((name, effects))
        });
        match result {
            Ok((room, effects)) => self.apply(&room, effects).await,
            Err(error) => {
                if let Some(identity) = self.sessions.get(&id).map(|s| s.identity.clone()) {
                    self.error_to(&identity, &error, refers_to).await;
                }
            }
        }
    }

    async fn heartbeat_message(&mut self, id: ClientId, identity: Identity, msg: HeartbeatMessage) {
        match msg {
            HeartbeatMessage::Pong { seq } => {
                let Some(session) = self.sessions.get_mut(&id) else {
                    return;
                };
                if let Some((sent_seq, sent_at)) = session.ping
                    && sent_seq == seq
                {
                    let ms = sent_at.elapsed().as_secs_f64() * 1000.0;
                    session.ping = None;
                    if let Ok((_, room)) = self.room_mut(id) {
                        room.set_latency(id, (ms * 100.0).round() / 100.0);
                    }
                }
            }
            HeartbeatMessage::Resume { .. } | HeartbeatMessage::ServerKey { .. } => {}
            HeartbeatMessage::Ping { seq } => {
                self.send(Command::Deliver {
                    channel: Channel::Heartbeat,
                    to: Recipients::One(identity),
                    wire: Wire {
                        header: encode(&HeartbeatMessage::Pong { seq }),
                        payload: None,
                        batchable: false,
                    },
                })
                .await;
            }
        }
    }
}

impl Core {
    /// Checks a login's guess at the server or admin password (the server
    /// password only when the server has one): refused unchecked while
    /// that password is locked out from `place`; a wrong guess counts.
    fn check_password(
        &mut self,
        place: &str,
        guarded: Guarded<'_>,
        given: Option<&str>,
    ) -> Result<(), (ErrorCode, String)> {
        let (expected, code, what) = match guarded {
            Guarded::Server => match &self.server_secret {
                Some(secret) => (secret, ErrorCode::WrongServerPassword, "server"),
                None => return Ok(()),
            },
            Guarded::Admin => (&self.admin_secret, ErrorCode::WrongAdminPassword, "admin"),
            Guarded::Room(_) => return Ok(()),
        };
        let now = Instant::now().into_std();
        if let Some(wait) = self.logins.wait(place, guarded, now) {
            return Err((
                ErrorCode::TooManyAttempts,
                format!(
                    "too many wrong {what} passwords from this address; retry in {:.1} s",
                    wait.as_secs_f64()
                ),
            ));
        }
        if expected.matches(given) {
            return Ok(());
        }
        self.logins.failed(place, guarded, now);
        Err((code, format!("wrong {what} password")))
    }

    /// JOIN_ROOM: everything about the new room is checked before the
    /// client leaves its room, so a refusal leaves it where it was.
    async fn switch_room(
        &mut self,
        id: ClientId,
        req_id: Option<u64>,
        room: String,
        room_password: Option<String>,
        metadata: Option<rmpv::Value>,
    ) -> Result<(), RoomError> {
        let (user, server_admin, current, place) = {
            let session = self.sessions.get(&id).ok_or_else(|| {
                protocol_error(ErrorCode::NotAuthenticated, "this client is not connected")
            })?;
            (
                session.user.clone(),
                session.admin,
                session.room.clone(),
                session.place.clone(),
            )
        };
        if current.as_deref() == Some(room.as_str()) {
            return Err(protocol_error(
                ErrorCode::InvalidMessage,
                format!("this client is already in room {room:?}"),
            ));
        }
        // Each room's password is guarded on its own, so that guesses at
        // one room lock nobody out of the others.
        let guarded = Guarded::Room(&room);
        let now = Instant::now().into_std();
        if let Some(wait) = self.logins.wait(&place, guarded, now) {
            return Err(protocol_error(
                ErrorCode::TooManyAttempts,
                format!(
                    "too many wrong passwords for this room; retry in {:.1} s",
                    wait.as_secs_f64()
                ),
            ));
        }
        let checked = self.check_can_enter(
            &user,
            server_admin,
            &room,
            room_password.as_deref(),
            metadata.as_ref(),
            false,
        );
        if let Err(e) = &checked
            && e.code == ErrorCode::WrongRoomPassword
        {
            self.logins.failed(&place, guarded, now);
        }
        checked?;
        // Everything that can fail happens before the client leaves.
        let created = self.prepare_room(&room, room_password.clone())?;
        self.leave_room(id).await;
        let request = JoinRequest {
            room: Some(room.clone()),
            room_password,
            metadata,
        };
        let joined = match self.enter_room(id, &user, server_admin || created, request, false) {
            Ok(joined) => joined,
            Err(e) => {
                if created {
                    self.remove_room(&room);
                }
                return Err(e);
            }
        };
        if let Some(entry) = self.rooms.get_mut(&joined.room) {
            entry.room.arrived_from_another_room(id);
        }
        if let Some(s) = self.sessions.get(&id) {
            s.span
                .in_scope(|| tracing::info!(room = %joined.room, created, "switched rooms"));
        }
        let reply = ServerMessage::Room {
            id: req_id,
            room: Some(joined.room.to_string()),
            status: Some(joined.status),
            state: Some(joined.state),
            created: Some(created),
            admin: Some(joined.admin),
            token: None,
        };
        self.room_changed(id, reply).await;
        Ok(())
    }

    /// Answers JOIN_ROOM or LEAVE_ROOM: a new session token (so publisher
    /// messages sent for the old room are dropped, never applied to the
    /// new one), the answer on the commands channel, and the same message
    /// without `id` on the subscriber channel, where it separates the old
    /// room's traffic from the new one's.
    async fn room_changed(&mut self, id: ClientId, reply: ServerMessage) {
        let token = new_token();
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut session.token, token.clone());
        self.by_token.remove(&old);
        session.previous_token = Some(old);
        self.by_token.insert(token.clone(), id);
        let token = Some(String::from_utf8_lossy(&token).into_owned());
        let ServerMessage::Room {
            id: req_id,
            room,
            status,
            state,
            created,
            admin,
            ..
        } = reply
        else {
            return;
        };
        let marker = ServerMessage::Room {
            id: None,
            room: room.clone(),
            status,
            state,
            created,
            admin,
            token: None,
        };
        let reply = ServerMessage::Room {
            id: req_id,
            room,
            status,
            state,
            created,
            admin,
            token,
        };
        self.reply_to_client(id, &reply).await;
        self.deliver(vec![id], Channel::Subscriber, Wire::message(&marker))
            .await;
    }

    async fn reply_to_client(&mut self, id: ClientId, msg: &ServerMessage) {
        if let Some(identity) = self.sessions.get(&id).map(|s| s.identity.clone()) {
            self.reply_to(&identity, msg).await;
        }
    }
}

fn auth_failed(id: Option<u64>, code: ErrorCode, reason: &str) -> ServerMessage {
    ServerMessage::Auth {
        id,
        status: AuthStatus::Failed,
        protocol_version: PROTOCOL_VERSION,
        code: Some(code),
        reason: Some(reason.to_owned()),
        token: None,
        state: None,
        heartbeat_ms: None,
        timeout_ms: None,
        chunk_bytes: None,
        max_header_bytes: None,
        room: None,
        created: None,
        batches: None,
    }
}

/// A fresh session token: 128 random bits as 32 hex characters.
fn new_token() -> Bytes {
    let raw: [u8; 16] = rand::rng().random();
    Bytes::from(hex(&raw))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The data a message carried, copied out of libzmq's receive buffer when
/// the message is handled. Not a reference into it: stored data would pin
/// whole batches of that buffer (measured: 30.7 instead of 24 MiB for
/// 10,000 datablocks of 1 KB).
fn owned(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(data)
}
