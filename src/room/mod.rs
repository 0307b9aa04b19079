//! One collaborative session: its datablocks, owners, users and state, and
//! the rules that change them. Pure logic: methods take a request and return
//! the messages to deliver; the [`crate::core`] actor does the I/O.
//!
//! Every method checks everything before changing anything, so a refused
//! request leaves the room exactly as it was.

mod download;
mod edits;
mod members;
mod presence;
mod repository;
mod upload;

use std::collections::VecDeque;

use bytes::Bytes;
use rmpv::Value;

pub use download::{Download, Queued, StreamOptions};
pub use members::Member;
pub use repository::{Content, Datablock, Repository};

use crate::config::Limits;
use crate::protocol::batch::BatchLimits;
use crate::protocol::patch::Patch;
use crate::protocol::wire::{catalogue_page, with_payload};
use crate::protocol::{
    AuthStatus, BlockSpec, COMMON, Channel, ErrorCode, ServerMessage, SessionState, SnapshotStep,
    UploadStatus, UploadStep, UserState, UserStatus, Wire, codec::decode_value,
};
use crate::store::{Change, SessionImage, StoredBlock};

/// Identifies a connected client for the lifetime of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// The reason a client that cannot keep up is disconnected with.
pub const TOO_SLOW: &str = "too slow";

/// Catalogue entries per CATALOGUE message.
const CATALOGUE_PAGE: usize = 1024;

/// A datablock of a snapshot stream being captured: inline (where its
/// header lies in the shared header buffer, and its data), or already
/// split into chunks.
enum Pending {
    Inline(std::ops::Range<usize>, Bytes),
    Chunked(Vec<Wire>),
}

/// Most data in one DATABLOCKS of a snapshot stream (capped by
/// `chunk_bytes`). The window bounds what is in flight, so batches can be
/// larger than live ones; these are large enough that a message's fixed
/// cost is shared by tens of datablocks, and small enough that the
/// stream starts flowing at once.
const SNAPSHOT_BATCH_DATA: usize = 256 * 1024;

/// A refused request: what to tell the sender.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RoomError {
    pub code: ErrorCode,
    pub message: String,
    /// For a refusal because someone else holds a datablock: which one, and
    /// who, for the log.
    pub held: Option<Held>,
}

/// A datablock and the user who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub datablock: String,
    pub owner: String,
}

impl RoomError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            held: None,
        }
    }
}

/// A datablock held by a user (not COMMON), for `locks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomLock {
    pub uuid: String,
    pub type_id: String,
    pub owner: String,
    /// When its current owner got it.
    pub since: std::time::SystemTime,
}

/// Messages the room wants delivered, and clients it wants disconnected.
#[derive(Debug, Default)]
pub struct Effects {
    pub deliveries: Vec<Delivery>,
    /// Clients to disconnect, with the reason they are told.
    pub disconnect: Vec<(ClientId, String)>,
    /// The user list or someone's presence changed: PRESENCE is due.
    pub presence_changed: bool,
    /// Accepted changes to record before the deliveries go out (only when
    /// the room is recording).
    pub changes: Vec<Change>,
    /// Snapshot streams that started, and how long each one that finished
    /// took (for the metrics).
    pub streams_started: usize,
    pub streams_finished: Vec<std::time::Duration>,
}

impl Effects {
    fn send(&mut self, to: ClientId, channel: Channel, wire: Wire) {
        self.deliveries.push(Delivery {
            to: vec![to],
            channel,
            wire,
        });
    }

    fn reply(&mut self, to: ClientId, msg: &ServerMessage) {
        self.send(to, Channel::Commands, Wire::message(msg));
    }
}

/// One message for one or more clients on one channel, encoded once.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub to: Vec<ClientId>,
    pub channel: Channel,
    pub wire: Wire,
}

/// A summary for the console's `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomStatus {
    pub state: SessionState,
    pub datablocks: usize,
    pub bytes: usize,
    pub users: usize,
}

