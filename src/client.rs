//! A blocking Rust client of protocol v1, used by the tests and tools.
//!
//! It owns its four sockets (three DEALERs sharing one random 16-byte routing
//! identity, and a PUSH), answers the server's pings whenever it is polled,
//! reassembles chunked payloads and acknowledges snapshot windows, so callers
//! see whole messages as [`Event`]s.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::RngExt;
use rmpv::Value;
use serde::Serialize;

use crate::protocol::patch::Patch;
use crate::protocol::{
    AuthStatus, Channel, ChunkFields, CommandRequest, DatablockHeader, HeartbeatMessage,
    PROTOCOL_VERSION, PayloadSpec, ProtocolError, PublisherMessage, Role, ServerMessage,
    SnapshotStep, SubscriberRequest, UploadStatus, UploadStep, codec::encode_value, decode_header,
    encode,
};

/// Largest header the client accepts from a server.
const MAX_HEADER: usize = 64 << 20;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("socket error: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("invalid message from the server: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    #[error("the server refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("disconnected by the server: {0}")]
    Disconnected(String),
    #[error("not authenticated")]
    NotAuthenticated,
}

/// Who connects, and how.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub role: Role,
    pub admin_password: Option<String>,
    pub server_password: Option<String>,
}

impl ClientOptions {
    /// A regular user on localhost.
    pub fn new(port: u16, user: &str) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            user: user.into(),
            role: Role::Client,
            admin_password: None,
            server_password: None,
        }
    }

    /// An admin on localhost.
    pub fn admin(port: u16, user: &str, password: &str) -> Self {
        Self {
            role: Role::Admin,
            admin_password: Some(password.into()),
            ..Self::new(port, user)
        }
    }
}

/// A whole message from the server, chunks reassembled.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub channel: Channel,
    pub message: ServerMessage,
    /// The data frame (datablock data or a patch), if any.
    pub payload: Option<Bytes>,
}

/// A datablock as uploaded or downloaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub uuid: String,
    pub type_id: String,
    pub owner: Option<String>,
    pub deps: Vec<String>,
    pub data: Value,
}

/// A downloaded datablock with its server-side header.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub header: DatablockHeader,
    pub data: Bytes,
}

struct Partial {
    message: ServerMessage,
    data: BytesMut,
}

/// One connection to a server.
pub struct Client {
    options: ClientOptions,
    commands: zmq::Socket,
    subscriber: zmq::Socket,
    publisher: zmq::Socket,
    heartbeat: zmq::Socket,
    token: Option<Bytes>,
    chunk_bytes: usize,
    next_id: u64,
    next_transfer: u64,
    events: VecDeque<Event>,
    partial: HashMap<u64, Partial>,
    /// Snapshot acknowledgement state: messages and bytes since BEGIN, and
    /// when the next acknowledgement is due.
    snapshot: Option<SnapshotProgress>,
    /// Answer pings while polling (tests turn this off to play dead).
    pub answer_pings: bool,
}

#[derive(Debug, Default)]
struct SnapshotProgress {
    received: u64,
    bytes: u64,
    acked: u64,
    acked_bytes: u64,
    window: u64,
    window_bytes: u64,
}

