//! Property tests for the wire codec (`protocol::codec`, `protocol::message`,
//! `protocol::wire`).
//!
//! 1. Every message of every channel round-trips through `encode` and
//!    `decode_header`.
//! 2. Encoded messages follow the Python-client contract: a map with string
//!    keys and a `"type"` naming the variant in SCREAMING_SNAKE_CASE (and what
//!    a Python client sends — optional keys left out, keys in any order,
//!    unknown keys — decodes the same).
//! 3. No decoder panics, on random bytes or on mutated valid frames, and
//!    the readers that skip serde's buffering (UPDATE on the server,
//!    SNAPSHOT and DATABLOCKS in the client) agree with the enums on all of
//!    them.
//! 4. `validate_value` agrees with rmpv.
//! 5. `wire::with_payload` slices payloads into chunks correctly.
//!
//! Known asymmetries, excluded from the round-trip generators:
//! - `Option<rmpv::Value>` fields (AUTH's `metadata`): `Some(Value::Nil)`
//!   encodes as `nil`, which serde reads back as `None`. Metadata is generated
//!   as a map only there.
//! - NaN floats are never generated: `NaN != NaN`.
//! - Not an asymmetry of `encode`, but of what clients may send: every
//!   `nil` top-level field of a client message may be left out instead,
//!   except UPDATE_USER_METADATA's `metadata`, which is required even when
//!   `nil` (see `check_lenient_decoding`).
//!
//! The nesting tests pin that `validate_value` and the decoders that run
//! after it agree on the same depth bound.

use std::collections::BTreeSet;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::num::f64 as pf64;
use proptest::option::of as opt;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use replication_serve::protocol::codec::{decode_value, encode_value, header_type};
use replication_serve::protocol::patch::Patch;
use replication_serve::protocol::wire::with_payload;
use replication_serve::protocol::{
    AuthStatus, CatalogueEntry, ChunkFields, CommandRequest, DatablockHeader, ErrorCode,
    HeartbeatMessage, MAX_DEPTH, PayloadSpec, PublisherMessage, RefersTo, Role, RoomInfo,
    ServerMessage, SessionState, SnapshotStep, SubscriberRequest, UploadStatus, UploadStep,
    UserChange, UserState, UserStatus, decode_header, decode_publisher, decode_server, encode,
    validate_value,
};
use rmpv::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------
// Generators: field values
// ---------------------------------------------------------------------------

/// Any text, including control characters, newlines and non-BMP characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(?s).{0,12}",
        1 => "[a-zA-Z0-9_-]{1,8}",
        1 => Just(String::new()),
    ]
}

fn names() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..5)
}

/// Finite floats of every class (never NaN or infinite).
fn finite_f64() -> impl Strategy<Value = f64> {
    pf64::NORMAL | pf64::SUBNORMAL | pf64::ZERO | pf64::POSITIVE | pf64::NEGATIVE
}

/// Scalar MessagePack values of every kind (no NaN).
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f32>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::F32),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(Value::F64),
        text().prop_map(Value::from),
        vec(any::<u8>(), 0..12).prop_map(Value::Binary),
        (any::<i8>(), vec(any::<u8>(), 0..20)).prop_map(|(t, d)| Value::Ext(t, d)),
    ]
}

fn string_map(inner: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    // A Vec, not a BTreeMap: repeated keys are legal MessagePack and must
    // survive the round trip too.
    vec((text(), inner), 0..5)
        .prop_map(|kv| Value::Map(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect()))
}

/// Metadata: nested values whose maps all have string keys.
fn metadata_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5).prop_map(Value::Array),
                string_map(inner),
            ]
        })
        .boxed()
}

/// Metadata that is a map at the top level (see the module doc).
fn metadata_map() -> impl Strategy<Value = Value> {
    string_map(metadata_value())
}

/// Any value at all: map keys of any kind, nested up to `depth` containers.
fn any_value(depth: u32) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((inner.clone(), inner), 0..5).prop_map(Value::Map),
        ]
    })
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Admin), Just(Role::Client)]
}

fn room_info() -> impl Strategy<Value = RoomInfo> {
    (
        text(),
        any::<u64>(),
        any::<bool>(),
        session_state(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(name, users_online, private, state, datablocks, bytes, keep_open)| RoomInfo {
                name,
                users_online,
                private,
                state,
                datablocks,
                bytes,
                keep_open,
            },
        )
}

fn session_state() -> impl Strategy<Value = SessionState> {
    prop_oneof![
        Just(SessionState::Waiting),
        Just(SessionState::SrvSync),
        Just(SessionState::Active),
    ]
}

fn user_status() -> impl Strategy<Value = UserStatus> {
    prop_oneof![
        Just(UserStatus::Lobby),
        Just(UserStatus::Uploading),
        Just(UserStatus::Syncing),
        Just(UserStatus::Active),
    ]
}

fn auth_status() -> impl Strategy<Value = AuthStatus> {
    prop_oneof![
        Just(AuthStatus::Lobby),
        Just(AuthStatus::Running),
        Just(AuthStatus::Failed),
    ]
}

fn upload_step() -> impl Strategy<Value = UploadStep> {
    prop_oneof![
        Just(UploadStep::Init),
        Just(UploadStep::Set),
        Just(UploadStep::End),
    ]
}

fn upload_status() -> impl Strategy<Value = UploadStatus> {
    prop_oneof![
        Just(UploadStatus::Accepted),
        Just(UploadStatus::Rejected),
        Just(UploadStatus::Done),
    ]
}

fn snapshot_step() -> impl Strategy<Value = SnapshotStep> {
    prop_oneof![
        Just(SnapshotStep::Begin),
        Just(SnapshotStep::Catalogue),
        Just(SnapshotStep::End),
    ]
}

const ALL_ERROR_CODES: [ErrorCode; 28] = [
    ErrorCode::Malformed,
    ErrorCode::InvalidMessage,
    ErrorCode::TooLarge,
    ErrorCode::NotAuthenticated,
    ErrorCode::AlreadyAuthenticated,
    ErrorCode::VersionMismatch,
    ErrorCode::WrongAdminPassword,
    ErrorCode::WrongServerPassword,
    ErrorCode::TooManyAttempts,
    ErrorCode::NameTaken,
    ErrorCode::SessionFull,
    ErrorCode::NotAdmin,
    ErrorCode::SessionNotActive,
    ErrorCode::UploadInProgress,
    ErrorCode::AlreadyInitialised,
    ErrorCode::NoUpload,
    ErrorCode::UnknownDatablock,
    ErrorCode::DuplicateDatablock,
    ErrorCode::NotOwner,
    ErrorCode::UnknownUser,
    ErrorCode::StaleRevision,
    ErrorCode::PatchFailed,
    ErrorCode::TransferFailed,
    ErrorCode::LimitExceeded,
    ErrorCode::UnknownRoom,
    ErrorCode::NotInRoom,
    ErrorCode::WrongRoomPassword,
    ErrorCode::EncryptionRequired,
];

/// Exhaustive on purpose: adding an ErrorCode fails to compile here, as a
/// reminder to add it to `ALL_ERROR_CODES` and to `error_code_wire_name`.
fn error_code_wire_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Malformed => "malformed",
        ErrorCode::InvalidMessage => "invalid_message",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::NotAuthenticated => "not_authenticated",
        ErrorCode::AlreadyAuthenticated => "already_authenticated",
        ErrorCode::VersionMismatch => "version_mismatch",
        ErrorCode::WrongAdminPassword => "wrong_admin_password",
        ErrorCode::WrongServerPassword => "wrong_server_password",
        ErrorCode::TooManyAttempts => "too_many_attempts",
        ErrorCode::NameTaken => "name_taken",
        ErrorCode::SessionFull => "session_full",
        ErrorCode::NotAdmin => "not_admin",
        ErrorCode::SessionNotActive => "session_not_active",
        ErrorCode::UploadInProgress => "upload_in_progress",
        ErrorCode::AlreadyInitialised => "already_initialised",
        ErrorCode::NoUpload => "no_upload",
        ErrorCode::UnknownDatablock => "unknown_datablock",
        ErrorCode::DuplicateDatablock => "duplicate_datablock",
        ErrorCode::NotOwner => "not_owner",
        ErrorCode::UnknownUser => "unknown_user",
        ErrorCode::StaleRevision => "stale_revision",
        ErrorCode::PatchFailed => "patch_failed",
        ErrorCode::TransferFailed => "transfer_failed",
        ErrorCode::LimitExceeded => "limit_exceeded",
        ErrorCode::UnknownRoom => "unknown_room",
        ErrorCode::NotInRoom => "not_in_room",
        ErrorCode::WrongRoomPassword => "wrong_room_password",
        ErrorCode::EncryptionRequired => "encryption_required",
    }
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ALL_ERROR_CODES.to_vec())
}

