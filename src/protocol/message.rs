//! Every message of protocol v2, by channel and direction.
//!
//! Client messages decode from a map whose `"type"` names the variant; keys
//! the server does not know are ignored, so that later minor versions can add
//! optional fields. Server messages encode the same way; optional fields that
//! are absent are left out of the map.

use std::collections::BTreeMap;

use rmpv::Value;
use serde::{Deserialize, Serialize};

use super::{MAX_DEPS, ProtocolError, check_name};

/// Client role requested in AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    Admin,
    Client,
}

/// The session's state: no scene yet, an admin uploading one, or live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    #[serde(rename = "WAITING")]
    Waiting,
    #[serde(rename = "SRV_SYNC")]
    SrvSync,
    #[serde(rename = "ACTIVE")]
    Active,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Waiting => "WAITING",
            Self::SrvSync => "SRV_SYNC",
            Self::Active => "ACTIVE",
        })
    }
}

/// A user's replication status, shown in CLIENTS_STATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UserStatus {
    /// Authenticated, waiting for the session to start.
    Lobby,
    /// Uploading the initial scene.
    Uploading,
    /// Downloading the scene.
    Syncing,
    /// Receiving live updates.
    Active,
}

impl std::fmt::Display for UserStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Lobby => "LOBBY",
            Self::Uploading => "UPLOADING",
            Self::Syncing => "SYNCING",
            Self::Active => "ACTIVE",
        })
    }
}

/// Answer to AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthStatus {
    /// Accepted; the session has no scene yet.
    Lobby,
    /// Accepted; the session is live: download the snapshot.
    Running,
    /// Refused; see `code` and `reason`.
    Failed,
}

/// Steps of an admin's initial upload (SERVER_SNAPSHOT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UploadStep {
    Init,
    Set,
    End,
}

/// Answers to upload steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UploadStatus {
    Accepted,
    Rejected,
    Done,
}

/// Steps of a snapshot stream sent to a joiner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SnapshotStep {
    Begin,
    Catalogue,
    End,
}

/// Machine-readable error codes, carried by ERROR and by FAILED answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Malformed,
    InvalidMessage,
    TooLarge,
    NotAuthenticated,
    AlreadyAuthenticated,
    VersionMismatch,
    WrongAdminPassword,
    WrongServerPassword,
    TooManyAttempts,
    NameTaken,
    SessionFull,
    NotAdmin,
    SessionNotActive,
    UploadInProgress,
    AlreadyInitialised,
    NoUpload,
    UnknownDatablock,
    DuplicateDatablock,
    NotOwner,
    UnknownUser,
    StaleRevision,
    PatchFailed,
    TransferFailed,
    LimitExceeded,
    /// No room of that name, and this client may not create one.
    UnknownRoom,
    /// The request needs a room and the client has left its room.
    NotInRoom,
    WrongRoomPassword,
    /// Sent by an encrypting server's key service to a client that came
    /// without encryption for anything but SERVER_KEY.
    EncryptionRequired,
}

/// Where a payload travels: in the message's data frame, or in CHUNK messages
/// that follow it on the same channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadSpec {
    Inline,
    Chunked {
        transfer: u64,
        chunks: u32,
        size: u64,
    },
}

/// Fields announcing a chunked payload, shared by every message that can carry
/// one: all three present, or none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl ChunkFields {
    /// Interprets the fields; a partial set is an error.
    pub fn spec(&self) -> Result<PayloadSpec, ProtocolError> {
        match (self.transfer, self.chunks, self.size) {
            (None, None, None) => Ok(PayloadSpec::Inline),
            (Some(transfer), Some(chunks), Some(size)) if chunks > 0 && size > 0 => {
                Ok(PayloadSpec::Chunked {
                    transfer,
                    chunks,
                    size,
                })
            }
            _ => Err(ProtocolError::Invalid(
                "a chunked payload needs transfer, chunks (> 0) and size (> 0) together".into(),
            )),
        }
    }

    /// The fields announcing `spec`.
    pub fn from_spec(spec: PayloadSpec) -> Self {
        match spec {
            PayloadSpec::Inline => Self::default(),
            PayloadSpec::Chunked {
                transfer,
                chunks,
                size,
            } => Self {
                transfer: Some(transfer),
                chunks: Some(chunks),
                size: Some(size),
            },
        }
    }
}