impl Client {
    /// Opens the four sockets towards `options.host` (nothing is sent yet).
    pub fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        Self::connect_in(&zmq::Context::new(), options)
    }

    /// Like [`Client::connect`], in an existing ZeroMQ context, so that many
    /// clients in one process can share its I/O thread.
    pub fn connect_in(context: &zmq::Context, options: ClientOptions) -> Result<Self, ClientError> {
        let mut identity: [u8; 16] = rand::rng().random();
        // libzmq reserves identities that start with a zero byte.
        identity[0] = identity[0].max(1);
        let base = options.port;
        let endpoint = |offset: u16| format!("tcp://{}:{}", options.host, base + offset);
        let dealer = |offset: u16| -> Result<zmq::Socket, zmq::Error> {
            let s = context.socket(zmq::DEALER)?;
            s.set_identity(&identity)?;
            s.set_linger(0)?;
            s.connect(&endpoint(offset))?;
            Ok(s)
        };
        let commands = dealer(0)?;
        let subscriber = dealer(1)?;
        let publisher = context.socket(zmq::PUSH)?;
        // Lets queued updates reach the server when the client closes.
        publisher.set_linger(1000)?;
        publisher.connect(&endpoint(2))?;
        let heartbeat = dealer(3)?;
        Ok(Self {
            options,
            commands,
            subscriber,
            publisher,
            heartbeat,
            token: None,
            chunk_bytes: 1 << 20,
            next_id: 1,
            next_transfer: 1,
            events: VecDeque::new(),
            partial: HashMap::new(),
            snapshot: None,
            answer_pings: true,
        })
    }

    /// The session token from AUTH (the first frame of publisher messages),
    /// for tools that build publisher messages themselves.
    pub fn token(&self) -> Option<&[u8]> {
        self.token.as_deref()
    }

    /// The user name this client authenticates as.
    pub fn user(&self) -> &str {
        &self.options.user
    }

    /// Sends raw frames on a channel (the token frame is not added): for
    /// tests of bad input.
    pub fn send_raw(&self, channel: Channel, frames: &[&[u8]]) -> Result<(), ClientError> {
        let socket = self.socket(channel);
        socket.send_multipart(frames.iter().copied(), 0)?;
        Ok(())
    }

    fn socket(&self, channel: Channel) -> &zmq::Socket {
        match channel {
            Channel::Commands => &self.commands,
            Channel::Subscriber => &self.subscriber,
            Channel::Publisher => &self.publisher,
            Channel::Heartbeat => &self.heartbeat,
        }
    }

    fn send<T: Serialize>(
        &self,
        channel: Channel,
        msg: &T,
        payload: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        let header = encode(msg);
        let socket = self.socket(channel);
        if channel == Channel::Publisher {
            let token = self.token.as_ref().ok_or(ClientError::NotAuthenticated)?;
            socket.send(&token[..], zmq::SNDMORE)?;
        }
        match payload {
            Some(p) => {
                socket.send(&header[..], zmq::SNDMORE)?;
                socket.send(p, 0)?;
            }
            None => socket.send(&header[..], 0)?,
        }
        Ok(())
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

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
        };
        self.send(Channel::Commands, &request, None)?;
        match self.reply(id, timeout)?.message {
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
                ..
            } => {
                self.token = token.map(Bytes::from);
                if let Some(c) = chunk_bytes {
                    self.chunk_bytes = usize::try_from(c).unwrap_or(1 << 20).max(1);
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
            &SubscriberRequest::Snapshot { window },
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
        let id = self.next_id();
        self.send_update(block, &encode_value(&block.data), Some(id))?;
        self.ack(id, timeout)
    }

    fn send_update(
        &mut self,
        block: &Block,
        data: &[u8],
        id: Option<u64>,
    ) -> Result<(), ClientError> {
        let spec = self.payload_spec(data.len());
        let msg = PublisherMessage::Update {
            id,
            uuid: block.uuid.clone(),
            type_id: Some(block.type_id.clone()),
            owner: block.owner.clone(),
            deps: Some(block.deps.clone()),
            patch: false,
            base_revision: None,
            chunk: ChunkFields::from_spec(spec),
        };
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

    /// The next whole message, waiting at most `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        self.next_event_until(Instant::now() + timeout)
    }

    /// Waits for an event matching `pred`, keeping the others queued.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        let result = loop {
            match self.next_event_until(deadline)? {
                None => break Err(ClientError::Timeout(timeout)),
                Some(e) if pred(&e) => break Ok(e),
                Some(e) => skipped.push(e),
            }
        };
        for e in skipped.into_iter().rev() {
            self.events.push_front(e);
        }
        result
    }

    fn next_event_until(&mut self, deadline: Instant) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = i64::try_from((deadline - now).as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            self.poll_once(wait)?;
        }
    }

    /// The next message on the subscriber channel as raw frames, without
    /// decoding it; pings are still answered and command-channel messages
    /// still queued as events. For tools that only count or sample traffic.
    pub fn next_subscriber_frames(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Vec<zmq::Message>>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.subscriber.recv_msg(zmq::DONTWAIT) {
                Ok(first) => {
                    let mut more = first.get_more();
                    let mut frames = vec![first];
                    while more {
                        let part = self.subscriber.recv_msg(0)?;
                        more = part.get_more();
                        frames.push(part);
                    }
                    return Ok(Some(frames));
                }
                Err(zmq::Error::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = i64::try_from((deadline - now).as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            let mut items = [
                self.commands.as_poll_item(zmq::POLLIN),
                self.subscriber.as_poll_item(zmq::POLLIN),
                self.heartbeat.as_poll_item(zmq::POLLIN),
            ];
            zmq::poll(&mut items, wait)?;
            let (commands, heartbeat) = (items[0].is_readable(), items[2].is_readable());
            if heartbeat {
                while let Ok(frames) = self.heartbeat.recv_multipart(zmq::DONTWAIT) {
                    self.on_heartbeat(&frames)?;
                }
            }
            if commands {
                while let Ok(frames) = self.commands.recv_multipart(zmq::DONTWAIT) {
                    self.on_message(Channel::Commands, frames)?;
                }
            }
        }
    }

    /// Polls the sockets once and queues whatever arrived.
    pub fn poll_once(&mut self, timeout_ms: i64) -> Result<(), ClientError> {
        let mut items = [
            self.commands.as_poll_item(zmq::POLLIN),
            self.subscriber.as_poll_item(zmq::POLLIN),
            self.heartbeat.as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, timeout_ms)?;
        let ready = [
            items[0].is_readable(),
            items[1].is_readable(),
            items[2].is_readable(),
        ];
        if ready[2] {
            while let Ok(frames) = self.heartbeat.recv_multipart(zmq::DONTWAIT) {
                self.on_heartbeat(&frames)?;
            }
        }
        if ready[0] {
            while let Ok(frames) = self.commands.recv_multipart(zmq::DONTWAIT) {
                self.on_message(Channel::Commands, frames)?;
            }
        }
        if ready[1] {
            while let Ok(frames) = self.subscriber.recv_multipart(zmq::DONTWAIT) {
                self.on_message(Channel::Subscriber, frames)?;
            }
        }
        Ok(())
    }

    fn on_heartbeat(&mut self, frames: &[Vec<u8>]) -> Result<(), ClientError> {
        let Some(header) = frames.first() else {
            return Ok(());
        };
        if let HeartbeatMessage::Ping { seq } = decode_header(header, MAX_HEADER)? {
            if self.answer_pings {
                self.send(Channel::Heartbeat, &HeartbeatMessage::Pong { seq }, None)?;
            }
        }
        Ok(())
    }

    fn on_message(&mut self, channel: Channel, frames: Vec<Vec<u8>>) -> Result<(), ClientError> {
        let mut frames = frames.into_iter();
        let header = frames.next().unwrap_or_default();
        let payload = frames.next().map(Bytes::from);
        let message: ServerMessage = decode_header(&header, MAX_HEADER)?;
        if channel == Channel::Subscriber {
            self.count_snapshot(
                &message,
                header.len() + payload.as_ref().map_or(0, Bytes::len),
            )?;
        }
        if let ServerMessage::Chunk { transfer, index: _ } = message {
            let Some(partial) = self.partial.get_mut(&transfer) else {
                return Err(ProtocolError::Invalid(format!(
                    "chunk of unknown transfer {transfer}"
                ))
                .into());
            };
            partial
                .data
                .extend_from_slice(payload.as_deref().unwrap_or_default());
            let complete = match &partial.message {
                ServerMessage::Datablock { chunk, .. } | ServerMessage::Update { chunk, .. } => {
                    chunk.size.unwrap_or_default() <= partial.data.len() as u64
                }
                _ => true,
            };
            if complete {
                if let Some(done) = self.partial.remove(&transfer) {
                    self.events.push_back(Event {
                        channel,
                        message: done.message,
                        payload: Some(done.data.freeze()),
                    });
                }
            }
            return Ok(());
        }
        let chunked = match &message {
            ServerMessage::Datablock { chunk, .. } | ServerMessage::Update { chunk, .. } => {
                chunk.spec()?
            }
            _ => PayloadSpec::Inline,
        };
        match chunked {
            PayloadSpec::Chunked { transfer, .. } => {
                self.partial.insert(
                    transfer,
                    Partial {
                        message,
                        data: BytesMut::new(),
                    },
                );
            }
            PayloadSpec::Inline => self.events.push_back(Event {
                channel,
                message,
                payload,
            }),
        }
        Ok(())
    }

    /// Counts snapshot messages and acknowledges every half window.
    fn count_snapshot(&mut self, message: &ServerMessage, size: usize) -> Result<(), ClientError> {
        if let ServerMessage::Snapshot {
            step: SnapshotStep::Begin,
            window,
            window_bytes,
            ..
        } = message
        {
            self.snapshot = Some(SnapshotProgress {
                window: window.unwrap_or(1).max(1),
                window_bytes: window_bytes.unwrap_or(1).max(1),
                ..SnapshotProgress::default()
            });
        }
        let Some(progress) = self.snapshot.as_mut() else {
            return Ok(());
        };
        progress.received += 1;
        progress.bytes += size as u64;
        let end = matches!(
            message,
            ServerMessage::Snapshot {
                step: SnapshotStep::End,
                ..
            }
        );
        if end {
            self.snapshot = None;
            return Ok(());
        }
        if (progress.received - progress.acked) * 2 >= progress.window
            || (progress.bytes - progress.acked_bytes) * 2 >= progress.window_bytes
        {
            progress.acked = progress.received;
            progress.acked_bytes = progress.bytes;
            let received = progress.received;
            self.send(
                Channel::Subscriber,
                &SubscriberRequest::SnapshotAck { received },
                None,
            )?;
        }
        Ok(())
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
        | ServerMessage::Kick { id, .. } => *id,
        ServerMessage::Ack { id, .. } => Some(*id),
        _ => None,
    }
}

fn unexpected(message: &ServerMessage) -> ClientError {
    ClientError::Protocol(ProtocolError::Invalid(format!(
        "unexpected answer: {message:?}"
    )))
}