/// Chunk fields: all present, none present, or any partial set (which must
/// round-trip too: `spec()` rejects it later, not the decoder).
fn chunk_fields() -> impl Strategy<Value = ChunkFields> {
    prop_oneof![
        Just(ChunkFields::default()),
        (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(t, c, s)| ChunkFields {
            transfer: Some(t),
            chunks: Some(c),
            size: Some(s),
        }),
        (opt(any::<u64>()), opt(any::<u32>()), opt(any::<u64>())).prop_map(
            |(transfer, chunks, size)| ChunkFields {
                transfer,
                chunks,
                size,
            }
        ),
    ]
}

fn datablock_header() -> impl Strategy<Value = DatablockHeader> {
    (text(), text(), text(), names(), any::<u64>()).prop_map(
        |(uuid, type_id, owner, deps, revision)| DatablockHeader {
            uuid,
            type_id,
            owner,
            deps,
            revision,
        },
    )
}

fn catalogue_entry() -> impl Strategy<Value = CatalogueEntry> {
    (text(), text(), any::<u64>(), any::<u64>()).prop_map(|(uuid, type_id, revision, size)| {
        CatalogueEntry {
            uuid,
            type_id,
            revision,
            size,
        }
    })
}

fn user_state() -> impl Strategy<Value = UserState> {
    (
        text(),
        any::<bool>(),
        user_status(),
        opt(finite_f64()),
        metadata_value(),
    )
        .prop_map(|(name, admin, status, latency_ms, metadata)| UserState {
            name,
            admin,
            status,
            latency_ms,
            metadata,
        })
}

fn refers_to() -> impl Strategy<Value = RefersTo> {
    (
        opt(text()),
        opt(any::<u64>()),
        opt(text()),
        opt(any::<u64>()),
    )
        .prop_map(|(kind, id, uuid, transfer)| RefersTo {
            kind,
            id,
            uuid,
            transfer,
        })
}

// ---------------------------------------------------------------------------
// Generators: messages (one arm per variant)
// ---------------------------------------------------------------------------

fn command_request() -> BoxedStrategy<CommandRequest> {
    let id = || opt(any::<u64>());
    prop_oneof![
        id().prop_map(|id| CommandRequest::ServerInfo { id }),
        (
            id(),
            text(),
            role(),
            opt(text()),
            opt(text()),
            any::<u32>(),
            opt(metadata_map()),
            opt(text()),
            opt(text()),
            any::<bool>(),
        )
            .prop_map(
                |(
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
                )| {
                    CommandRequest::Auth {
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
                    }
                }
            ),
        (id(), text(), opt(text()), opt(metadata_map())).prop_map(
            |(id, room, room_password, metadata)| CommandRequest::JoinRoom {
                id,
                room,
                room_password,
                metadata,
            }
        ),
        id().prop_map(|id| CommandRequest::LeaveRoom { id }),
        (id(), any::<bool>())
            .prop_map(|(id, keep_open)| CommandRequest::RoomSettings { id, keep_open }),
        (
            id(),
            upload_step(),
            opt(text()),
            opt(text()),
            opt(text()),
            opt(names()),
            chunk_fields(),
        )
            .prop_map(|(id, step, uuid, type_id, owner, deps, chunk)| {
                CommandRequest::ServerSnapshot {
                    id,
                    step,
                    uuid,
                    type_id,
                    owner,
                    deps,
                    chunk,
                }
            }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(transfer, index)| CommandRequest::Chunk { transfer, index }),
        (id(), names(), text(), any::<bool>()).prop_map(|(id, uuids, owner, force)| {
            CommandRequest::Right {
                id,
                uuids,
                owner,
                force,
            }
        }),
        (id(), text(), any::<bool>()).prop_map(|(id, uuid, force)| CommandRequest::Delete {
            id,
            uuid,
            force
        }),
        // Not optional here, so any value (even nil) round-trips.
        (id(), metadata_value())
            .prop_map(|(id, metadata)| CommandRequest::UpdateUserMetadata { id, metadata }),
        (id(), text(), opt(text())).prop_map(|(id, user, reason)| CommandRequest::Kick {
            id,
            user,
            reason
        }),
        opt(text()).prop_map(|reason| CommandRequest::Disconnect { reason }),
        text().prop_map(|token| CommandRequest::Resume { token }),
    ]
    .boxed()
}

fn publisher_message() -> BoxedStrategy<PublisherMessage> {
    prop_oneof![
        (
            opt(any::<u64>()),
            text(),
            opt(text()),
            opt(text()),
            opt(names()),
            any::<bool>(),
            opt(any::<u64>()),
            chunk_fields(),
        )
            .prop_map(
                |(id, uuid, type_id, owner, deps, patch, base_revision, chunk)| {
                    PublisherMessage::Update {
                        id,
                        uuid,
                        type_id,
                        owner,
                        deps,
                        patch,
                        base_revision,
                        chunk,
                    }
                }
            ),
        (any::<u64>(), any::<u32>())
            .prop_map(|(transfer, index)| PublisherMessage::Chunk { transfer, index }),
        (vec(publisher_update(), 0..4), vec(any::<u64>(), 0..4))
            .prop_map(|(updates, lengths)| PublisherMessage::Updates { updates, lengths }),
    ]
    .boxed()
}

fn publisher_update() -> impl Strategy<Value = PublisherMessage> {
    (
        opt(any::<u64>()),
        text(),
        opt(text()),
        opt(text()),
        opt(names()),
        any::<bool>(),
        opt(any::<u64>()),
    )
        .prop_map(|(id, uuid, type_id, owner, deps, patch, base_revision)| {
            PublisherMessage::Update {
                id,
                uuid,
                type_id,
                owner,
                deps,
                patch,
                base_revision,
                chunk: ChunkFields::default(),
            }
        })
}

fn subscriber_request() -> BoxedStrategy<SubscriberRequest> {
    prop_oneof![
        (opt(any::<u32>()), any::<bool>())
            .prop_map(|(window, batches)| SubscriberRequest::Snapshot { window, batches }),
        any::<u64>().prop_map(|received| SubscriberRequest::SnapshotAck { received }),
        (opt(any::<u64>()), text()).prop_map(|(id, uuid)| SubscriberRequest::Fetch { id, uuid }),
        text().prop_map(|token| SubscriberRequest::Resume { token }),
    ]
    .boxed()
}

fn heartbeat_message() -> BoxedStrategy<HeartbeatMessage> {
    prop_oneof![
        any::<u64>().prop_map(|seq| HeartbeatMessage::Ping { seq }),
        any::<u64>().prop_map(|seq| HeartbeatMessage::Pong { seq }),
        opt(text()).prop_map(|token| HeartbeatMessage::Resume { token }),
        (opt(any::<u64>()), opt(text()), opt(text()), opt(text())).prop_map(
            |(id, encryption, public_key, fingerprint)| HeartbeatMessage::ServerKey {
                id,
                encryption,
                public_key,
                fingerprint,
            }
        ),
    ]
    .boxed()
}