/// Messages a client sends on the command channel (DEALER to ROUTER).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandRequest {
    ServerInfo {
        #[serde(default)]
        id: Option<u64>,
    },
    Auth {
        #[serde(default)]
        id: Option<u64>,
        user: String,
        role: Role,
        #[serde(default)]
        admin_password: Option<String>,
        #[serde(default)]
        server_password: Option<String>,
        protocol_version: u32,
        #[serde(default)]
        metadata: Option<Value>,
        /// The room to join (created if missing and allowed); the default
        /// room when absent.
        #[serde(default)]
        room: Option<String>,
        /// The room's password; sets it when the room is created.
        #[serde(default)]
        room_password: Option<String>,
        /// The client reads UPDATES, several forwarded updates in one
        /// message.
        #[serde(default)]
        batches: bool,
    },
    /// Leaves the current room (if any) and joins, or creates, another.
    JoinRoom {
        #[serde(default)]
        id: Option<u64>,
        room: String,
        #[serde(default)]
        room_password: Option<String>,
        #[serde(default)]
        metadata: Option<Value>,
    },
    /// Leaves the current room without disconnecting.
    LeaveRoom {
        #[serde(default)]
        id: Option<u64>,
    },
    /// Changes the current room's settings (admins of the room).
    RoomSettings {
        #[serde(default)]
        id: Option<u64>,
        keep_open: bool,
    },
    ServerSnapshot {
        #[serde(default)]
        id: Option<u64>,
        step: UploadStep,
        #[serde(default)]
        uuid: Option<String>,
        #[serde(default)]
        type_id: Option<String>,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        deps: Option<Vec<String>>,
        #[serde(flatten)]
        chunk: ChunkFields,
    },
    Chunk {
        transfer: u64,
        index: u32,
    },
    Right {
        #[serde(default)]
        id: Option<u64>,
        uuids: Vec<String>,
        owner: String,
        #[serde(default)]
        force: bool,
    },
    Delete {
        #[serde(default)]
        id: Option<u64>,
        uuid: String,
        #[serde(default)]
        force: bool,
    },
    UpdateUserMetadata {
        #[serde(default)]
        id: Option<u64>,
        metadata: Value,
    },
    Kick {
        #[serde(default)]
        id: Option<u64>,
        user: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Disconnect {
        #[serde(default)]
        reason: Option<String>,
    },
    /// Proves that a new connection carrying the client's identity is the
    /// client's: the answer to the server's RESUME on that channel.
    Resume {
        token: String,
    },
}

impl CommandRequest {
    /// The wire name of this message's type, for ERROR's `refers_to`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServerInfo { .. } => "SERVER_INFO",
            Self::Auth { .. } => "AUTH",
            Self::ServerSnapshot { .. } => "SERVER_SNAPSHOT",
            Self::Chunk { .. } => "CHUNK",
            Self::Right { .. } => "RIGHT",
            Self::Delete { .. } => "DELETE",
            Self::UpdateUserMetadata { .. } => "UPDATE_USER_METADATA",
            Self::Kick { .. } => "KICK",
            Self::Disconnect { .. } => "DISCONNECT",
            Self::JoinRoom { .. } => "JOIN_ROOM",
            Self::LeaveRoom { .. } => "LEAVE_ROOM",
            Self::RoomSettings { .. } => "ROOM_SETTINGS",
            Self::Resume { .. } => "RESUME",
        }
    }

    /// The request id the client chose, echoed in the answer.
    pub fn id(&self) -> Option<u64> {
        match self {
            Self::ServerInfo { id }
            | Self::Auth { id, .. }
            | Self::ServerSnapshot { id, .. }
            | Self::Right { id, .. }
            | Self::Delete { id, .. }
            | Self::UpdateUserMetadata { id, .. }
            | Self::Kick { id, .. }
            | Self::JoinRoom { id, .. }
            | Self::LeaveRoom { id }
            | Self::RoomSettings { id, .. } => *id,
            Self::Chunk { .. } | Self::Disconnect { .. } | Self::Resume { .. } => None,
        }
    }
}