/// One session.
#[derive(Debug)]
pub struct Room {
    /// The room's name, for the log.
    name: String,
    state: SessionState,
    repository: Repository,
    members: members::Members,
    /// The admin uploading the initial scene, while SRV_SYNC.
    uploader: Option<ClientId>,
    limits: Limits,
    /// Transfer ids for payloads the server sends in chunks.
    next_transfer: u64,
    /// Whether accepted changes are returned in [`Effects::changes`].
    recording: bool,
    /// Where forwarded UPDATE headers are written before they are copied
    /// out at their exact size (a `Bytes` made from a `Vec` with spare
    /// capacity costs a second allocation).
    scratch: Vec<u8>,
    /// Changes to the user list not told yet.
    presence: presence::Pending,
}

impl Room {
    pub fn new(limits: Limits) -> Self {
        Self {
            name: String::new(),
            state: SessionState::Waiting,
            repository: Repository::default(),
            members: members::Members::default(),
            uploader: None,
            limits,
            next_transfer: 1,
            recording: false,
            scratch: Vec::new(),
            presence: presence::Pending::default(),
        }
    }

    /// A live session holding `image`, as recorded or saved. Owners are
    /// reset to COMMON: nobody is connected yet.
    pub fn restore(limits: Limits, image: SessionImage) -> Self {
        let mut room = Self::new(limits);
        for block in image.blocks {
            room.repository.restore(block);
        }
        room.state = SessionState::Active;
        room
    }

    /// Names the room in its log lines.
    pub fn set_name(&mut self, name: &str) {
        name.clone_into(&mut self.name);
    }