fn server_message() -> BoxedStrategy<ServerMessage> {
    let id = || opt(any::<u64>());
    prop_oneof![
        (
            id(),
            any::<u32>(),
            text(),
            any::<bool>(),
            session_state(),
            any::<u64>(),
            any::<u64>(),
            vec(room_info(), 0..3),
            any::<bool>(),
        )
            .prop_map(
                |(
                    id,
                    protocol_version,
                    server_version,
                    private,
                    state,
                    users_online,
                    datablocks,
                    rooms,
                    open_rooms,
                )| {
                    ServerMessage::ServerInfo {
                        id,
                        protocol_version,
                        server_version,
                        private,
                        state,
                        users_online,
                        datablocks,
                        rooms,
                        open_rooms,
                    }
                }
            ),
        (
            id(),
            auth_status(),
            any::<u32>(),
            opt(error_code()),
            opt(text()),
            opt(text()),
            opt(session_state()),
            opt(any::<u64>()),
            opt(any::<u64>()),
            opt(any::<u64>()),
            (
                opt(any::<u64>()),
                opt(text()),
                opt(any::<bool>()),
                opt(any::<bool>()),
            ),
        )
            .prop_map(
                |(
                    id,
                    status,
                    protocol_version,
                    code,
                    reason,
                    token,
                    state,
                    heartbeat_ms,
                    timeout_ms,
                    chunk_bytes,
                    (max_header_bytes, room, created, batches),
                )| ServerMessage::Auth {
                    id,
                    status,
                    protocol_version,
                    code,
                    reason,
                    token,
                    state,
                    heartbeat_ms,
                    timeout_ms,
                    chunk_bytes,
                    max_header_bytes,
                    room,
                    created,
                    batches,
                }
            ),
        (
            id(),
            upload_step(),
            upload_status(),
            opt(error_code()),
            opt(text()),
            opt(any::<u64>()),
        )
            .prop_map(|(id, step, status, code, reason, datablocks)| {
                ServerMessage::ServerSnapshot {
                    id,
                    step,
                    status,
                    code,
                    reason,
                    datablocks,
                }
            }),
        (
            snapshot_step(),
            opt(any::<u64>()),
            opt(any::<u64>()),
            opt(any::<u64>()),
            opt(any::<u64>()),
            opt(vec(catalogue_entry(), 0..4)),
            opt(any::<bool>()),
        )
            .prop_map(
                |(step, window, window_bytes, datablocks, bytes, entries, batches)| {
                    ServerMessage::Snapshot {
                        step,
                        window,
                        window_bytes,
                        datablocks,
                        bytes,
                        entries,
                        batches,
                    }
                }
            ),
        (datablock_header(), id(), chunk_fields())
            .prop_map(|(header, id, chunk)| ServerMessage::Datablock { header, id, chunk }),
        (datablock_header(), text(), any::<bool>(), chunk_fields()).prop_map(
            |(header, sender, patch, chunk)| ServerMessage::Update {
                header,
                sender,
                patch,
                chunk,
            }
        ),
        (any::<u64>(), any::<u32>())
            .prop_map(|(transfer, index)| ServerMessage::Chunk { transfer, index }),
        (
            vec(
                (datablock_header(), text(), any::<bool>()).prop_map(|(header, sender, patch)| {
                    ServerMessage::Update {
                        header,
                        sender,
                        patch,
                        chunk: ChunkFields::default(),
                    }
                }),
                0..4
            ),
            vec(any::<u64>(), 0..4),
        )
            .prop_map(|(updates, lengths)| ServerMessage::Updates { updates, lengths }),
        (
            vec(
                datablock_header().prop_map(|header| ServerMessage::Datablock {
                    header,
                    id: None,
                    chunk: ChunkFields::default(),
                }),
                0..4
            ),
            vec(any::<u64>(), 0..4),
        )
            .prop_map(|(datablocks, lengths)| ServerMessage::Datablocks {
                datablocks,
                lengths
            }),
        (any::<u64>(), text(), any::<u64>()).prop_map(|(id, uuid, revision)| ServerMessage::Ack {
            id,
            uuid,
            revision
        }),
        (id(), names(), text(), opt(text())).prop_map(|(id, uuids, owner, sender)| {
            ServerMessage::Right {
                id,
                uuids,
                owner,
                sender,
            }
        }),
        (id(), text(), opt(text())).prop_map(|(id, uuid, sender)| ServerMessage::Delete {
            id,
            uuid,
            sender
        }),
        (id(), text()).prop_map(|(id, user)| ServerMessage::Kick { id, user }),
        (
            id(),
            opt(text()),
            opt(auth_status()),
            opt(session_state()),
            opt(any::<bool>()),
            opt(any::<bool>()),
            opt(text()),
        )
            .prop_map(|(id, room, status, state, created, admin, token)| {
                ServerMessage::Room {
                    id,
                    room,
                    status,
                    state,
                    created,
                    admin,
                    token,
                }
            }),
        (id(), text(), any::<bool>()).prop_map(|(id, room, keep_open)| {
            ServerMessage::RoomSettings {
                id,
                room,
                keep_open,
            }
        }),
        vec(user_state(), 0..4).prop_map(|users| ServerMessage::ClientsState { users }),
        (
            vec(text(), 0..3),
            vec(user_state(), 0..3),
            vec(
                (text(), opt(user_status()), opt(metadata_map())).prop_map(
                    |(name, status, metadata)| UserChange {
                        name,
                        status,
                        metadata,
                    }
                ),
                0..3
            ),
            vec((text(), finite_f64()), 0..3),
        )
            .prop_map(|(left, joined, changed, latency)| ServerMessage::Presence {
                left,
                joined,
                changed,
                latency: latency.into_iter().collect(),
            }),
        text().prop_map(|reason| ServerMessage::Disconnect { reason }),
        Just(ServerMessage::Resume {}),
        (error_code(), text(), refers_to()).prop_map(|(code, message, refers_to)| {
            ServerMessage::Error {
                code,
                message,
                refers_to,
            }
        }),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// Expected wire names, written out independently of serde's renaming
// ---------------------------------------------------------------------------

fn command_name(m: &CommandRequest) -> &'static str {
    match m {
        CommandRequest::ServerInfo { .. } => "SERVER_INFO",
        CommandRequest::Auth { .. } => "AUTH",
        CommandRequest::ServerSnapshot { .. } => "SERVER_SNAPSHOT",
        CommandRequest::Chunk { .. } => "CHUNK",
        CommandRequest::Right { .. } => "RIGHT",
        CommandRequest::Delete { .. } => "DELETE",
        CommandRequest::UpdateUserMetadata { .. } => "UPDATE_USER_METADATA",
        CommandRequest::Kick { .. } => "KICK",
        CommandRequest::Disconnect { .. } => "DISCONNECT",
        CommandRequest::JoinRoom { .. } => "JOIN_ROOM",
        CommandRequest::LeaveRoom { .. } => "LEAVE_ROOM",
        CommandRequest::RoomSettings { .. } => "ROOM_SETTINGS",
        CommandRequest::Resume { .. } => "RESUME",
    }
}

fn publisher_name(m: &PublisherMessage) -> &'static str {
    match m {
        PublisherMessage::Update { .. } => "UPDATE",
        PublisherMessage::Chunk { .. } => "CHUNK",
        PublisherMessage::Updates { .. } => "UPDATES",
    }
}

fn subscriber_name(m: &SubscriberRequest) -> &'static str {
    match m {
        SubscriberRequest::Snapshot { .. } => "SNAPSHOT",
        SubscriberRequest::SnapshotAck { .. } => "SNAPSHOT_ACK",
        SubscriberRequest::Fetch { .. } => "FETCH",
        SubscriberRequest::Resume { .. } => "RESUME",
    }
}

fn heartbeat_name(m: &HeartbeatMessage) -> &'static str {
    match m {
        HeartbeatMessage::Ping { .. } => "PING",
        HeartbeatMessage::Pong { .. } => "PONG",
        HeartbeatMessage::Resume { .. } => "RESUME",
        HeartbeatMessage::ServerKey { .. } => "SERVER_KEY",
    }
}