/// Messages a client sends on the publisher channel (PUSH to PULL), after the
/// frame holding its session token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PublisherMessage {
    Update {
        /// Ask for an ACK once applied; ERRORs about it carry this id.
        #[serde(default)]
        id: Option<u64>,
        uuid: String,
        #[serde(default)]
        type_id: Option<String>,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        deps: Option<Vec<String>>,
        /// The data frame holds a patch (a list of operations), not the data.
        #[serde(default)]
        patch: bool,
        /// Refuse the update unless the datablock is at this revision.
        #[serde(default)]
        base_revision: Option<u64>,
        #[serde(flatten)]
        chunk: ChunkFields,
    },
    Chunk {
        transfer: u64,
        index: u32,
    },
    /// Several updates in one message: `updates` are UPDATE headers and
    /// the data frame holds their payloads one after the other, of
    /// `lengths` bytes each. See [`crate::protocol::batch`].
    Updates {
        updates: Vec<PublisherMessage>,
        lengths: Vec<u64>,
    },
}

/// Messages a client sends on the subscriber channel (DEALER to ROUTER).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubscriberRequest {
    /// Start receiving the session: the snapshot, then live traffic.
    Snapshot {
        #[serde(default)]
        window: Option<u32>,
        /// The client reads DATABLOCKS, several snapshot datablocks in one
        /// message.
        #[serde(default)]
        batches: bool,
    },
    /// Acknowledges the first `received` messages of the snapshot stream.
    SnapshotAck { received: u64 },
    /// Asks for the server's current state of one datablock.
    Fetch {
        #[serde(default)]
        id: Option<u64>,
        uuid: String,
    },
    /// Proves a new subscriber connection, as on the commands channel.
    Resume { token: String },
}

impl SubscriberRequest {
    /// The wire name of this message's type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Snapshot { .. } => "SNAPSHOT",
            Self::SnapshotAck { .. } => "SNAPSHOT_ACK",
            Self::Fetch { .. } => "FETCH",
            Self::Resume { .. } => "RESUME",
        }
    }
}

/// Messages on the heartbeat channel, in both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HeartbeatMessage {
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// From the server, without a token: a new connection carries your
    /// identity; prove it is yours. From the client: the proof.
    Resume {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// From a client, with or without a session: how does this server
    /// encrypt, and with which key? The answer has the same type, with
    /// `encryption` (`"curve"` or `"none"`) and, when encrypted, the
    /// server's public key (Z85) and its fingerprint.
    ServerKey {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encryption: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        public_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    },
}

/// What an ERROR refers to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefersTo {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The chunked transfer concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<u64>,
}

/// One user as shown in CLIENTS_STATE and to the console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub name: String,
    pub admin: bool,
    pub status: UserStatus,
    /// Last measured round trip in milliseconds; absent before the first PONG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    pub metadata: Value,
}

/// What changed about one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserChange {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<UserStatus>,
    /// The changed keys, merged as UPDATE_USER_METADATA merges them: each
    /// replaces that key's value, and nil removes the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// One entry of a snapshot catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogueEntry {
    pub uuid: String,
    pub type_id: String,
    pub revision: u64,
    pub size: u64,
}

/// The header of a datablock as the server sends it (snapshot, fetch and
/// forwarded updates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatablockHeader {
    pub uuid: String,
    pub type_id: String,
    pub owner: String,
    pub deps: Vec<String>,
    pub revision: u64,
}

/// One room, as SERVER_INFO lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub name: String,
    pub users_online: u64,
    /// Whether joining needs a password (the server's or the room's).
    pub private: bool,
    pub state: SessionState,
    pub datablocks: u64,
    pub bytes: u64,
    pub keep_open: bool,
}