    /// Every datablock a user holds, the longest held first.
    pub fn locks(&self) -> Vec<RoomLock> {
        let mut locks: Vec<RoomLock> = self
            .repository
            .held()
            .map(|(uuid, b)| RoomLock {
                uuid: uuid.to_owned(),
                type_id: b.type_id.clone(),
                owner: b.owner.clone(),
                since: b.since,
            })
            .collect();
        locks.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.uuid.cmp(&b.uuid)));
        locks
    }

    /// Turns recording of accepted changes on or off.
    pub fn set_recording(&mut self, recording: bool) {
        self.recording = recording;
    }

    /// The whole scene, for saving: every datablock at its current
    /// revision, in snapshot order. `None` until the session is ACTIVE.
    pub fn image(&mut self) -> Option<SessionImage> {
        if self.state != SessionState::Active {
            return None;
        }
        let order: Vec<String> = self
            .repository
            .snapshot_order()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let blocks = order
            .iter()
            .filter_map(|uuid| self.stored_block(uuid))
            .collect();
        Some(SessionImage { blocks })
    }

    /// One datablock as stored, encoding it if patches changed it.
    fn stored_block(&mut self, uuid: &str) -> Option<StoredBlock> {
        self.repository.edit(uuid, |b| StoredBlock {
            uuid: uuid.to_owned(),
            type_id: b.type_id.clone(),
            owner: b.owner.clone(),
            deps: b.deps.clone(),
            revision: b.revision,
            data: b.content.encoded(),
        })
    }

    /// Adds a change to record, when recording.
    fn record(&self, fx: &mut Effects, change: impl FnOnce() -> Change) {
        if self.recording {
            fx.changes.push(change());
        }
    }

    /// Checks that the room's data may grow from `before` to `after` bytes
    /// for one datablock.
    fn check_room_bytes(&self, before: usize, after: usize) -> Result<(), RoomError> {
        let total = self.repository.bytes() - before.min(self.repository.bytes()) + after;
        if after > before && total > self.limits.max_room_bytes {
            return Err(RoomError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the room would hold {total} bytes of data; its limit is {} bytes",
                    self.limits.max_room_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Records a datablock's full state, when recording.
    fn record_put(&mut self, fx: &mut Effects, uuid: &str) {
        if self.recording
            && let Some(block) = self.stored_block(uuid)
        {
            self.repository.edit(uuid, |b| b.recorded_patch_bytes = 0);
            fx.changes.push(Change::Put(block));
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn member(&self, id: ClientId) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn find_user(&self, name: &str) -> Option<ClientId> {
        self.members.find(name)
    }

    pub fn status(&self) -> RoomStatus {
        RoomStatus {
            state: self.state,
            datablocks: self.repository.len(),
            bytes: self.repository.bytes(),
            users: self.members.len(),
        }
    }

    /// Every user, in join order.
    pub fn users(&self) -> Vec<UserState> {
        self.members.states()
    }

    /// Every connected client, in join order.
    pub fn client_ids(&self) -> Vec<ClientId> {
        self.members.ids()
    }

    /// What the users are to be told about each other now: the whole list
    /// for those who joined since the last time, the changes for the
    /// others. Empty when nothing changed.
    pub fn presence(&mut self) -> Vec<Delivery> {
        let messages = self.presence.messages(&mut self.members);
        [messages.whole, messages.changes]
            .into_iter()
            .flatten()
            .map(|(to, msg)| Delivery {
                to,
                channel: Channel::Commands,
                wire: Wire::message(&msg),
            })
            .collect()
    }

    /// A heartbeat round measured latencies: they go with the next
    /// changes.
    pub fn latencies_measured(&mut self) {
        self.presence.latency();
    }

    /// Whether a user of this name, with this presence metadata, may join
    /// now (checked before a client leaves its room for this one).
    pub fn can_join(&self, name: &str, metadata: Option<&Value>) -> Result<(), RoomError> {
        if name.eq_ignore_ascii_case(COMMON) {
            return Err(RoomError::new(
                ErrorCode::InvalidMessage,
                format!("the user name {COMMON} is reserved"),
            ));
        }
        if self.members.find(name).is_some() {
            return Err(RoomError::new(
                ErrorCode::NameTaken,
                format!("the user name {name:?} is already in use in this room"),
            ));
        }
        if self.members.len() >= self.limits.max_users {
            return Err(RoomError::new(
                ErrorCode::SessionFull,
                format!("the room is full ({} users)", self.limits.max_users),
            ));
        }
        if let Some(metadata) = metadata {
            Member::new(name, false)
                .merge_metadata(metadata.clone(), self.limits.max_metadata_bytes)?;
        }
        Ok(())
    }

    /// Whether nobody is in the room.
    pub fn is_empty(&self) -> bool {
        self.members.len() == 0
    }

    /// Admits a user. The caller authenticated them.
    pub fn join(
        &mut self,
        id: ClientId,
        name: &str,
        admin: bool,
        metadata: Option<Value>,
    ) -> Result<AuthStatus, RoomError> {
        self.can_join(name, None)?;
        let mut member = Member::new(name, admin);
        if let Some(metadata) = metadata {
            member.merge_metadata(metadata, self.limits.max_metadata_bytes)?;
        }
        self.members.add(id, member);
        self.presence.joined(id);
        Ok(match self.state {
            SessionState::Active => AuthStatus::Running,
            SessionState::Waiting | SessionState::SrvSync => AuthStatus::Lobby,
        })
    }

    /// Removes a client (left, kicked, timed out, too slow). Everything it
    /// owned becomes COMMON and the others are told.
    pub fn leave(&mut self, id: ClientId) -> Effects {
        let mut fx = Effects::default();
        let Some(member) = self.members.remove(id) else {
            return fx;
        };
        self.presence.left(id, &member.name);
        if self.uploader == Some(id) {
            tracing::warn!(user = %member.name, "uploader left during the initial upload; the partial scene is discarded");
            self.uploader = None;
            let bytes = self.repository.bytes();
            crate::memory::release(self.repository.clear(), bytes);
            self.state = SessionState::Waiting;
            self.record(&mut fx, || Change::Clear);
            self.record(&mut fx, || Change::State(SessionState::Waiting));
        }
        let released = self.repository.reassign(&member.name, COMMON);
        if !released.is_empty() {
            tracing::debug!(
                room = %self.name,
                user = %member.name,
                datablocks = released.len(),
                "ownership: released what the leaving user held"
            );
            self.record(&mut fx, || Change::Owner {
                uuids: released.clone(),
                owner: COMMON.to_owned(),
            });
            let msg = ServerMessage::Right {
                id: None,
                uuids: released,
                owner: COMMON.to_owned(),
                sender: Some(member.name.clone()),
            };
            self.broadcast(None, Wire::message(&msg), &mut fx);
        }
        fx.presence_changed = true;
        fx
    }

    /// The client asks for the session on its subscriber channel. When the
    /// session is live its download starts now; in the lobby it starts when
    /// the upload completes. The uploader, live since its END, may ask too
    /// and then gets the whole scene again.
    pub fn subscribe(
        &mut self,
        id: ClientId,
        options: StreamOptions,
    ) -> Result<Effects, RoomError> {
        let member = self.members.get_mut(id).ok_or_else(not_member)?;
        if member.requested {
            return Err(RoomError::new(
                ErrorCode::InvalidMessage,
                "SNAPSHOT was already requested on this connection",
            ));
        }
        member.requested = true;
        member.subscribed = true;
        member.stream = options;
        let mut fx = Effects::default();
        if self.state == SessionState::Active {
            self.start_download(id, &mut fx);
        }
        Ok(fx)
    }

    /// Marks a member that came from another room (see [`Member::switched`]).
    pub fn arrived_from_another_room(&mut self, id: ClientId) {
        if let Some(member) = self.members.get_mut(id) {
            member.switched = true;
        }
    }

    /// Snapshot acknowledgement from a downloading client.
    pub fn acknowledge(&mut self, id: ClientId, received: u64) -> Result<Effects, RoomError> {
        let member = self.members.get_mut(id).ok_or_else(not_member)?;
        if member.switched && !member.requested {
            // The previous room's, still in flight when the client switched.
            return Ok(Effects::default());
        }
        let Some(download) = member.download.as_mut() else {
            // The whole stream may be out before the last acknowledgements
            // arrive: those are fine, anything beyond the stream is not.
            if member.subscribed && received <= member.snapshot_sent {
                return Ok(Effects::default());
            }
            return Err(RoomError::new(
                ErrorCode::InvalidMessage,
                format!(
                    "acknowledged {received} snapshot messages but {} were sent",
                    member.snapshot_sent
                ),
            ));
        };
        let released = download
            .acknowledge(received)
            .map_err(|m| RoomError::new(ErrorCode::InvalidMessage, m))?;
        let mut fx = Effects::default();
        self.deliver_released(id, released, &mut fx);
        Ok(fx)
    }

    /// True when some member's download has messages its window lets go
    /// now: [`Room::continue_downloads`] has work.
    pub fn downloads_ready(&self) -> bool {
        self.members
            .iter()
            .any(|(_, m)| m.download.as_ref().is_some_and(Download::ready))
    }

    /// Releases the next slice of every download that may send more.
    pub fn continue_downloads(&mut self) -> Effects {
        let ready: Vec<ClientId> = self
            .members
            .iter()
            .filter(|(_, m)| m.download.as_ref().is_some_and(Download::ready))
            .map(|(id, _)| id)
            .collect();
        let mut fx = Effects::default();
        for id in ready {
            let released = self
                .members
                .get_mut(id)
                .and_then(|m| m.download.as_mut())
                .map(Download::pump);
            if let Some(released) = released {
                self.deliver_released(id, released, &mut fx);
            }
        }
        fx
    }

    fn start_download(&mut self, id: ClientId, fx: &mut Effects) {
        let max = self.limits.snapshot_window_messages;
        let Some(options) = self.members.get(id).map(|m| m.stream) else {
            return;
        };
        let window = options.window.map_or(max, |w| (w.max(1) as usize).min(max));
        let queue = self.snapshot_stream(window, options.batches);
        let batches = options.batches.then(|| BatchLimits {
            max_data: self.limits.chunk_bytes.min(SNAPSHOT_BATCH_DATA),
            max_header: self.limits.max_header_bytes,
        });
        let limits = &self.limits;
        let Some(member) = self.members.get_mut(id) else {
            return;
        };
        member.status = UserStatus::Syncing;
        member.stream_started = Some(std::time::Instant::now());
        fx.streams_started += 1;
        let mut download = Download::new(queue, window, limits.snapshot_window_bytes, batches);
        let released = download.pump();
        member.download = Some(download);
        fx.presence_changed = true;
        self.deliver_released(id, released, fx);
    }

    fn deliver_released(&mut self, id: ClientId, released: download::Released, fx: &mut Effects) {
        for wire in released.wires {
            fx.send(id, Channel::Subscriber, wire);
        }
        if released.finished
            && let Some(member) = self.members.get_mut(id)
        {
            member.snapshot_sent = member.download.as_ref().map_or(0, Download::sent);
            member.download = None;
            if let Some(started) = member.stream_started.take() {
                fx.streams_finished.push(started.elapsed());
            }
            member.status = UserStatus::Active;
            fx.presence_changed = true;
        }
    }

    /// Captures the whole session as a stream: BEGIN, the catalogue, every
    /// datablock (dependencies first), END. `batches` is only announced in
    /// BEGIN here: the download gathers the datablocks into DATABLOCKS as
    /// it sends them.
    fn snapshot_stream(&mut self, window: usize, batches: bool) -> VecDeque<Queued> {
        // Encoding patched datablocks first settles their sizes before BEGIN
        // and the catalogue announce them.
        self.repository.settle();
        let limits = &self.limits;
        let next_transfer = &mut self.next_transfer;
        let order = self.repository.in_snapshot_order();
        let pages = order.len().div_ceil(CATALOGUE_PAGE);
        let mut stream = VecDeque::with_capacity(order.len() + pages + 2);
        stream.push_back(Queued::Message(Wire::message(&ServerMessage::Snapshot {
            step: SnapshotStep::Begin,
            window: Some(window as u64),
            window_bytes: Some(limits.snapshot_window_bytes as u64),
            datablocks: Some(order.len() as u64),
            bytes: Some(self.repository.bytes() as u64),
            entries: None,
            batches: batches.then_some(true),
        })));
        for page in order.chunks(CATALOGUE_PAGE) {
            stream.push_back(Queued::Message(catalogue_page(page.iter().map(
                |&(uuid, b)| {
                    (
                        uuid,
                        b.type_id.as_str(),
                        b.revision,
                        b.content.size() as u64,
                    )
                },
            ))));
        }
        // Every inline datablock's header is written into one buffer, which
        // their queued entries share: a late join of 10,000 datablocks then
        // makes one allocation for them rather than 10,000.
        let mut headers = Vec::with_capacity(order.len() * 96);
        let mut pending = Vec::with_capacity(order.len());
        for &(uuid, block) in &order {
            let data = block.content.settled().cloned().unwrap_or_default();
            if data.len() > limits.chunk_bytes {
                // Chunked: a header announcing the chunks, then the CHUNKs.
                let transfer = *next_transfer;
                *next_transfer += 1;
                let wires = with_payload(
                    |chunk| ServerMessage::Datablock {
                        header: block.header(uuid),
                        id: None,
                        chunk,
                    },
                    data,
                    limits.chunk_bytes,
                    transfer,
                );
                pending.push(Pending::Chunked(wires));
                continue;
            }
            let start = headers.len();
            block.fields(uuid).write_header(&mut headers);
            pending.push(Pending::Inline(start..headers.len(), data));
        }
        let headers = Bytes::from(headers);
        for item in pending {
            match item {
                Pending::Chunked(wires) => stream.extend(wires.into_iter().map(Queued::Message)),
                Pending::Inline(span, data) => stream.push_back(Queued::Datablock {
                    header: headers.slice(span),
                    data,
                }),
            }
        }
        stream.push_back(Queued::Message(Wire::message(&ServerMessage::Snapshot {
            step: SnapshotStep::End,
            window: None,
            window_bytes: None,
            datablocks: Some(order.len() as u64),
            bytes: None,
            entries: None,
            batches: None,
        })));
        stream
    }

    /// A DATABLOCK message (and its chunks) for one datablock.
    fn datablock_wires(&mut self, uuid: &str, id: Option<u64>) -> Vec<Wire> {
        let transfer = self.next_transfer;
        let Some((header, payload)) = self
            .repository
            .edit(uuid, |b| (b.header(uuid), b.content.encoded()))
        else {
            return Vec::new();
        };
        if payload.len() > self.limits.chunk_bytes {
            self.next_transfer += 1;
        }
        with_payload(
            |chunk| ServerMessage::Datablock { header, id, chunk },
            payload,
            self.limits.chunk_bytes,
            transfer,
        )
    }

    /// Sends `wire` on the subscriber channel to every subscribed client but
    /// `except`: directly to live ones, held back behind the snapshot for
    /// downloading ones.
    fn broadcast(&mut self, except: Option<ClientId>, wire: Wire, fx: &mut Effects) {
        let mut live = Vec::with_capacity(self.members.len());
        let (max_messages, max_bytes) = (
            self.limits.outbox_max_messages,
            self.limits.outbox_max_bytes,
        );
        for (id, member) in self.members.iter_mut() {
            if Some(id) == except || !member.subscribed {
                continue;
            }
            // Some(within limits) for a downloading client, None for others.
            let held = member
                .download
                .as_mut()
                .map(|download| download.hold(wire.clone(), max_messages, max_bytes));
            match held {
                Some(true) => {}
                Some(false) => fx.disconnect.push((id, TOO_SLOW.to_owned())),
                None if self.state == SessionState::Active => live.push(id),
                None => {}
            }
        }
        if !live.is_empty() {
            fx.deliveries.push(Delivery {
                to: live,
                channel: Channel::Subscriber,
                wire,
            });
        }
    }

    /// Merges presence metadata into the user's map.
    pub fn set_metadata(&mut self, id: ClientId, metadata: Value) -> Result<Effects, RoomError> {
        let max = self.limits.max_metadata_bytes;
        let member = self.members.get_mut(id).ok_or_else(not_member)?;
        let changed = member.merge_metadata(metadata, max)?;
        self.presence.metadata(id, changed);
        Ok(Effects {
            presence_changed: true,
            ..Effects::default()
        })
    }

    /// Records a measured round trip.
    pub fn set_latency(&mut self, id: ClientId, latency_ms: f64) {
        if let Some(m) = self.members.get_mut(id) {
            m.latency_ms = Some(latency_ms);
        }
    }

    /// Checks that `by` (None for the console) may kick `target`; returns the
    /// client to disconnect. The caller then disconnects it and calls
    /// [`Room::leave`].
    pub fn kick_target(&self, by: Option<ClientId>, target: &str) -> Result<ClientId, RoomError> {
        if let Some(by) = by {
            let member = self.members.get(by).ok_or_else(not_member)?;
            if !member.admin {
                return Err(RoomError::new(
                    ErrorCode::NotAdmin,
                    "only an admin may kick users",
                ));
            }
        }
        self.members.find(target).ok_or_else(|| {
            RoomError::new(
                ErrorCode::UnknownUser,
                format!("no user named {target:?} is in the session"),
            )
        })
    }

    fn require_active(&self) -> Result<(), RoomError> {
        if self.state == SessionState::Active {
            Ok(())
        } else {
            Err(RoomError::new(
                ErrorCode::SessionNotActive,
                format!("the session is {}; wait until it is ACTIVE", self.state),
            ))
        }
    }
}

fn not_member() -> RoomError {
    RoomError::new(
        ErrorCode::NotAuthenticated,
        "this client is not in the session",
    )
}

#[cfg(test)]
mod record_tests;
#[cfg(test)]
mod tests;