fn server_name(m: &ServerMessage) -> &'static str {
    match m {
        ServerMessage::ServerInfo { .. } => "SERVER_INFO",
        ServerMessage::Auth { .. } => "AUTH",
        ServerMessage::ServerSnapshot { .. } => "SERVER_SNAPSHOT",
        ServerMessage::Snapshot { .. } => "SNAPSHOT",
        ServerMessage::Datablock { .. } => "DATABLOCK",
        ServerMessage::Update { .. } => "UPDATE",
        ServerMessage::Chunk { .. } => "CHUNK",
        ServerMessage::Updates { .. } => "UPDATES",
        ServerMessage::Datablocks { .. } => "DATABLOCKS",
        ServerMessage::Ack { .. } => "ACK",
        ServerMessage::Right { .. } => "RIGHT",
        ServerMessage::Delete { .. } => "DELETE",
        ServerMessage::Kick { .. } => "KICK",
        ServerMessage::Room { .. } => "ROOM",
        ServerMessage::RoomSettings { .. } => "ROOM_SETTINGS",
        ServerMessage::ClientsState { .. } => "CLIENTS_STATE",
        ServerMessage::Presence { .. } => "PRESENCE",
        ServerMessage::Disconnect { .. } => "DISCONNECT",
        ServerMessage::Resume {} => "RESUME",
        ServerMessage::Error { .. } => "ERROR",
    }
}

const COMMAND_NAMES: &[&str] = &[
    "SERVER_INFO",
    "AUTH",
    "SERVER_SNAPSHOT",
    "CHUNK",
    "RIGHT",
    "DELETE",
    "UPDATE_USER_METADATA",
    "KICK",
    "DISCONNECT",
    "JOIN_ROOM",
    "LEAVE_ROOM",
    "ROOM_SETTINGS",
    "RESUME",
];
const PUBLISHER_NAMES: &[&str] = &["UPDATE", "CHUNK", "UPDATES"];
const SUBSCRIBER_NAMES: &[&str] = &["SNAPSHOT", "SNAPSHOT_ACK", "FETCH", "RESUME"];
const HEARTBEAT_NAMES: &[&str] = &["PING", "PONG", "RESUME", "SERVER_KEY"];
const SERVER_NAMES: &[&str] = &[
    "SERVER_INFO",
    "AUTH",
    "SERVER_SNAPSHOT",
    "SNAPSHOT",
    "DATABLOCK",
    "UPDATE",
    "CHUNK",
    "UPDATES",
    "DATABLOCKS",
    "ACK",
    "RIGHT",
    "DELETE",
    "KICK",
    "ROOM",
    "ROOM_SETTINGS",
    "CLIENTS_STATE",
    "PRESENCE",
    "DISCONNECT",
    "RESUME",
    "ERROR",
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn round_trip<T>(m: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(m);
    prop_assert!(!bytes.is_empty(), "encode failed for {m:?}");
    let back: T = decode_header(&bytes, usize::MAX)
        .map_err(|e| TestCaseError::fail(format!("{e} for {m:?}")))?;
    prop_assert_eq!(&back, m);
    // The limit is inclusive.
    prop_assert!(decode_header::<T>(&bytes, bytes.len()).is_ok());
    prop_assert!(decode_header::<T>(&bytes, bytes.len() - 1).is_err());
    Ok(())
}

/// A message read without serde's buffering (the server's reader of UPDATE,
/// the client's of SNAPSHOT and DATABLOCKS) must be read exactly as the enum reads it:
/// with each field left out, or replaced by a value of each other kind,
/// both readers give the same message or both refuse.
fn check_field_edits<T: PartialEq + std::fmt::Debug>(
    entries: &[(Value, Value)],
    fast: impl Fn(&[u8]) -> Option<T>,
    enum_reader: impl Fn(&[u8]) -> Option<T>,
) -> Result<(), TestCaseError> {
    let others = [
        Value::Nil,
        Value::from(true),
        Value::from(-1),
        Value::from(5),
        Value::from(1.5),
        Value::from("x"),
        Value::Binary(vec![]),
        Value::Binary(vec![1]),
        Value::Array(vec![]),
        Value::Array(vec![Value::from("a")]),
        Value::Map(vec![]),
    ];
    for i in 0..entries.len() {
        let mut edits = vec![
            entries[..i]
                .iter()
                .chain(&entries[i + 1..])
                .cloned()
                .collect::<Vec<_>>(),
        ];
        for other in &others {
            let mut edited = entries.to_vec();
            edited[i].1 = other.clone();
            edits.push(edited);
        }
        for edited in edits {
            let frame = encode_map(edited.clone());
            prop_assert_eq!(fast(&frame), enum_reader(&frame), "for {:?}", edited);
        }
    }
    Ok(())
}

/// The map a struct encodes to, as (key, value) entries.
fn check_shape_of_struct<T: Serialize>(m: &T) -> Result<Vec<(Value, Value)>, TestCaseError> {
    match read_whole(&encode(m)) {
        Value::Map(entries) => Ok(entries),
        other => Err(TestCaseError::fail(format!("not a map: {other:?}"))),
    }
}

/// Decodes an encoded message as a plain value: exactly one value, no
/// trailing bytes.
fn read_whole(bytes: &[u8]) -> Value {
    let mut rd = bytes;
    let v = rmpv::decode::read_value(&mut rd).expect("an encoded message is one value");
    assert!(rd.is_empty(), "{} trailing bytes", rd.len());
    v
}

fn all_map_keys_are_strings(v: &Value) -> bool {
    match v {
        Value::Map(kv) => kv
            .iter()
            .all(|(k, v)| k.is_str() && all_map_keys_are_strings(v)),
        Value::Array(items) => items.iter().all(all_map_keys_are_strings),
        _ => true,
    }
}

/// Checks the Python-client contract and returns the top-level entries.
fn check_shape<T: Serialize>(m: &T, name: &str) -> Result<Vec<(Value, Value)>, TestCaseError> {
    let v = read_whole(&encode(m));
    let Value::Map(entries) = v else {
        return Err(TestCaseError::fail(format!("not a map: {v:?}")));
    };
    prop_assert!(
        all_map_keys_are_strings(&Value::Map(entries.clone())),
        "non-string key in {entries:?}"
    );
    let types: Vec<&Value> = entries
        .iter()
        .filter(|(k, _)| k.as_str() == Some("type"))
        .map(|(_, v)| v)
        .collect();
    prop_assert_eq!(types.len(), 1, "exactly one \"type\" key in {:?}", entries);
    prop_assert_eq!(types[0].as_str(), Some(name));
    let keys: BTreeSet<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).collect();
    prop_assert_eq!(keys.len(), entries.len(), "repeated key in {:?}", entries);
    Ok(entries)
}

/// Re-encodes a map built from `entries`.
fn encode_map(entries: Vec<(Value, Value)>) -> Vec<u8> {
    encode_value(&Value::Map(entries)).to_vec()
}

/// A deterministic shuffle driven by `seed` (xorshift + Fisher-Yates).
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    seed |= 1;
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// What a Python client might send instead of our encoding: optional keys
/// left out instead of `nil`, keys in another order, plus keys from a future
/// minor version. All must decode to the same message.
///
/// `required` names keys that must stay even when `nil`: the one such field
/// is UPDATE_USER_METADATA's `metadata` (a plain `Value`, no
/// `#[serde(default)]`), so a client clearing its metadata must send
/// `"metadata": None` explicitly; leaving the key out is "missing field".
fn check_lenient_decoding<T>(
    m: &T,
    entries: Vec<(Value, Value)>,
    required: &[&str],
    seed: u64,
    extra: Value,
) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut entries: Vec<_> = entries
        .into_iter()
        .filter(|(k, v)| !v.is_nil() || k.as_str().is_some_and(|k| required.contains(&k)))
        .collect();
    shuffle(&mut entries, seed);
    entries.push((Value::from("zz_future_field"), extra));
    let back: T = decode_header(&encode_map(entries.clone()), usize::MAX)
        .map_err(|e| TestCaseError::fail(format!("{e} for {entries:?}")))?;
    prop_assert_eq!(&back, m);
    Ok(())
}