/// Messages the server sends. The channel each one uses is given in
/// docs/protocol.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerMessage {
    ServerInfo {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        protocol_version: u32,
        server_version: String,
        private: bool,
        state: SessionState,
        users_online: u64,
        datablocks: u64,
        /// Every room, the default one first.
        #[serde(default)]
        rooms: Vec<RoomInfo>,
        /// Whether any user may create a room (otherwise only admins).
        #[serde(default)]
        open_rooms: bool,
    },
    Auth {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        status: AuthStatus,
        protocol_version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<ErrorCode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<SessionState>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heartbeat_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chunk_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_header_bytes: Option<u64>,
        /// The room joined.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// True when this login created the room: it waits for this
        /// client's upload, and the client is an admin of it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created: Option<bool>,
        /// The client asked for batches and may receive UPDATES.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batches: Option<bool>,
    },
    /// The answer to JOIN_ROOM and LEAVE_ROOM: the room the client is in
    /// now (none after LEAVE_ROOM).
    Room {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<AuthStatus>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<SessionState>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        admin: Option<bool>,
        /// The new session token (answers only): publisher messages must
        /// carry it from now on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// The answer to ROOM_SETTINGS.
    RoomSettings {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        keep_open: bool,
    },
    ServerSnapshot {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        step: UploadStep,
        status: UploadStatus,
        /// Why an INIT was REJECTED: not_admin, upload_in_progress or
        /// already_initialised.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<ErrorCode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        datablocks: Option<u64>,
    },
    Snapshot {
        step: SnapshotStep,
        /// BEGIN: the window in messages and bytes; acknowledge at least
        /// every half window.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        datablocks: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entries: Option<Vec<CatalogueEntry>>,
        /// BEGIN: the stream may hold DATABLOCKS (the client asked for them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batches: Option<bool>,
    },
    Datablock {
        #[serde(flatten)]
        header: DatablockHeader,
        /// Set when this answers a FETCH.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(flatten)]
        chunk: ChunkFields,
    },
    Update {
        #[serde(flatten)]
        header: DatablockHeader,
        sender: String,
        patch: bool,
        #[serde(flatten)]
        chunk: ChunkFields,
    },
    Chunk {
        transfer: u64,
        index: u32,
    },
    /// Several forwarded updates in one message: each of `updates` is an
    /// [`ServerMessage::Update`] and the data frame holds their payloads
    /// one after the other, of `lengths` bytes each.
    Updates {
        updates: Vec<ServerMessage>,
        lengths: Vec<u64>,
    },
    /// Several snapshot datablocks in one message: each of `datablocks` is a
    /// [`ServerMessage::Datablock`] and the data frame holds their data one
    /// after the other, of `lengths` bytes each.
    Datablocks {
        datablocks: Vec<ServerMessage>,
        lengths: Vec<u64>,
    },
    /// An UPDATE that carried an `id` was applied, at this revision.
    Ack {
        id: u64,
        uuid: String,
        revision: u64,
    },
    Right {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        uuids: Vec<String>,
        owner: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
    },
    Delete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        uuid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
    },
    Kick {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        user: String,
    },
    /// Every user of the room: a joiner's first view.
    ClientsState {
        users: Vec<UserState>,
    },
    /// What changed in the room's user list since the last CLIENTS_STATE or
    /// PRESENCE this client got; empty fields are left out.
    Presence {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        joined: Vec<UserState>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changed: Vec<UserChange>,
        /// Round trips measured since, by user name.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        latency: BTreeMap<String, f64>,
    },
    Disconnect {
        reason: String,
    },
    /// A new connection carries this client's identity on this channel:
    /// nothing else goes through it until the client answers RESUME with
    /// its session token.
    Resume {},
    Error {
        code: ErrorCode,
        message: String,
        refers_to: RefersTo,
    },
}

/// A datablock description as a client announces it (UPDATE or upload SET),
/// checked for size and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    pub uuid: String,
    pub type_id: Option<String>,
    pub owner: Option<String>,
    pub deps: Option<Vec<String>>,
}

impl BlockSpec {
    /// Validates names and dependency lists.
    pub fn checked(
        uuid: String,
        type_id: Option<String>,
        owner: Option<String>,
        deps: Option<Vec<String>>,
    ) -> Result<Self, ProtocolError> {
        Self::check(&uuid, type_id.as_deref(), owner.as_deref(), deps.as_deref())?;
        Ok(Self {
            uuid,
            type_id,
            owner,
            deps,
        })
    }

    /// What [`BlockSpec::checked`] checks, on borrowed fields.
    pub fn check(
        uuid: &str,
        type_id: Option<&str>,
        owner: Option<&str>,
        deps: Option<&[String]>,
    ) -> Result<(), ProtocolError> {
        check_name("uuid", uuid)?;
        if let Some(t) = type_id {
            check_name("type_id", t)?;
        }
        if let Some(o) = owner {
            check_name("owner", o)?;
        }
        if let Some(d) = deps {
            if d.len() > MAX_DEPS {
                return Err(ProtocolError::Invalid(format!(
                    "{} dependencies; the limit is {MAX_DEPS}",
                    d.len()
                )));
            }
            for dep in d {
                check_name("dependency uuid", dep)?;
            }
        }
        Ok(())
    }
}