/// Depth in containers of a value (a scalar is 0, `[]` is 1).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Map(kv) => {
            1 + kv
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// Values compare NaN-free here; equality of floats is bitwise-insensitive
/// only for 0.0 / -0.0, which rmpv preserves anyway.
fn check_value_round_trip(v: &Value) -> Result<(), TestCaseError> {
    let bytes = encode_value(v);
    prop_assert!(
        validate_value(&bytes).is_ok(),
        "{:?}",
        validate_value(&bytes)
    );
    let back = decode_value(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, v);
    Ok(())
}

/// Runs every decoder on `bytes`; the only requirement is not panicking (a
/// panic fails the test), plus consistency between the layered decoders.
fn feed_everything(bytes: &[u8]) {
    let validated = validate_value(bytes);
    let _ = decode_header::<CommandRequest>(bytes, usize::MAX);
    let publisher = decode_header::<PublisherMessage>(bytes, usize::MAX);
    // The server's reader for the publisher channel must agree with serde's
    // reading of the enum on every input: same message, or both refuse.
    assert_eq!(
        decode_publisher(bytes, usize::MAX).ok(),
        publisher.ok(),
        "decode_publisher and the enum disagree on {bytes:02x?}"
    );
    let _ = decode_header::<SubscriberRequest>(bytes, usize::MAX);
    let _ = decode_header::<HeartbeatMessage>(bytes, usize::MAX);
    // The client's readers of SNAPSHOT and DATABLOCKS must agree with the
    // enum the same way.
    assert_eq!(
        decode_server(bytes, usize::MAX).ok(),
        decode_header::<ServerMessage>(bytes, usize::MAX).ok(),
        "decode_server and the enum disagree on {bytes:02x?}"
    );
    let _ = decode_header::<Value>(bytes, 64);
    let decoded = decode_value(bytes);
    if validated.is_err() {
        assert!(
            decoded.is_err(),
            "decode_value accepted what validate_value refused"
        );
        assert!(decode_header::<Value>(bytes, usize::MAX).is_err());
    }
    if let Ok(value) = decoded
        && let Ok(patch) = Patch::from_value(value.clone())
    {
        let mut target = value;
        let _ = patch.apply(&mut target);
        let mut target = sample_target();
        let before = target.clone();
        if patch.apply(&mut target).is_err() {
            assert_eq!(target, before, "a failed patch changed the target");
        }
    }
}

fn sample_target() -> Value {
    Value::Map(vec![
        (
            Value::from("a"),
            Value::Array(vec![Value::from(1), Value::from("é€")]),
        ),
        (Value::from("b"), Value::from("héllo")),
        (Value::from("c"), Value::Binary(vec![1, 2, 3])),
        (Value::from(0), Value::Map(vec![])),
    ])
}

/// One edit of a frame; positions are relative to the frame's current length.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Duplicate(Index, usize),
}

fn mutation() -> BoxedStrategy<Mutation> {
    // Bytes that are interesting MessagePack markers or lengths.
    let special = prop_oneof![
        any::<u8>(),
        proptest::sample::select(vec![
            0x00u8, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc4, 0xc7, 0xca, 0xcb,
            0xcf, 0xd4, 0xd8, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff,
        ]),
    ];
    prop_oneof![
        (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<Index>(), special.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), vec(special, 1..6)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1..8usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), 1..16usize).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
    .boxed()
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(i, mask) if len > 0 => bytes[i.index(len)] ^= mask,
            Mutation::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Mutation::Insert(i, new) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Remove(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate(i, n) if len > 0 => {
                let at = i.index(len);
                let piece = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, piece);
            }
            _ => {}
        }
    }
    bytes
}

/// A valid frame of some kind: any message of any channel, any value, or a
/// patch-shaped value.
fn valid_frame() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        command_request().prop_map(|m| encode(&m).to_vec()),
        publisher_message().prop_map(|m| encode(&m).to_vec()),
        subscriber_request().prop_map(|m| encode(&m).to_vec()),
        heartbeat_message().prop_map(|m| encode(&m).to_vec()),
        server_message().prop_map(|m| encode(&m).to_vec()),
        any_value(5).prop_map(|v| encode_value(&v).to_vec()),
        patch_value().prop_map(|v| encode_value(&v).to_vec()),
    ]
    .boxed()
}

/// Patch-shaped values: arrays of op maps, mostly well-formed (so that
/// `Patch::from_value` succeeds and `apply` runs), sometimes with steps or
/// ops of the wrong type.
fn patch_value() -> BoxedStrategy<Value> {
    let step = prop_oneof![
        6 => "[a-c]{0,2}".prop_map(Value::from),
        6 => (0..4u64).prop_map(Value::from),
        1 => leaf(),
    ];
    let path = vec(step, 0..4).prop_map(Value::Array);
    let insert = prop_oneof![
        vec(leaf(), 0..3).prop_map(Value::Array),
        vec(any::<u8>(), 0..3).prop_map(Value::Binary),
        "[xé😀]{0,3}".prop_map(Value::from),
        leaf(),
    ];
    let op = prop_oneof![
        5 => (path.clone(), metadata_value()).prop_map(|(p, v)| {
            Value::Map(vec![
                (Value::from("op"), Value::from("set")),
                (Value::from("path"), p),
                (Value::from("value"), v),
            ])
        }),
        5 => path.clone().prop_map(|p| {
            Value::Map(vec![
                (Value::from("op"), Value::from("remove")),
                (Value::from("path"), p),
            ])
        }),
        5 => (path, 0..8u64, opt(0..8u64), opt(insert)).prop_map(|(p, i, d, ins)| {
            let mut kv = vec![
                (Value::from("op"), Value::from("splice")),
                (Value::from("path"), p),
                (Value::from("index"), Value::from(i)),
            ];
            if let Some(d) = d {
                kv.push((Value::from("delete"), Value::from(d)));
            }
            if let Some(ins) = ins {
                kv.push((Value::from("insert"), ins));
            }
            Value::Map(kv)
        }),
        1 => metadata_value(),
    ];
    vec(op, 0..5).prop_map(Value::Array).boxed()
}

/// Byte strings that are sometimes valid MessagePack: random bytes, valid
/// encodings, mutated encodings, and deep nesting.
fn msgpack_ish() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        any_value(6).prop_map(|v| encode_value(&v).to_vec()),
        (valid_frame(), vec(mutation(), 1..4)).prop_map(|(b, m)| mutate(b, &m)),
        (
            0..MAX_DEPTH + 4,
            proptest::sample::select(vec![0x90u8, 0x91, 0x80, 0x81]),
            vec(any::<u8>(), 0..4)
        )
            .prop_map(|(n, marker, tail)| {
                let mut b = vec![marker; n];
                b.extend(tail);
                b
            }),
    ]
    .boxed()
}

/// Array nesting `n` deep around `leaf`, as bytes.
fn nested(n: usize, leaf: &[u8]) -> Vec<u8> {
    let mut b = vec![0x91u8; n];
    b.extend_from_slice(leaf);
    b
}

// ---------------------------------------------------------------------------
// 1 & 2: round trips and wire shape
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn command_requests_round_trip(m in command_request()) {
        round_trip(&m)?;
    }

    #[test]
    fn publisher_messages_round_trip(m in publisher_message()) {
        round_trip(&m)?;
    }

    #[test]
    fn subscriber_requests_round_trip(m in subscriber_request()) {
        round_trip(&m)?;
    }

    #[test]
    fn heartbeat_messages_round_trip(m in heartbeat_message()) {
        round_trip(&m)?;
    }

    #[test]
    fn server_messages_round_trip(m in server_message()) {
        round_trip(&m)?;
    }

    #[test]
    fn the_update_reader_agrees_with_the_enum_field_by_field(update in publisher_update()) {
        let entries = check_shape(&update, "UPDATE")?;
        check_field_edits(
            &entries,
            |f| decode_publisher(f, usize::MAX).ok(),
            |f| decode_header::<PublisherMessage>(f, usize::MAX).ok(),
        )?;
    }

    #[test]
    fn the_datablocks_reader_agrees_with_the_enum_field_by_field(
        header in datablock_header(),
        id in opt(any::<u64>()),
        chunk in chunk_fields(),
        lengths in vec(any::<u64>(), 0..3),
    ) {
        let item = ServerMessage::Datablock { header, id, chunk };
        let item_entries = check_shape(&item, "DATABLOCK")?;
        let lengths_value = Value::Array(lengths.iter().map(|&l| Value::from(l)).collect());
        let in_batch = |item: &[u8]| {
            encode_map(vec![
                (Value::from("type"), Value::from("DATABLOCKS")),
                (Value::from("datablocks"), Value::Array(vec![read_whole(item)])),
                (Value::from("lengths"), lengths_value.clone()),
            ])
        };
        // Each field of an item, then each field of the batch itself.
        check_field_edits(
            &item_entries,
            |f| decode_server(&in_batch(f), usize::MAX).ok(),
            |f| decode_header::<ServerMessage>(&in_batch(f), usize::MAX).ok(),
        )?;
        let batch = ServerMessage::Datablocks { datablocks: vec![item], lengths };
        let entries = check_shape(&batch, "DATABLOCKS")?;
        check_field_edits(
            &entries,
            |f| decode_server(f, usize::MAX).ok(),
            |f| decode_header::<ServerMessage>(f, usize::MAX).ok(),
        )?;
    }

    #[test]
    fn the_snapshot_reader_agrees_with_the_enum_field_by_field(
        step in snapshot_step(),
        counts in (opt(any::<u64>()), opt(any::<u64>()), opt(any::<u64>()), opt(any::<u64>())),
        entry in catalogue_entry(),
        batches in opt(any::<bool>()),
    ) {
        let (window, window_bytes, datablocks, bytes) = counts;
        let entry_entries = check_shape_of_struct(&entry)?;
        let in_page = |entry: &[u8]| {
            encode_map(vec![
                (Value::from("type"), Value::from("SNAPSHOT")),
                (Value::from("step"), Value::from("CATALOGUE")),
                (Value::from("entries"), Value::Array(vec![read_whole(entry)])),
            ])
        };
        // Each field of a catalogue entry, then each field of the message.
        check_field_edits(
            &entry_entries,
            |f| decode_server(&in_page(f), usize::MAX).ok(),
            |f| decode_header::<ServerMessage>(&in_page(f), usize::MAX).ok(),
        )?;
        let snapshot = ServerMessage::Snapshot {
            step,
            window,
            window_bytes,
            datablocks,
            bytes,
            entries: Some(vec![entry]),
            batches,
        };
        let entries = check_shape(&snapshot, "SNAPSHOT")?;
        check_field_edits(
            &entries,
            |f| decode_server(f, usize::MAX).ok(),
            |f| decode_header::<ServerMessage>(f, usize::MAX).ok(),
        )?;
    }

    #[test]
    fn command_requests_are_string_keyed_maps(
        m in command_request(),
        seed in any::<u64>(),
        extra in metadata_value(),
    ) {
        prop_assert_eq!(m.kind(), command_name(&m));
        let entries = check_shape(&m, command_name(&m))?;
        check_lenient_decoding(&m, entries, &["metadata"], seed, extra)?;
    }

    #[test]
    fn publisher_messages_are_string_keyed_maps(
        m in publisher_message(),
        seed in any::<u64>(),
        extra in metadata_value(),
    ) {
        let entries = check_shape(&m, publisher_name(&m))?;
        check_lenient_decoding(&m, entries.clone(), &[], seed, extra.clone())?;
        // The server's own reader, which takes UPDATE without serde's
        // buffering, reads the same lenient maps to the same messages.
        let mut lenient: Vec<_> = entries.into_iter().filter(|(_, v)| !v.is_nil()).collect();
        shuffle(&mut lenient, seed);
        lenient.push((Value::from("zz_future_field"), extra));
        let back = decode_publisher(&encode_map(lenient), usize::MAX)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, m);
    }

    #[test]
    fn subscriber_requests_are_string_keyed_maps(
        m in subscriber_request(),
        seed in any::<u64>(),
        extra in metadata_value(),
    ) {
        prop_assert_eq!(m.kind(), subscriber_name(&m));
        let entries = check_shape(&m, subscriber_name(&m))?;
        check_lenient_decoding(&m, entries, &[], seed, extra)?;
    }

    #[test]
    fn heartbeat_messages_are_string_keyed_maps(
        m in heartbeat_message(),
        seed in any::<u64>(),
        extra in metadata_value(),
    ) {
        let entries = check_shape(&m, heartbeat_name(&m))?;
        check_lenient_decoding(&m, entries, &[], seed, extra)?;
    }

    /// Server messages also leave absent optional fields out of the map
    /// rather than sending `nil` (docs: "optional fields that are absent are
    /// left out of the map"), and error codes are snake_case strings.
    #[test]
    fn server_messages_are_string_keyed_maps(m in server_message()) {
        let entries = check_shape(&m, server_name(&m))?;
        for (k, v) in &entries {
            prop_assert!(!v.is_nil(), "{:?} is nil in {:?}", k, entries);
        }
        let get = |key: &str| {
            entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone())
        };
        match &m {
            ServerMessage::Error { code, refers_to, .. } => {
                prop_assert_eq!(
                    get("code").and_then(|v| v.as_str().map(str::to_owned)),
                    Some(error_code_wire_name(*code).to_owned())
                );
                let Some(Value::Map(r)) = get("refers_to") else {
                    return Err(TestCaseError::fail("refers_to is not a map"));
                };
                prop_assert!(r.iter().all(|(_, v)| !v.is_nil()));
                let has_type = r.iter().any(|(k, _)| k.as_str() == Some("type"));
                prop_assert_eq!(has_type, refers_to.kind.is_some());
            }
            ServerMessage::Auth { code: Some(code), .. } => {
                prop_assert_eq!(
                    get("code").and_then(|v| v.as_str().map(str::to_owned)),
                    Some(error_code_wire_name(*code).to_owned())
                );
            }
            ServerMessage::Datablock { chunk, .. } | ServerMessage::Update { chunk, .. } => {
                // Flattened: the chunk fields are top-level keys.
                prop_assert_eq!(get("transfer").and_then(|v| v.as_u64()), chunk.transfer);
                prop_assert_eq!(get("chunks").and_then(|v| v.as_u64()), chunk.chunks.map(u64::from));
                prop_assert_eq!(get("size").and_then(|v| v.as_u64()), chunk.size);
                prop_assert!(get("uuid").is_some_and(|v| v.is_str()));
            }
            _ => {}
        }
    }

    /// A reader of raw frames tells a server message's kind from its
    /// `type` alone (the client answers RESUME that way): every message is
    /// named as it decodes.
    #[test]
    fn the_type_of_a_server_message_reads_without_decoding_it(m in server_message()) {
        let frame = encode(&m);
        prop_assert_eq!(header_type(&frame), Some(server_name(&m).as_bytes()));
    }

    #[test]
    fn every_error_code_round_trips(code in error_code()) {
        let m = ServerMessage::Error { code, message: String::new(), refers_to: RefersTo::default() };
        round_trip(&m)?;
    }
}

/// The generators really produce every variant of every enum (prop_oneof!
/// lists each one; this guards against an arm being dropped).
#[test]
fn generators_cover_every_variant() {
    fn names_seen<S, F>(s: S, name: F) -> BTreeSet<&'static str>
    where
        S: Strategy,
        F: Fn(&S::Value) -> &'static str,
    {
        let mut runner = TestRunner::deterministic();
        (0..600)
            .map(|_| name(&s.new_tree(&mut runner).unwrap().current()))
            .collect()
    }
    let set = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<_>>();
    assert_eq!(
        names_seen(command_request(), command_name),
        set(COMMAND_NAMES)
    );
    assert_eq!(
        names_seen(publisher_message(), publisher_name),
        set(PUBLISHER_NAMES)
    );
    assert_eq!(
        names_seen(subscriber_request(), subscriber_name),
        set(SUBSCRIBER_NAMES)
    );
    assert_eq!(
        names_seen(heartbeat_message(), heartbeat_name),
        set(HEARTBEAT_NAMES)
    );
    assert_eq!(names_seen(server_message(), server_name), set(SERVER_NAMES));
    let codes: BTreeSet<&str> = ALL_ERROR_CODES
        .iter()
        .map(|c| error_code_wire_name(*c))
        .collect();
    assert_eq!(codes.len(), ALL_ERROR_CODES.len());
}

/// Unit-like enums encode as the documented strings.
#[test]
fn enum_field_wire_names() {
    fn wire<T: Serialize>(v: T) -> String {
        read_whole(&encode(&v)).as_str().unwrap().to_owned()
    }
    assert_eq!(wire(Role::Admin), "ADMIN");
    assert_eq!(wire(Role::Client), "CLIENT");
    assert_eq!(wire(SessionState::Waiting), "WAITING");
    assert_eq!(wire(SessionState::SrvSync), "SRV_SYNC");
    assert_eq!(wire(SessionState::Active), "ACTIVE");
    for s in [
        UserStatus::Lobby,
        UserStatus::Uploading,
        UserStatus::Syncing,
        UserStatus::Active,
    ] {
        assert_eq!(wire(s), s.to_string());
    }
    for s in [
        SessionState::Waiting,
        SessionState::SrvSync,
        SessionState::Active,
    ] {
        assert_eq!(wire(s), s.to_string());
    }
    assert_eq!(wire(AuthStatus::Lobby), "LOBBY");
    assert_eq!(wire(AuthStatus::Running), "RUNNING");
    assert_eq!(wire(AuthStatus::Failed), "FAILED");
    assert_eq!(wire(UploadStep::Init), "INIT");
    assert_eq!(wire(UploadStep::Set), "SET");
    assert_eq!(wire(UploadStep::End), "END");
    assert_eq!(wire(UploadStatus::Accepted), "ACCEPTED");
    assert_eq!(wire(UploadStatus::Rejected), "REJECTED");
    assert_eq!(wire(UploadStatus::Done), "DONE");
    assert_eq!(wire(SnapshotStep::Begin), "BEGIN");
    assert_eq!(wire(SnapshotStep::Catalogue), "CATALOGUE");
    assert_eq!(wire(SnapshotStep::End), "END");
    for code in ALL_ERROR_CODES {
        assert_eq!(wire(code), error_code_wire_name(code));
    }
}

/// The one asymmetry of the round trip, pinned so that it is a documented
/// choice: `Some(nil)` metadata in AUTH reads back as `None`.
#[test]
fn auth_metadata_some_nil_reads_back_as_none() {
    let m = CommandRequest::Auth {
        id: None,
        user: "u".into(),
        role: Role::Client,
        admin_password: None,
        server_password: None,
        protocol_version: 1,
        metadata: Some(Value::Nil),
        room: None,
        room_password: None,
        batches: false,
    };
    let back: CommandRequest = decode_header(&encode(&m), usize::MAX).unwrap();
    let CommandRequest::Auth { metadata, .. } = back else {
        panic!("not AUTH: {back:?}");
    };
    assert_eq!(metadata, None);
}

/// UPDATE_USER_METADATA's `metadata` is required even though `nil` is a
/// legal value for it: unlike every other client field, leaving it out is
/// an error rather than `nil` (pinned so that a change is deliberate).
#[test]
fn update_user_metadata_requires_the_metadata_key() {
    let frame = |entries: Vec<(&str, Value)>| {
        encode_map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        )
    };
    let with_nil = frame(vec![
        ("type", Value::from("UPDATE_USER_METADATA")),
        ("metadata", Value::Nil),
    ]);
    assert_eq!(
        decode_header::<CommandRequest>(&with_nil, usize::MAX),
        Ok(CommandRequest::UpdateUserMetadata {
            id: None,
            metadata: Value::Nil
        })
    );
    let without = frame(vec![("type", Value::from("UPDATE_USER_METADATA"))]);
    let err = decode_header::<CommandRequest>(&without, usize::MAX).unwrap_err();
    assert!(err.to_string().contains("metadata"), "{err}");
}

// ---------------------------------------------------------------------------
// 3: no decoder panics
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in vec(any::<u8>(), 0..2048)) {
        feed_everything(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_mutated_frames(
        frame in valid_frame(),
        mutations in vec(mutation(), 1..8),
    ) {
        feed_everything(&frame);
        feed_everything(&mutate(frame, &mutations));
    }

    /// Patch frames, intact and mutated: parsing and applying never panic,
    /// and a failed patch leaves its target unchanged.
    #[test]
    fn patch_frames_never_panic(
        patch in patch_value(),
        mutations in vec(mutation(), 1..4),
    ) {
        let frame = encode_value(&patch).to_vec();
        feed_everything(&frame);
        feed_everything(&mutate(frame, &mutations));
    }

    /// A map whose "type" is right but whose fields are random values, to
    /// reach the field deserializers rather than failing on the tag.
    #[test]
    fn decoders_never_panic_on_wrongly_typed_fields(
        name in proptest::sample::select(
            [COMMAND_NAMES, PUBLISHER_NAMES, SUBSCRIBER_NAMES, HEARTBEAT_NAMES, SERVER_NAMES].concat()
        ),
        fields in vec((proptest::sample::select(vec![
            "id", "user", "role", "metadata", "step", "uuid", "type_id", "owner", "deps",
            "transfer", "chunks", "size", "index", "uuids", "force", "reason", "window",
            "received", "seq", "patch", "base_revision", "users", "code", "refers_to",
            "entries", "revision", "sender", "protocol_version", "status", "latency_ms",
            "batches", "datablocks", "updates", "lengths", "encryption", "public_key",
            "fingerprint",
        ]), any_value(3)), 0..8),
    ) {
        let mut entries = vec![(Value::from("type"), Value::from(name))];
        entries.extend(fields.into_iter().map(|(k, v)| (Value::from(k), v)));
        feed_everything(&encode_map(entries));
    }
}

#[test]
fn decoders_never_panic_on_hostile_lengths() {
    let frames: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xc1],
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdf, 0x7f, 0xff, 0xff, 0xff, 0xc0, 0xc0],
        vec![0xc6, 0xff, 0xff, 0xff, 0xff, 1],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
        vec![0xc9, 0xff, 0xff, 0xff, 0xff, 1, 2],
        vec![0xc9, 0xff, 0xff, 0xff, 0xfe],
        vec![0x91; 100_000],
        vec![0x81; 100_000],
        [vec![0x81, 0xa4], b"type".to_vec(), vec![0x91; 50_000]].concat(),
    ];
    for f in frames {
        feed_everything(&f);
        assert!(validate_value(&f).is_err(), "{:x?}", &f[..f.len().min(8)]);
    }
}

// ---------------------------------------------------------------------------
// 4: validate_value agrees with rmpv
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn encoded_values_validate_and_decode_back(v in any_value(8)) {
        check_value_round_trip(&v)?;
    }

    #[test]
    fn validate_value_agrees_with_rmpv(bytes in msgpack_ish()) {
        let validated = validate_value(&bytes);
        let mut rd = &bytes[..];
        let read = rmpv::decode::read_value(&mut rd);
        let whole = read.as_ref().ok().filter(|_| rd.is_empty());
        if validated.is_ok() {
            prop_assert!(read.is_ok(), "rmpv refused what validate_value accepted: {:?}", read);
            prop_assert!(rd.is_empty(), "validate_value accepted {} trailing bytes", rd.len());
        }
        if let Some(v) = whole
            && depth(v) <= MAX_DEPTH {
                match &validated {
                    Ok(()) => {}
                    // rmpv 1.3 reads the reserved marker 0xc1 as nil;
                    // validate_value refuses it, as the MessagePack spec says
                    // ("never used"). The one legitimate disagreement.
                    Err(e) if e.to_string().contains("reserved byte 0xc1") => {
                        prop_assert!(bytes.contains(&0xc1));
                    }
                    Err(e) => {
                        return Err(TestCaseError::fail(format!(
                            "validate_value refused a whole value rmpv read: {e}"
                        )));
                    }
                }
            }
    }

    /// Values nested up to MAX_DEPTH containers (mixing arrays and maps)
    /// validate and round-trip through `decode_value`; one more level is
    /// refused.
    #[test]
    fn deep_values_within_max_depth_are_accepted(
        n in 0..=MAX_DEPTH,
        leaf in leaf(),
        maps in vec(any::<bool>(), MAX_DEPTH + 1),
    ) {
        let wrap = |v: Value, map: bool| {
            if map {
                Value::Map(vec![(Value::from("k"), v)])
            } else {
                Value::Array(vec![v])
            }
        };
        let mut v = leaf;
        for &map in &maps[..n] {
            v = wrap(v, map);
        }
        prop_assert!(validate_value(&encode_value(&v)).is_ok());
        check_value_round_trip(&v)?;
        if n == MAX_DEPTH {
            let deeper = wrap(v, maps[MAX_DEPTH]);
            prop_assert!(validate_value(&encode_value(&deeper)).is_err());
        }
    }
}

/// The reserved marker 0xc1: rmpv reads it as nil, validate_value (and so
/// every decoder of the server) refuses it.
#[test]
fn reserved_marker_is_refused() {
    let bytes = [0x92, 0x01, 0xc1];
    let mut rd = &bytes[..];
    assert_eq!(
        rmpv::decode::read_value(&mut rd).unwrap(),
        Value::Array(vec![Value::from(1), Value::Nil])
    );
    assert!(validate_value(&bytes).is_err());
    assert!(decode_value(&bytes).is_err());
    assert!(decode_header::<Value>(&bytes, usize::MAX).is_err());
}

/// `decode_value` decodes everything `validate_value` accepts, at every
/// depth up to MAX_DEPTH and with every kind of leaf (rmpv's own depth
/// budget counts differently and must not be the tighter bound).
#[test]
fn decode_value_accepts_everything_validate_value_accepts() {
    for leaf in [&[0xc0u8][..], &[0xa1, b'x'], &[0xc4, 1, 7], &[0xd4, 1, 2]] {
        for n in 0..=MAX_DEPTH {
            let bytes = nested(n, leaf);
            assert!(validate_value(&bytes).is_ok(), "validate at {n}");
            assert!(
                decode_value(&bytes).is_ok(),
                "decode_value at nesting {n} with leaf {leaf:x?}: {:?}",
                decode_value(&bytes)
            );
        }
    }
}

/// A header is a map, which counts as the first level: a header nested
/// MAX_DEPTH deep in total decodes (rmp-serde's budget must not be tighter).
#[test]
fn decode_header_accepts_everything_validate_value_accepts() {
    for n in 1..=MAX_DEPTH {
        let bytes = header_nested(n);
        assert!(validate_value(&bytes).is_ok());
        assert!(
            decode_header::<Value>(&bytes, usize::MAX).is_ok(),
            "decode_header at nesting {n}: {:?}",
            decode_header::<Value>(&bytes, usize::MAX)
        );
    }
}

/// `nested(n - 1)` inside a one-key map: a header `n` levels deep.
fn header_nested(n: usize) -> Vec<u8> {
    let mut bytes = vec![0x81, 0xa1, b'k'];
    bytes.extend(nested(n - 1, &[0xc0]));
    bytes
}

/// Every decoder accepts exactly MAX_DEPTH levels and refuses every deeper
/// one.
#[test]
fn nesting_bounds_of_each_decoder() {
    let accepts = |f: &dyn Fn(&[u8]) -> bool| {
        (0..=MAX_DEPTH + 2)
            .take_while(|&n| f(&nested(n, &[0xc0])))
            .last()
    };
    assert_eq!(
        accepts(&|b| validate_value(b).is_ok()),
        Some(MAX_DEPTH),
        "validate_value"
    );
    assert_eq!(
        accepts(&|b| decode_value(b).is_ok()),
        Some(MAX_DEPTH),
        "decode_value"
    );
    for n in MAX_DEPTH + 1..=MAX_DEPTH + 2 {
        assert!(decode_value(&nested(n, &[0xc0])).is_err());
    }
    let header_max = (1..=MAX_DEPTH + 2)
        .take_while(|&n| decode_header::<Value>(&header_nested(n), usize::MAX).is_ok())
        .last();
    assert_eq!(header_max, Some(MAX_DEPTH), "decode_header");
    for n in MAX_DEPTH + 1..=MAX_DEPTH + 2 {
        assert!(decode_header::<Value>(&header_nested(n), usize::MAX).is_err());
    }
}

// ---------------------------------------------------------------------------
// 5: with_payload
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn with_payload_slices_and_announces_correctly(
        len in prop_oneof![0..64usize, 0..4096usize],
        chunk_bytes in prop_oneof![0..8usize, 0..1024usize, Just(usize::MAX)],
        transfer in any::<u64>(),
        header in datablock_header(),
        id in opt(any::<u64>()),
        seed in any::<u8>(),
    ) {
        let payload = Bytes::from(
            (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>(),
        );
        let h = header.clone();
        let wires = with_payload(
            move |chunk| ServerMessage::Datablock { header: h, id, chunk },
            payload.clone(),
            chunk_bytes,
            transfer,
        );
        let effective = chunk_bytes.max(1);
        prop_assert!(!wires.is_empty());
        let first: ServerMessage = decode_header(&wires[0].header, usize::MAX)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let ServerMessage::Datablock { header: got, id: got_id, chunk } = first else {
            return Err(TestCaseError::fail(format!("not DATABLOCK: {first:?}")));
        };
        prop_assert_eq!(&got, &header);
        prop_assert_eq!(got_id, id);

        if len <= effective {
            // Inline: one message, the payload itself (shared, not copied).
            prop_assert_eq!(wires.len(), 1);
            prop_assert_eq!(&chunk, &ChunkFields::default());
            prop_assert_eq!(chunk.spec(), Ok(PayloadSpec::Inline));
            let p = wires[0].payload.as_ref().expect("inline payload");
            prop_assert_eq!(p, &payload);
            prop_assert_eq!(p.as_ptr(), payload.as_ptr());
            prop_assert_eq!(wires[0].len(), wires[0].header.len() + len);
            return Ok(());
        }

        let chunks = len.div_ceil(effective);
        prop_assert_eq!(
            chunk.spec(),
            Ok(PayloadSpec::Chunked { transfer, chunks: chunks as u32, size: len as u64 })
        );
        prop_assert!(wires[0].payload.is_none());
        prop_assert_eq!(wires.len(), chunks + 1);
        let mut joined = Vec::with_capacity(len);
        for (i, w) in wires[1..].iter().enumerate() {
            let m: ServerMessage = decode_header(&w.header, usize::MAX)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(m, ServerMessage::Chunk { transfer, index: i as u32 });
            let p = w.payload.as_ref().expect("chunk payload");
            prop_assert!(!p.is_empty());
            prop_assert!(p.len() <= effective);
            if i + 1 < chunks {
                prop_assert_eq!(p.len(), effective);
            }
            // A slice of the original bytes, not a copy.
            prop_assert_eq!(p.as_ptr(), payload[joined.len()..].as_ptr());
            joined.extend_from_slice(p);
        }
        prop_assert_eq!(Bytes::from(joined), payload);
    }
}
