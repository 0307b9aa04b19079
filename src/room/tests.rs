//! Unit tests of the room's rules: every test drives a [`Room`] through its
//! public methods and checks the decoded messages, who gets them, and the
//! state left behind.

use super::*;
use crate::protocol::codec::encode_value;
use crate::protocol::patch::{PatchOp, PathStep};
use crate::protocol::{CatalogueEntry, ChunkFields, DatablockHeader, UserChange};

// ------------------------------------------------------------------ helpers

/// Admin, uploads the scene in most tests.
const ALICE: ClientId = ClientId(1);
const BOB: ClientId = ClientId(2);
const CAROL: ClientId = ClientId(3);
/// Joins late in most tests.
const DAVE: ClientId = ClientId(4);

fn decode(wire: &Wire) -> ServerMessage {
    rmp_serde::from_slice::<ServerMessage>(&wire.header).expect("server header decodes")
}

fn decode_data(bytes: &[u8]) -> Value {
    crate::protocol::codec::decode_value(bytes).expect("datablock data decodes")
}

fn block(uuid: &str, type_id: &str) -> BlockSpec {
    BlockSpec {
        uuid: uuid.to_owned(),
        type_id: Some(type_id.to_owned()),
        owner: None,
        deps: None,
    }
}

fn owned(uuid: &str, type_id: &str, owner: &str) -> BlockSpec {
    BlockSpec {
        owner: Some(owner.to_owned()),
        ..block(uuid, type_id)
    }
}

fn with_deps(uuid: &str, deps: &[&str]) -> BlockSpec {
    BlockSpec {
        deps: Some(deps.iter().map(|d| (*d).to_owned()).collect()),
        ..block(uuid, "Object")
    }
}

/// A spec naming only the uuid, as updates of existing blocks usually do.
fn existing(uuid: &str) -> BlockSpec {
    BlockSpec {
        uuid: uuid.to_owned(),
        type_id: None,
        owner: None,
        deps: None,
    }
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

/// Encoded data `{"n": n}`.
fn data(n: i64) -> Bytes {
    encode_value(&map(&[("n", Value::from(n))]))
}

fn path(steps: &[&str]) -> Vec<PathStep> {
    steps
        .iter()
        .map(|s| PathStep::Key((*s).to_owned()))
        .collect()
}

fn patch(ops: Vec<PatchOp>) -> Bytes {
    encode_value(&Patch { ops }.to_value())
}

fn set_op(steps: &[&str], value: Value) -> PatchOp {
    PatchOp::Set {
        path: path(steps),
        value,
    }
}

/// The stored data of a datablock, decoded.
fn stored(room: &Room, uuid: &str) -> Value {
    let block = room.repository().get(uuid).expect("datablock exists");
    decode_data(&block.content.clone().encoded())
}

fn revision(room: &Room, uuid: &str) -> u64 {
    room.repository()
        .get(uuid)
        .expect("datablock exists")
        .revision
}

fn owner(room: &Room, uuid: &str) -> String {
    room.repository()
        .get(uuid)
        .expect("datablock exists")
        .owner
        .clone()
}

/// The wires `id` gets on `channel`, in order.
fn wires_to(fx: &Effects, id: ClientId, channel: Channel) -> Vec<Wire> {
    fx.deliveries
        .iter()
        .filter(|d| d.channel == channel && d.to.contains(&id))
        .map(|d| d.wire.clone())
        .collect()
}

fn msgs_to(fx: &Effects, id: ClientId, channel: Channel) -> Vec<ServerMessage> {
    wires_to(fx, id, channel).iter().map(decode).collect()
}

/// A short label per message, to compare orders.
fn label(msg: &ServerMessage) -> String {
    match msg {
        ServerMessage::Snapshot { step, .. } => format!("{step:?}").to_uppercase(),
        ServerMessage::Datablock { header, .. } => format!("DATABLOCK {}", header.uuid),
        ServerMessage::Update { header, .. } => {
            format!("UPDATE {} r{}", header.uuid, header.revision)
        }
        ServerMessage::Chunk { index, .. } => format!("CHUNK {index}"),
        ServerMessage::Right { uuids, owner, .. } => format!("RIGHT {uuids:?} {owner}"),
        ServerMessage::Delete { uuid, .. } => format!("DELETE {uuid}"),
        other => format!("{other:?}"),
    }
}

fn labels(fx: &Effects, id: ClientId) -> Vec<String> {
    msgs_to(fx, id, Channel::Subscriber)
        .iter()
        .map(label)
        .collect()
}

/// The single reply on the command channel to `id`.
fn reply(fx: &Effects, id: ClientId) -> ServerMessage {
    let replies = msgs_to(fx, id, Channel::Commands);
    assert_eq!(replies.len(), 1, "expected one reply, got {replies:?}");
    replies.into_iter().next().expect("one reply")
}

fn upload_reply(fx: &Effects, id: ClientId) -> (UploadStatus, Option<String>, Option<u64>) {
    match reply(fx, id) {
        ServerMessage::ServerSnapshot {
            status,
            reason,
            datablocks,
            ..
        } => (status, reason, datablocks),
        other => panic!("expected SERVER_SNAPSHOT, got {other:?}"),
    }
}

fn init(room: &mut Room, id: ClientId) -> Effects {
    room.upload(id, UploadStep::Init, Some(1), None)
        .expect("INIT answers")
}

fn set(
    room: &mut Room,
    id: ClientId,
    spec: BlockSpec,
    payload: Bytes,
) -> Result<Effects, RoomError> {
    room.upload(id, UploadStep::Set, None, Some((spec, payload)))
}

fn end(room: &mut Room, id: ClientId) -> Effects {
    room.upload(id, UploadStep::End, Some(9), None)
        .expect("END answers")
}

/// ALICE (admin), BOB and CAROL in the lobby of a new room.
fn lobby(limits: Limits) -> Room {
    let mut room = Room::new(limits);
    for (id, name, admin) in [
        (ALICE, "alice", true),
        (BOB, "bob", false),
        (CAROL, "carol", false),
    ] {
        assert_eq!(room.join(id, name, admin, None), Ok(AuthStatus::Lobby));
    }
    room
}

/// Acknowledges everything sent to `id` until its download is over; returns
/// every subscriber message it got, starting with `first`.
fn finish_download(room: &mut Room, id: ClientId, first: &Effects) -> Vec<ServerMessage> {
    let mut got = msgs_to(first, id, Channel::Subscriber);
    let mut guard = 0;
    while room.member(id).is_some_and(|m| m.download.is_some()) {
        guard += 1;
        assert!(guard < 1000, "download never finishes");
        let fx = room
            .acknowledge(id, got.len() as u64)
            .expect("acknowledge what was received");
        got.extend(msgs_to(&fx, id, Channel::Subscriber));
    }
    got
}

/// A live room: ALICE uploaded `blocks`; ALICE, BOB and CAROL are subscribed
/// and done downloading.
fn active_with(limits: Limits, blocks: Vec<(BlockSpec, Bytes)>) -> Room {
    let mut room = lobby(limits);
    init(&mut room, ALICE);
    for (spec, payload) in blocks {
        set(&mut room, ALICE, spec, payload).expect("SET accepted");
    }
    end(&mut room, ALICE);
    for id in [BOB, CAROL] {
        let fx = room
            .subscribe(id, StreamOptions::default())
            .expect("subscribe");
        finish_download(&mut room, id, &fx);
        assert_eq!(room.member(id).map(|m| m.status), Some(UserStatus::Active));
    }
    assert_eq!(room.state(), SessionState::Active);
    room
}

/// A live room with "cube" (owned by alice) and "shared" (COMMON).
fn active_room() -> Room {
    active_with(
        Limits::default(),
        vec![
            (block("cube", "Object"), data(1)),
            (owned("shared", "Material", COMMON), data(2)),
        ],
    )
}

fn code<T: std::fmt::Debug>(result: Result<T, RoomError>) -> ErrorCode {
    result.expect_err("the request is refused").code
}

fn names(room: &Room) -> Vec<String> {
    room.users().into_iter().map(|u| u.name).collect()
}

// --------------------------------------------------------------------- join

#[test]
fn join_is_lobby_until_the_scene_exists_then_running() {
    let mut room = Room::new(Limits::default());
    assert_eq!(room.join(ALICE, "alice", true, None), Ok(AuthStatus::Lobby));
    init(&mut room, ALICE);
    assert_eq!(room.state(), SessionState::SrvSync);
    assert_eq!(room.join(BOB, "bob", false, None), Ok(AuthStatus::Lobby));
    end(&mut room, ALICE);
    assert_eq!(
        room.join(CAROL, "carol", false, None),
        Ok(AuthStatus::Running)
    );
    assert_eq!(names(&room), ["alice", "bob", "carol"]);
    assert_eq!(
        room.member(CAROL).map(|m| m.status),
        Some(UserStatus::Lobby)
    );
}

#[test]
fn join_refuses_a_taken_name_and_changes_nothing() {
    let mut room = lobby(Limits::default());
    let err = room.join(DAVE, "bob", true, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::NameTaken);
    assert!(err.message.contains("bob"), "{}", err.message);
    assert!(room.member(DAVE).is_none());
    assert_eq!(names(&room), ["alice", "bob", "carol"]);
    assert!(!room.member(BOB).is_some_and(|m| m.admin));
}

#[test]
fn join_reserves_common_in_any_case() {
    let mut room = Room::new(Limits::default());
    for name in ["COMMON", "common", "CoMmOn"] {
        assert_eq!(
            code(room.join(DAVE, name, false, None)),
            ErrorCode::InvalidMessage,
            "{name}"
        );
    }
    assert!(room.users().is_empty());
    assert_eq!(
        room.join(DAVE, "commons", false, None),
        Ok(AuthStatus::Lobby)
    );
}

#[test]
fn join_enforces_max_users() {
    let mut room = Room::new(Limits {
        max_users: 2,
        ..Limits::default()
    });
    room.join(ALICE, "alice", true, None).unwrap();
    room.join(BOB, "bob", false, None).unwrap();
    assert_eq!(
        code(room.join(CAROL, "carol", false, None)),
        ErrorCode::SessionFull
    );
    assert!(room.member(CAROL).is_none());
    assert_eq!(room.status().users, 2);
    room.leave(BOB);
    assert_eq!(
        room.join(CAROL, "carol", false, None),
        Ok(AuthStatus::Lobby)
    );
}

#[test]
fn join_checks_metadata() {
    let mut room = Room::new(Limits::default());
    assert_eq!(
        code(room.join(ALICE, "alice", false, Some(Value::from("nope")))),
        ErrorCode::InvalidMessage
    );
    assert!(room.users().is_empty());
    let meta = map(&[("frame", Value::from(12))]);
    room.join(ALICE, "alice", false, Some(meta.clone()))
        .unwrap();
    assert_eq!(room.users()[0].metadata, meta);
}

// ------------------------------------------------------------------- upload

#[test]
fn upload_init_from_a_non_admin_is_rejected() {
    let mut room = lobby(Limits::default());
    let fx = init(&mut room, BOB);
    let (status, reason, _) = upload_reply(&fx, BOB);
    assert_eq!(status, UploadStatus::Rejected);
    assert!(reason.is_some_and(|r| r.contains("admin")));
    assert_eq!(room.state(), SessionState::Waiting);
    assert_eq!(
        code(set(&mut room, BOB, block("a", "Object"), data(1))),
        ErrorCode::NoUpload
    );
    assert!(room.repository().is_empty());
}

#[test]
fn upload_init_from_an_admin_is_accepted() {
    let mut room = lobby(Limits::default());
    let fx = init(&mut room, ALICE);
    assert!(matches!(
        reply(&fx, ALICE),
        ServerMessage::ServerSnapshot {
            id: Some(1),
            step: UploadStep::Init,
            status: UploadStatus::Accepted,
            code: None,
            reason: None,
            datablocks: None,
        }
    ));
    assert!(fx.presence_changed);
    assert_eq!(room.state(), SessionState::SrvSync);
    assert_eq!(
        room.member(ALICE).map(|m| m.status),
        Some(UserStatus::Uploading)
    );
}

#[test]
fn second_init_is_rejected_naming_the_uploader() {
    let mut room = lobby(Limits::default());
    room.join(DAVE, "dave", true, None).unwrap();
    init(&mut room, ALICE);
    let fx = init(&mut room, DAVE);
    let (status, reason, _) = upload_reply(&fx, DAVE);
    assert_eq!(status, UploadStatus::Rejected);
    let reason = reason.expect("a reason");
    assert!(reason.contains("alice"), "{reason}");
    assert_eq!(room.state(), SessionState::SrvSync);
    // alice is still the uploader; dave is not.
    set(&mut room, ALICE, block("a", "Object"), data(1)).expect("alice uploads");
    assert_eq!(
        code(set(&mut room, DAVE, block("b", "Object"), data(1))),
        ErrorCode::NoUpload
    );
    assert_eq!(room.repository().len(), 1);
}

#[test]
fn init_is_rejected_once_the_session_is_active() {
    let mut room = active_room();
    let fx = init(&mut room, ALICE);
    assert_eq!(upload_reply(&fx, ALICE).0, UploadStatus::Rejected);
    assert_eq!(room.state(), SessionState::Active);
    assert_eq!(room.repository().len(), 2);
}

#[test]
fn set_before_init_is_no_upload() {
    let mut room = lobby(Limits::default());
    assert_eq!(
        code(set(&mut room, ALICE, block("a", "Object"), data(1))),
        ErrorCode::NoUpload
    );
    assert_eq!(
        code(room.upload(ALICE, UploadStep::End, None, None)),
        ErrorCode::NoUpload
    );
    assert!(room.repository().is_empty());
    assert_eq!(room.state(), SessionState::Waiting);
}

#[test]
fn set_and_end_from_another_client_are_refused() {
    let mut room = lobby(Limits::default());
    room.join(DAVE, "dave", true, None).unwrap();
    init(&mut room, ALICE);
    assert_eq!(
        code(set(&mut room, DAVE, block("a", "Object"), data(1))),
        ErrorCode::NoUpload
    );
    assert_eq!(
        code(set(&mut room, BOB, block("a", "Object"), data(1))),
        ErrorCode::NoUpload
    );
    assert_eq!(
        code(room.upload(DAVE, UploadStep::End, None, None)),
        ErrorCode::NoUpload
    );
    assert!(room.repository().is_empty());
    assert_eq!(room.state(), SessionState::SrvSync);
}

#[test]
fn set_without_a_datablock_or_type_is_refused() {
    let mut room = lobby(Limits::default());
    init(&mut room, ALICE);
    assert_eq!(
        code(room.upload(ALICE, UploadStep::Set, None, None)),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code(set(&mut room, ALICE, existing("a"), data(1))),
        ErrorCode::InvalidMessage
    );
    assert!(room.repository().is_empty());
}

#[test]
fn duplicate_uuid_in_set_is_refused_and_the_repository_is_unchanged() {
    let mut room = lobby(Limits::default());
    init(&mut room, ALICE);
    set(&mut room, ALICE, block("a", "Object"), data(1)).unwrap();
    let err = set(&mut room, ALICE, block("a", "Mesh"), data(2)).unwrap_err();
    assert_eq!(err.code, ErrorCode::DuplicateDatablock);
    assert_eq!(room.repository().len(), 1);
    let a = room.repository().get("a").unwrap();
    assert_eq!(a.type_id, "Object");
    assert_eq!(a.revision, 1);
    assert_eq!(stored(&room, "a"), decode_data(&data(1)));
    assert_eq!(room.status().bytes, data(1).len());
}

#[test]
fn end_reports_the_count_and_activates_the_session() {
    let mut room = lobby(Limits::default());
    init(&mut room, ALICE);
    set(&mut room, ALICE, block("a", "Object"), data(1)).unwrap();
    set(&mut room, ALICE, block("b", "Mesh"), data(2)).unwrap();
    let fx = end(&mut room, ALICE);
    assert!(matches!(
        reply(&fx, ALICE),
        ServerMessage::ServerSnapshot {
            id: Some(9),
            step: UploadStep::End,
            status: UploadStatus::Done,
            datablocks: Some(2),
            ..
        }
    ));
    assert!(fx.presence_changed);
    assert_eq!(room.state(), SessionState::Active);
    let alice = room.member(ALICE).unwrap();
    assert_eq!(alice.status, UserStatus::Active);
    assert!(alice.subscribed && alice.download.is_none());
    // Nobody subscribed: no snapshot goes anywhere.
    assert!(wires_to(&fx, BOB, Channel::Subscriber).is_empty());
    assert_eq!(
        room.status(),
        RoomStatus {
            state: SessionState::Active,
            datablocks: 2,
            bytes: data(1).len() + data(2).len(),
            users: 3,
        }
    );
}

#[test]
fn an_empty_upload_is_allowed() {
    let mut room = lobby(Limits::default());
    room.subscribe(BOB, StreamOptions::default()).unwrap();
    init(&mut room, ALICE);
    let fx = end(&mut room, ALICE);
    assert_eq!(
        upload_reply(&fx, ALICE),
        (UploadStatus::Done, None, Some(0))
    );
    assert_eq!(room.state(), SessionState::Active);
    let stream = msgs_to(&fx, BOB, Channel::Subscriber);
    assert!(matches!(
        stream.first(),
        Some(ServerMessage::Snapshot {
            step: SnapshotStep::Begin,
            datablocks: Some(0),
            bytes: Some(0),
            ..
        })
    ));
    assert!(matches!(
        stream.last(),
        Some(ServerMessage::Snapshot {
            step: SnapshotStep::End,
            datablocks: Some(0),
            ..
        })
    ));
    assert!(
        !stream
            .iter()
            .any(|m| matches!(m, ServerMessage::Datablock { .. }))
    );
    assert_eq!(room.member(BOB).map(|m| m.status), Some(UserStatus::Active));
}

#[test]
fn lobby_subscribers_get_their_snapshot_at_end() {
    let mut room = lobby(Limits::default());
    let fx = room.subscribe(BOB, StreamOptions::default()).unwrap();
    assert!(
        fx.deliveries.is_empty(),
        "nothing to send before the scene exists"
    );
    assert_eq!(room.member(BOB).map(|m| m.status), Some(UserStatus::Lobby));
    init(&mut room, ALICE);
    set(&mut room, ALICE, block("a", "Object"), data(1)).unwrap();
    set(&mut room, ALICE, block("b", "Mesh"), data(2)).unwrap();
    let fx = end(&mut room, ALICE);
    assert_eq!(
        labels(&fx, BOB),
        ["BEGIN", "CATALOGUE", "DATABLOCK a", "DATABLOCK b", "END"]
    );
    // The stream goes to bob only; carol never subscribed; alice has the scene.
    assert!(wires_to(&fx, CAROL, Channel::Subscriber).is_empty());
    assert!(wires_to(&fx, ALICE, Channel::Subscriber).is_empty());
    let wires = wires_to(&fx, BOB, Channel::Subscriber);
    assert_eq!(wires[2].payload.as_deref(), Some(&data(1)[..]));
    assert_eq!(wires[3].payload.as_deref(), Some(&data(2)[..]));
    let ServerMessage::Snapshot {
        entries: Some(entries),
        ..
    } = decode(&wires[1])
    else {
        panic!("expected a catalogue");
    };
    assert_eq!(
        entries,
        [
            CatalogueEntry {
                uuid: "a".into(),
                type_id: "Object".into(),
                revision: 1,
                size: data(1).len() as u64,
            },
            CatalogueEntry {
                uuid: "b".into(),
                type_id: "Mesh".into(),
                revision: 1,
                size: data(2).len() as u64,
            },
        ]
    );
    assert_eq!(room.member(BOB).map(|m| m.status), Some(UserStatus::Active));
    assert!(fx.presence_changed);
}

#[test]
fn uploaded_blocks_belong_to_the_creator_or_common() {
    let mut room = lobby(Limits::default());
    init(&mut room, ALICE);
    set(&mut room, ALICE, block("mine", "Object"), data(1)).unwrap();
    set(&mut room, ALICE, owned("self", "Object", "alice"), data(1)).unwrap();
    set(&mut room, ALICE, owned("shared", "Object", COMMON), data(1)).unwrap();
    assert_eq!(owner(&room, "mine"), "alice");
    assert_eq!(owner(&room, "self"), "alice");
    assert_eq!(owner(&room, "shared"), COMMON);
}

#[test]
fn uploaded_blocks_cannot_belong_to_another_user() {
    let mut room = lobby(Limits::default());
    init(&mut room, ALICE);
    let err = set(&mut room, ALICE, owned("x", "Object", "bob"), data(1)).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidMessage);
    assert!(err.message.contains("bob"), "{}", err.message);
    assert!(room.repository().is_empty());
}

#[test]
fn upload_respects_max_datablocks() {
    let mut room = lobby(Limits {
        max_datablocks: 1,
        ..Limits::default()
    });
    init(&mut room, ALICE);
    set(&mut room, ALICE, block("a", "Object"), data(1)).unwrap();
    assert_eq!(
        code(set(&mut room, ALICE, block("b", "Object"), data(1))),
        ErrorCode::LimitExceeded
    );
    assert_eq!(room.repository().len(), 1);
}

// ---------------------------------------------------- uploader leaving early

#[test]
fn uploader_leaving_mid_upload_discards_the_scene() {
    let mut room = lobby(Limits::default());
    room.join(DAVE, "dave", true, None).unwrap();
    room.subscribe(BOB, StreamOptions::default()).unwrap();
    init(&mut room, ALICE);
    set(&mut room, ALICE, block("a", "Object"), data(1)).unwrap();
    set(&mut room, ALICE, block("b", "Object"), data(2)).unwrap();
    let fx = room.leave(ALICE);
    assert!(fx.presence_changed);
    assert!(fx.deliveries.is_empty(), "{:?}", fx.deliveries);
    assert!(room.repository().is_empty());
    assert_eq!(room.status().bytes, 0);
    assert_eq!(room.state(), SessionState::Waiting);
    // Another admin can start over, and bob still gets the new scene.
    assert_eq!(
        upload_reply(&init(&mut room, DAVE), DAVE).0,
        UploadStatus::Accepted
    );
    set(&mut room, DAVE, block("c", "Object"), data(3)).unwrap();
    let fx = end(&mut room, DAVE);
    assert_eq!(
        labels(&fx, BOB),
        ["BEGIN", "CATALOGUE", "DATABLOCK c", "END"]
    );
    assert_eq!(owner(&room, "c"), "dave");
}

#[test]
fn a_non_uploader_leaving_mid_upload_changes_nothing() {
    let mut room = lobby(Limits::default());
    init(&mut room, ALICE);
    set(&mut room, ALICE, block("a", "Object"), data(1)).unwrap();
    room.leave(BOB);
    assert_eq!(room.state(), SessionState::SrvSync);
    assert_eq!(room.repository().len(), 1);
    set(&mut room, ALICE, block("b", "Object"), data(1)).unwrap();
}

// ---------------------------------------------------------- snapshot stream

#[test]
fn snapshot_sends_dependencies_first() {
    let mut room = active_with(
        Limits::default(),
        vec![
            (with_deps("object", &["mesh", "material"]), data(1)),
            (with_deps("mesh", &["material"]), data(2)),
            (with_deps("material", &[]), data(3)),
            (with_deps("scene", &["object", "missing"]), data(4)),
        ],
    );
    room.join(DAVE, "dave", false, None).unwrap();
    let fx = room.subscribe(DAVE, StreamOptions::default()).unwrap();
    assert_eq!(
        labels(&fx, DAVE),
        [
            "BEGIN",
            "CATALOGUE",
            "DATABLOCK material",
            "DATABLOCK mesh",
            "DATABLOCK object",
            "DATABLOCK scene",
            "END"
        ]
    );
    let ServerMessage::Datablock { header, .. } = &msgs_to(&fx, DAVE, Channel::Subscriber)[4]
    else {
        panic!("expected a datablock");
    };
    assert_eq!(
        *header,
        DatablockHeader {
            uuid: "object".into(),
            type_id: "Object".into(),
            owner: "alice".into(),
            deps: vec!["mesh".into(), "material".into()],
            revision: 1,
        }
    );
}

#[test]
fn snapshot_window_limits_messages_in_flight() {
    let limits = Limits {
        snapshot_window_messages: 2,
        ..Limits::default()
    };
    let mut room = active_with(
        limits,
        vec![
            (block("a", "Object"), data(1)),
            (block("b", "Object"), data(2)),
            (block("c", "Object"), data(3)),
        ],
    );
    room.join(DAVE, "dave", false, None).unwrap();
    let fx = room.subscribe(DAVE, StreamOptions::default()).unwrap();
    assert!(fx.presence_changed);
    assert_eq!(labels(&fx, DAVE), ["BEGIN", "CATALOGUE"]);
    assert!(matches!(
        msgs_to(&fx, DAVE, Channel::Subscriber)[0],
        ServerMessage::Snapshot {
            window: Some(2),
            datablocks: Some(3),
            ..
        }
    ));
    assert_eq!(
        room.member(DAVE).map(|m| m.status),
        Some(UserStatus::Syncing)
    );
    // Acknowledging what was already acknowledged opens nothing.
    assert!(room.acknowledge(DAVE, 0).unwrap().deliveries.is_empty());
    assert_eq!(
        labels(&room.acknowledge(DAVE, 1).unwrap(), DAVE),
        ["DATABLOCK a"]
    );
    assert_eq!(
        labels(&room.acknowledge(DAVE, 3).unwrap(), DAVE),
        ["DATABLOCK b", "DATABLOCK c"]
    );
    assert_eq!(
        room.member(DAVE).map(|m| m.status),
        Some(UserStatus::Syncing)
    );
    let fx = room.acknowledge(DAVE, 5).unwrap();
    assert_eq!(labels(&fx, DAVE), ["END"]);
    assert!(fx.presence_changed);
    let dave = room.member(DAVE).unwrap();
    assert_eq!(dave.status, UserStatus::Active);
    assert!(dave.download.is_none());
}

#[test]
fn a_client_may_ask_for_a_smaller_window_but_not_a_larger_one() {
    let limits = Limits {
        snapshot_window_messages: 3,
        ..Limits::default()
    };
    let mut room = active_with(
        limits,
        vec![
            (block("a", "Object"), data(1)),
            (block("b", "Object"), data(2)),
        ],
    );
    // (asked for, messages sent at once and announced in BEGIN)
    for (i, (asked, window)) in [(Some(1), 1), (Some(100), 3), (None, 3), (Some(0), 1)]
        .into_iter()
        .enumerate()
    {
        let id = ClientId(10 + i as u64);
        room.join(id, &format!("user{i}"), false, None).unwrap();
        let options = StreamOptions {
            window: asked,
            batches: false,
        };
        let fx = room.subscribe(id, options).unwrap();
        let msgs = msgs_to(&fx, id, Channel::Subscriber);
        assert_eq!(msgs.len(), window, "asked for {asked:?}");
        let ServerMessage::Snapshot {
            step: SnapshotStep::Begin,
            window: announced,
            ..
        } = &msgs[0]
        else {
            panic!("expected BEGIN, got {:?}", msgs[0]);
        };
        assert_eq!(*announced, Some(window as u64), "asked for {asked:?}");
    }
}

#[test]
fn subscribing_twice_is_refused() {
    let mut room = active_room();
    assert_eq!(
        code(room.subscribe(BOB, StreamOptions::default())),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code(room.subscribe(ClientId(99), StreamOptions::default())),
        ErrorCode::NotAuthenticated
    );
}

#[test]
fn acknowledging_more_than_was_sent_is_an_error() {
    let limits = Limits {
        snapshot_window_messages: 2,
        ..Limits::default()
    };
    let mut room = active_with(limits, vec![(block("a", "Object"), data(1))]);
    room.join(DAVE, "dave", false, None).unwrap();
    room.subscribe(DAVE, StreamOptions::default()).unwrap();
    let err = room.acknowledge(DAVE, 3).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidMessage);
    // The download goes on as if nothing happened.
    assert_eq!(
        labels(&room.acknowledge(DAVE, 2).unwrap(), DAVE),
        ["DATABLOCK a", "END"]
    );
}

#[test]
fn acknowledging_without_a_download_is_an_error() {
    let mut room = lobby(Limits::default());
    assert_eq!(code(room.acknowledge(BOB, 0)), ErrorCode::InvalidMessage);
    assert_eq!(
        code(room.acknowledge(ClientId(99), 0)),
        ErrorCode::NotAuthenticated
    );
}

#[test]
fn acknowledging_the_end_of_a_finished_snapshot_is_not_an_error() {
    let limits = Limits {
        snapshot_window_messages: 2,
        ..Limits::default()
    };
    let mut room = active_with(limits, vec![(block("a", "Object"), data(1))]);
    room.join(DAVE, "dave", false, None).unwrap();
    room.subscribe(DAVE, StreamOptions::default()).unwrap();
    let fx = room.acknowledge(DAVE, 2).unwrap();
    assert_eq!(labels(&fx, DAVE), ["DATABLOCK a", "END"]);
    // The client received 4 messages and says so.
    let fx = room
        .acknowledge(DAVE, 4)
        .expect("acknowledging received messages is allowed");
    assert!(fx.deliveries.is_empty());
}

#[test]
fn updates_during_a_download_are_held_until_its_end() {
    let limits = Limits {
        snapshot_window_messages: 2,
        ..Limits::default()
    };
    let mut room = active_with(
        limits,
        vec![
            (block("cube", "Object"), data(1)),
            (owned("shared", "Material", COMMON), data(2)),
        ],
    );
    room.join(DAVE, "dave", false, None).unwrap();
    let first = room.subscribe(DAVE, StreamOptions::default()).unwrap();
    assert_eq!(labels(&first, DAVE), ["BEGIN", "CATALOGUE"]);

    for n in [10, 11] {
        let fx = room
            .update(BOB, existing("shared"), false, None, data(n))
            .unwrap();
        assert!(
            wires_to(&fx, DAVE, Channel::Subscriber).is_empty(),
            "held, not sent"
        );
        assert_eq!(fx.deliveries.len(), 1);
        assert_eq!(fx.deliveries[0].to, [ALICE, CAROL]);
    }
    let fx = room.delete(ALICE, None, "cube".into(), false).unwrap();
    assert!(wires_to(&fx, DAVE, Channel::Subscriber).is_empty());

    let mut got = msgs_to(&first, DAVE, Channel::Subscriber);
    let fx = room.acknowledge(DAVE, 2).unwrap();
    assert_eq!(labels(&fx, DAVE), ["DATABLOCK cube", "DATABLOCK shared"]);
    got.extend(msgs_to(&fx, DAVE, Channel::Subscriber));
    let fx = room.acknowledge(DAVE, 4).unwrap();
    assert_eq!(
        labels(&fx, DAVE),
        ["END", "UPDATE shared r2", "UPDATE shared r3", "DELETE cube"]
    );
    let held = wires_to(&fx, DAVE, Channel::Subscriber);
    assert_eq!(held[1].payload.as_deref(), Some(&data(10)[..]));
    assert_eq!(held[2].payload.as_deref(), Some(&data(11)[..]));
    got.extend(msgs_to(&fx, DAVE, Channel::Subscriber));

    // The snapshot is the state when dave subscribed.
    assert!(got.iter().any(|m| matches!(
        m,
        ServerMessage::Datablock { header, .. } if header.uuid == "shared" && header.revision == 1
    )));

    // From now on dave is live, and gets each update exactly once.
    let fx = room
        .update(BOB, existing("shared"), false, None, data(12))
        .unwrap();
    assert_eq!(fx.deliveries.len(), 1);
    assert_eq!(fx.deliveries[0].to, [ALICE, CAROL, DAVE]);
    got.extend(msgs_to(&fx, DAVE, Channel::Subscriber));
    let updates: Vec<String> = got
        .iter()
        .filter(|m| matches!(m, ServerMessage::Update { .. }))
        .map(label)
        .collect();
    assert_eq!(
        updates,
        ["UPDATE shared r2", "UPDATE shared r3", "UPDATE shared r4"]
    );
}

#[test]
fn fetch_during_a_download_waits_behind_the_snapshot() {
    let limits = Limits {
        snapshot_window_messages: 1,
        ..Limits::default()
    };
    let mut room = active_with(limits, vec![(block("cube", "Object"), data(1))]);
    room.join(DAVE, "dave", false, None).unwrap();
    room.subscribe(DAVE, StreamOptions::default()).unwrap();
    let fx = room.fetch(DAVE, Some(7), "cube").unwrap();
    assert!(fx.deliveries.is_empty());
    room.acknowledge(DAVE, 1).unwrap();
    room.acknowledge(DAVE, 2).unwrap();
    let fx = room.acknowledge(DAVE, 3).unwrap();
    let msgs = msgs_to(&fx, DAVE, Channel::Subscriber);
    assert_eq!(msgs.len(), 2);
    assert!(matches!(
        &msgs[0],
        ServerMessage::Snapshot {
            step: SnapshotStep::End,
            ..
        }
    ));
    assert!(matches!(
        &msgs[1],
        ServerMessage::Datablock { id: Some(7), header, .. } if header.uuid == "cube"
    ));
}

#[test]
fn a_large_block_is_sent_in_chunks_in_the_snapshot() {
    let limits = Limits {
        chunk_bytes: 1024,
        ..Limits::default()
    };
    let big = encode_value(&Value::Binary(
        (0..5000u32).map(|i| (i % 251) as u8).collect(),
    ));
    assert!(big.len() > 4 * 1024);
    let mut room = active_with(
        limits,
        vec![
            (block("small", "Object"), data(1)),
            (block("big", "Image"), big.clone()),
        ],
    );
    room.join(DAVE, "dave", false, None).unwrap();
    let fx = room.subscribe(DAVE, StreamOptions::default()).unwrap();
    let wires = wires_to(&fx, DAVE, Channel::Subscriber);
    let msgs: Vec<ServerMessage> = wires.iter().map(decode).collect();
    assert_eq!(
        msgs.iter().map(label).collect::<Vec<_>>(),
        [
            "BEGIN",
            "CATALOGUE",
            "DATABLOCK small",
            "DATABLOCK big",
            "CHUNK 0",
            "CHUNK 1",
            "CHUNK 2",
            "CHUNK 3",
            "CHUNK 4",
            "END"
        ]
    );
    assert_eq!(wires[2].payload.as_deref(), Some(&data(1)[..]));
    let ServerMessage::Datablock {
        chunk:
            ChunkFields {
                transfer: Some(transfer),
                chunks: Some(5),
                size: Some(size),
            },
        ..
    } = &msgs[3]
    else {
        panic!("expected a chunked datablock header, got {:?}", msgs[3]);
    };
    assert_eq!(*size, big.len() as u64);
    assert!(wires[3].payload.is_none());
    let mut joined = Vec::new();
    for (i, (msg, wire)) in msgs[4..9].iter().zip(&wires[4..9]).enumerate() {
        assert_eq!(
            *msg,
            ServerMessage::Chunk {
                transfer: *transfer,
                index: i as u32
            }
        );
        let part = wire.payload.as_ref().expect("a chunk carries data");
        assert!(part.len() <= 1024);
        joined.extend_from_slice(part);
    }
    assert_eq!(joined, big);
    assert!(matches!(
        &msgs[0],
        ServerMessage::Snapshot { bytes: Some(b), .. } if *b == (big.len() + data(1).len()) as u64
    ));

    // Every chunked transfer gets its own id.
    room.join(ClientId(5), "erin", false, None).unwrap();
    let fx = room
        .subscribe(ClientId(5), StreamOptions::default())
        .unwrap();
    let other = msgs_to(&fx, ClientId(5), Channel::Subscriber);
    let ServerMessage::Datablock { chunk, .. } = &other[3] else {
        panic!("expected a datablock");
    };
    assert!(chunk.transfer.is_some_and(|t| t != *transfer));
}

#[test]
fn catalogue_sizes_match_the_data_after_a_patch() {
    let mut room = active_room();
    room.update(
        ALICE,
        existing("cube"),
        true,
        None,
        patch(vec![set_op(&["name"], Value::from("x".repeat(200)))]),
    )
    .unwrap();
    room.join(DAVE, "dave", false, None).unwrap();
    let fx = room.subscribe(DAVE, StreamOptions::default()).unwrap();
    let wires = wires_to(&fx, DAVE, Channel::Subscriber);
    let msgs: Vec<ServerMessage> = wires.iter().map(decode).collect();
    let ServerMessage::Snapshot {
        entries: Some(entries),
        ..
    } = &msgs[1]
    else {
        panic!("expected a catalogue");
    };
    let cube_data = wires[2].payload.clone().expect("inline data");
    assert!(matches!(&msgs[2], ServerMessage::Datablock { header, .. } if header.uuid == "cube"));
    assert_eq!(entries[0].uuid, "cube");
    assert_eq!(entries[0].size, cube_data.len() as u64);
    let ServerMessage::Snapshot {
        bytes: Some(total), ..
    } = &msgs[0]
    else {
        panic!("expected BEGIN");
    };
    assert_eq!(*total, (cube_data.len() + data(2).len()) as u64);
}

#[test]
fn a_downloading_client_holding_too_much_is_disconnected() {
    let limits = Limits {
        snapshot_window_messages: 1,
        outbox_max_bytes: 200,
        ..Limits::default()
    };
    let mut room = active_with(limits, vec![(owned("shared", "Object", COMMON), data(1))]);
    room.join(DAVE, "dave", false, None).unwrap();
    room.subscribe(DAVE, StreamOptions::default()).unwrap();
    let fx = room
        .update(BOB, existing("shared"), false, None, data(2))
        .unwrap();
    assert!(fx.disconnect.is_empty());
    let big = encode_value(&Value::Binary(vec![0; 300]));
    let fx = room
        .update(BOB, existing("shared"), false, None, big)
        .unwrap();
    assert_eq!(fx.disconnect, [(DAVE, "too slow".to_owned())]);
    // Live clients still get the update.
    assert_eq!(fx.deliveries.len(), 1);
    assert_eq!(fx.deliveries[0].to, [ALICE, CAROL]);
}

// -------------------------------------------------------------- live update

#[test]
fn an_update_may_replace_the_dependencies() {
    let mut room = active_room();
    let fx = room
        .update(ALICE, with_deps("cube", &["shared"]), false, None, data(2))
        .unwrap();
    assert_eq!(room.repository().get("cube").unwrap().deps, ["shared"]);
    let ServerMessage::Update { header, .. } = &msgs_to(&fx, BOB, Channel::Subscriber)[0] else {
        panic!("expected UPDATE");
    };
    assert_eq!(header.deps, ["shared"]);
    // Leaving deps out keeps them.
    room.update(ALICE, existing("cube"), false, None, data(3))
        .unwrap();
    assert_eq!(room.repository().get("cube").unwrap().deps, ["shared"]);
}

#[test]
fn an_update_goes_once_to_every_other_live_subscriber() {
    let mut room = active_room();
    room.join(DAVE, "dave", false, None).unwrap(); // not subscribed
    let payload = encode_value(&map(&[("n", Value::from(5)), ("s", Value::from("x"))]));
    let fx = room
        .update(BOB, existing("shared"), false, None, payload.clone())
        .unwrap();
    assert_eq!(fx.deliveries.len(), 1);
    let delivery = &fx.deliveries[0];
    assert_eq!(delivery.to, [ALICE, CAROL]);
    assert_eq!(delivery.channel, Channel::Subscriber);
    assert_eq!(delivery.wire.payload.as_ref(), Some(&payload));
    assert_eq!(
        decode(&delivery.wire),
        ServerMessage::Update {
            header: DatablockHeader {
                uuid: "shared".into(),
                type_id: "Material".into(),
                owner: COMMON.into(),
                deps: vec![],
                revision: 2,
            },
            sender: "bob".into(),
            patch: false,
            chunk: ChunkFields::default(),
        }
    );
    assert_eq!(revision(&room, "shared"), 2);
    assert_eq!(stored(&room, "shared"), decode_data(&payload));
    assert!(!fx.presence_changed);
    assert!(fx.disconnect.is_empty());
}

#[test]
fn an_update_of_a_new_uuid_creates_a_block_owned_by_the_sender() {
    let mut room = active_room();
    let fx = room
        .update(BOB, with_deps("bobs", &["cube"]), false, Some(0), data(3))
        .unwrap();
    let created = room.repository().get("bobs").expect("created");
    assert_eq!((created.owner.as_str(), created.revision), ("bob", 1));
    assert_eq!(created.deps, ["cube"]);
    assert_eq!(fx.deliveries.len(), 1);
    assert_eq!(fx.deliveries[0].to, [ALICE, CAROL]);
    assert_eq!(labels(&fx, ALICE), ["UPDATE bobs r1"]);
    // A new block needs its type, its creator (or COMMON) as owner, and no
    // base revision but 0.
    assert_eq!(
        code(room.update(BOB, existing("nothing"), false, None, data(1))),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code(room.update(
            BOB,
            owned("theirs", "Object", "alice"),
            false,
            None,
            data(1)
        )),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code(room.update(BOB, block("stale", "Object"), false, Some(3), data(1))),
        ErrorCode::StaleRevision
    );
    assert!(!room.repository().contains("nothing"));
    assert!(!room.repository().contains("theirs"));
    assert!(!room.repository().contains("stale"));
}

#[test]
fn a_patch_update_is_applied_and_forwarded_as_a_patch() {
    let mut room = active_room();
    let bytes = patch(vec![
        set_op(&["n"], Value::from(42)),
        set_op(&["name"], Value::from("Cube")),
    ]);
    let fx = room
        .update(ALICE, existing("cube"), true, Some(1), bytes.clone())
        .unwrap();
    assert_eq!(
        stored(&room, "cube"),
        map(&[("n", Value::from(42)), ("name", Value::from("Cube"))])
    );
    assert_eq!(revision(&room, "cube"), 2);
    assert_eq!(fx.deliveries.len(), 1);
    let delivery = &fx.deliveries[0];
    assert_eq!(delivery.to, [BOB, CAROL]);
    assert_eq!(delivery.wire.payload.as_ref(), Some(&bytes));
    let ServerMessage::Update {
        header,
        sender,
        patch: is_patch,
        ..
    } = decode(&delivery.wire)
    else {
        panic!("expected UPDATE");
    };
    assert!(is_patch);
    assert_eq!(sender, "alice");
    assert_eq!(header.revision, 2);

    // A later patch builds on the patched value, and a snapshot sends it.
    room.update(
        ALICE,
        existing("cube"),
        true,
        Some(2),
        patch(vec![set_op(&["n"], Value::from(43))]),
    )
    .unwrap();
    room.join(DAVE, "dave", false, None).unwrap();
    let fx = room.subscribe(DAVE, StreamOptions::default()).unwrap();
    let wires = wires_to(&fx, DAVE, Channel::Subscriber);
    assert_eq!(
        decode_data(wires[2].payload.as_ref().unwrap()),
        map(&[("n", Value::from(43)), ("name", Value::from("Cube"))])
    );
}

#[test]
fn a_full_update_after_patches_replaces_the_value() {
    let mut room = active_room();
    room.update(
        ALICE,
        existing("cube"),
        true,
        None,
        patch(vec![set_op(&["x"], Value::from(1))]),
    )
    .unwrap();
    room.update(ALICE, existing("cube"), false, None, data(9))
        .unwrap();
    assert_eq!(stored(&room, "cube"), decode_data(&data(9)));
    room.update(
        ALICE,
        existing("cube"),
        true,
        None,
        patch(vec![set_op(&["y"], Value::from(2))]),
    )
    .unwrap();
    assert_eq!(
        stored(&room, "cube"),
        map(&[("n", Value::from(9)), ("y", Value::from(2))])
    );
    assert_eq!(revision(&room, "cube"), 4);
}

#[test]
fn a_patch_on_an_unknown_uuid_is_refused() {
    let mut room = active_room();
    let err = room
        .update(ALICE, block("ghost", "Object"), true, None, patch(vec![]))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownDatablock);
    assert!(!room.repository().contains("ghost"));
}

#[test]
fn a_failing_patch_changes_nothing() {
    let mut room = active_room();
    let bytes = patch(vec![
        set_op(&["n"], Value::from(100)),
        PatchOp::Remove {
            path: path(&["missing"]),
        },
    ]);
    let fx = room.update(ALICE, existing("cube"), true, None, bytes);
    assert_eq!(code(fx), ErrorCode::PatchFailed);
    assert_eq!(stored(&room, "cube"), decode_data(&data(1)));
    assert_eq!(revision(&room, "cube"), 1);
    // A patch that is not a patch at all fails the same way.
    for bad in [data(1), Bytes::from_static(&[0xc1])] {
        assert_eq!(
            code(room.update(ALICE, existing("cube"), true, None, bad)),
            ErrorCode::PatchFailed
        );
    }
    assert_eq!(stored(&room, "cube"), decode_data(&data(1)));
    assert_eq!(revision(&room, "cube"), 1);
    // And the block still takes good patches afterwards.
    room.update(
        ALICE,
        existing("cube"),
        true,
        Some(1),
        patch(vec![set_op(&["n"], Value::from(2))]),
    )
    .unwrap();
    assert_eq!(stored(&room, "cube"), decode_data(&data(2)));
}

#[test]
fn a_failing_patch_after_a_good_one_keeps_the_patched_value() {
    let mut room = active_room();
    room.update(
        ALICE,
        existing("cube"),
        true,
        None,
        patch(vec![set_op(&["n"], Value::from(7))]),
    )
    .unwrap();
    let bad = patch(vec![
        set_op(&["n"], Value::from(8)),
        set_op(&["a", "b"], Value::from(1)),
    ]);
    assert_eq!(
        code(room.update(ALICE, existing("cube"), true, None, bad)),
        ErrorCode::PatchFailed
    );
    assert_eq!(stored(&room, "cube"), decode_data(&data(7)));
    assert_eq!(revision(&room, "cube"), 2);
}

#[test]
fn a_stale_base_revision_is_refused() {
    let mut room = active_room();
    room.update(ALICE, existing("cube"), false, Some(1), data(2))
        .unwrap();
    let err = room
        .update(ALICE, existing("cube"), false, Some(1), data(3))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::StaleRevision);
    assert_eq!(stored(&room, "cube"), decode_data(&data(2)));
    assert_eq!(revision(&room, "cube"), 2);
    room.update(ALICE, existing("cube"), false, Some(2), data(3))
        .unwrap();
    assert_eq!(revision(&room, "cube"), 3);
}

#[test]
fn an_update_cannot_change_the_type_or_the_owner() {
    let mut room = active_room();
    assert_eq!(
        code(room.update(ALICE, block("cube", "Mesh"), false, None, data(5))),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code(room.update(ALICE, owned("cube", "Object", COMMON), false, None, data(5))),
        ErrorCode::InvalidMessage
    );
    let cube = room.repository().get("cube").unwrap();
    assert_eq!(
        (cube.type_id.as_str(), cube.owner.as_str(), cube.revision),
        ("Object", "alice", 1)
    );
    assert_eq!(stored(&room, "cube"), decode_data(&data(1)));
    // Repeating the same type and owner is fine.
    room.update(
        ALICE,
        owned("cube", "Object", "alice"),
        false,
        None,
        data(5),
    )
    .unwrap();
    assert_eq!(revision(&room, "cube"), 2);
}

#[test]
fn updates_before_the_session_is_active_are_refused() {
    let mut room = lobby(Limits::default());
    assert_eq!(
        code(room.update(ALICE, block("a", "Object"), false, None, data(1))),
        ErrorCode::SessionNotActive
    );
    init(&mut room, ALICE);
    assert_eq!(
        code(room.update(ALICE, block("a", "Object"), false, None, data(1))),
        ErrorCode::SessionNotActive
    );
    assert!(room.repository().is_empty());
    assert_eq!(
        code(room.fetch(ALICE, None, "a")),
        ErrorCode::SessionNotActive
    );
    assert_eq!(
        code(room.delete(ALICE, None, "a".into(), false)),
        ErrorCode::SessionNotActive
    );
    assert_eq!(
        code(room.change_owner(ALICE, None, vec!["a".into()], COMMON.into(), false)),
        ErrorCode::SessionNotActive
    );
}

#[test]
fn updates_from_strangers_are_refused() {
    let mut room = active_room();
    assert_eq!(
        code(room.update(ClientId(99), existing("shared"), false, None, data(1))),
        ErrorCode::NotAuthenticated
    );
    assert_eq!(revision(&room, "shared"), 1);
}

#[test]
fn a_large_live_update_is_forwarded_in_chunks() {
    let limits = Limits {
        chunk_bytes: 1024,
        ..Limits::default()
    };
    let mut room = active_with(limits, vec![(owned("img", "Image", COMMON), data(1))]);
    let big = encode_value(&Value::Binary(vec![7; 3000]));
    let fx = room
        .update(BOB, existing("img"), false, None, big.clone())
        .unwrap();
    assert_eq!(fx.deliveries.len(), 4);
    assert!(fx.deliveries.iter().all(|d| d.to == [ALICE, CAROL]));
    let msgs: Vec<ServerMessage> = fx.deliveries.iter().map(|d| decode(&d.wire)).collect();
    let ServerMessage::Update { chunk, .. } = &msgs[0] else {
        panic!("expected UPDATE");
    };
    assert_eq!(chunk.chunks, Some(3));
    assert_eq!(chunk.size, Some(big.len() as u64));
    let joined: Vec<u8> = fx.deliveries[1..]
        .iter()
        .flat_map(|d| d.wire.payload.clone().unwrap().to_vec())
        .collect();
    assert_eq!(joined, big);
    assert_eq!(stored(&room, "img"), Value::Binary(vec![7; 3000]));
}

// ---------------------------------------------------------------- ownership

#[test]
fn only_the_owner_may_update_delete_or_give_away_a_block() {
    let mut room = active_room();
    let err = room
        .update(BOB, existing("cube"), false, None, data(9))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotOwner);
    assert!(err.message.contains("alice"), "{}", err.message);
    assert_eq!(
        code(room.update(
            BOB,
            existing("cube"),
            true,
            None,
            patch(vec![set_op(&["n"], Value::from(9))])
        )),
        ErrorCode::NotOwner
    );
    assert_eq!(
        code(room.delete(BOB, None, "cube".into(), false)),
        ErrorCode::NotOwner
    );
    assert_eq!(
        code(room.change_owner(BOB, None, vec!["cube".into()], "bob".into(), false)),
        ErrorCode::NotOwner
    );
    assert_eq!(owner(&room, "cube"), "alice");
    assert_eq!(revision(&room, "cube"), 1);
    assert_eq!(stored(&room, "cube"), decode_data(&data(1)));
}

#[test]
fn an_admin_must_force_to_touch_someone_elses_block() {
    let mut room = active_room();
    room.update(BOB, block("bobs", "Object"), false, None, data(1))
        .unwrap();
    assert_eq!(
        code(room.update(ALICE, existing("bobs"), false, None, data(2))),
        ErrorCode::NotOwner
    );
    assert_eq!(
        code(room.delete(ALICE, None, "bobs".into(), false)),
        ErrorCode::NotOwner
    );
    assert!(room.repository().contains("bobs"));
}

#[test]
fn common_blocks_are_writable_by_anyone() {
    let mut room = active_room();
    room.update(BOB, existing("shared"), false, None, data(3))
        .unwrap();
    room.update(
        CAROL,
        existing("shared"),
        true,
        None,
        patch(vec![set_op(&["c"], Value::from(1))]),
    )
    .unwrap();
    assert_eq!(
        stored(&room, "shared"),
        map(&[("n", Value::from(3)), ("c", Value::from(1))])
    );
    assert_eq!(revision(&room, "shared"), 3);
    room.change_owner(CAROL, None, vec!["shared".into()], "carol".into(), false)
        .unwrap();
    assert_eq!(owner(&room, "shared"), "carol");
    room.change_owner(CAROL, None, vec!["shared".into()], COMMON.into(), false)
        .unwrap();
    room.delete(BOB, None, "shared".into(), false).unwrap();
    assert!(!room.repository().contains("shared"));
}

#[test]
fn an_admin_may_force_right_and_delete() {
    let mut room = active_room();
    room.update(BOB, block("b1", "Object"), false, None, data(1))
        .unwrap();
    room.update(BOB, block("b2", "Object"), false, None, data(1))
        .unwrap();
    let fx = room
        .change_owner(ALICE, Some(3), vec!["b1".into()], "carol".into(), true)
        .unwrap();
    assert_eq!(owner(&room, "b1"), "carol");
    assert!(matches!(
        reply(&fx, ALICE),
        ServerMessage::Right { id: Some(3), .. }
    ));
    let fx = room.delete(ALICE, Some(4), "b2".into(), true).unwrap();
    assert!(!room.repository().contains("b2"));
    assert_eq!(
        reply(&fx, ALICE),
        ServerMessage::Delete {
            id: Some(4),
            uuid: "b2".into(),
            sender: None,
        }
    );
    assert_eq!(
        msgs_to(&fx, BOB, Channel::Subscriber),
        [ServerMessage::Delete {
            id: None,
            uuid: "b2".into(),
            sender: Some("alice".into()),
        }]
    );
    assert_eq!(fx.deliveries.len(), 2);
    assert_eq!(fx.deliveries[1].to, [BOB, CAROL]);
}

#[test]
fn a_non_admin_cannot_force() {
    let mut room = active_room();
    let err = room
        .change_owner(BOB, None, vec!["cube".into()], "bob".into(), true)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotOwner);
    assert!(err.message.contains("admin"), "{}", err.message);
    assert_eq!(
        code(room.delete(BOB, None, "cube".into(), true)),
        ErrorCode::NotOwner
    );
    assert_eq!(owner(&room, "cube"), "alice");
    assert!(room.repository().contains("cube"));
}

#[test]
fn right_to_an_unknown_user_is_refused() {
    let mut room = active_room();
    let err = room
        .change_owner(ALICE, None, vec!["cube".into()], "zed".into(), false)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownUser);
    assert_eq!(
        code(room.change_owner(ALICE, None, vec!["cube".into()], "common".into(), false)),
        ErrorCode::UnknownUser
    );
    assert_eq!(owner(&room, "cube"), "alice");
}

#[test]
fn right_needs_known_uuids() {
    let mut room = active_room();
    assert_eq!(
        code(room.change_owner(ALICE, None, vec![], "bob".into(), false)),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code(room.change_owner(
            ALICE,
            None,
            vec!["cube".into(), "ghost".into()],
            "bob".into(),
            false
        )),
        ErrorCode::UnknownDatablock
    );
    assert_eq!(owner(&room, "cube"), "alice");
    assert_eq!(
        code(room.delete(ALICE, None, "ghost".into(), false)),
        ErrorCode::UnknownDatablock
    );
}

#[test]
fn right_with_several_uuids_is_all_or_nothing() {
    let mut room = active_room();
    room.update(BOB, block("bobs", "Object"), false, None, data(1))
        .unwrap();
    let err = room
        .change_owner(
            ALICE,
            None,
            vec!["cube".into(), "shared".into(), "bobs".into()],
            "carol".into(),
            false,
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotOwner);
    assert_eq!(owner(&room, "cube"), "alice");
    assert_eq!(owner(&room, "shared"), COMMON);
    assert_eq!(owner(&room, "bobs"), "bob");
    room.change_owner(
        ALICE,
        None,
        vec!["cube".into(), "shared".into()],
        "carol".into(),
        false,
    )
    .unwrap();
    assert_eq!(owner(&room, "cube"), "carol");
    assert_eq!(owner(&room, "shared"), "carol");
}

#[test]
fn right_replies_to_the_requester_and_tells_the_others() {
    let mut room = active_room();
    room.join(DAVE, "dave", false, None).unwrap(); // not subscribed
    let fx = room
        .change_owner(
            ALICE,
            Some(12),
            vec!["cube".into(), "shared".into()],
            "bob".into(),
            false,
        )
        .unwrap();
    assert_eq!(fx.deliveries.len(), 2);
    assert_eq!(fx.deliveries[0].to, [ALICE]);
    assert_eq!(fx.deliveries[0].channel, Channel::Commands);
    assert_eq!(
        decode(&fx.deliveries[0].wire),
        ServerMessage::Right {
            id: Some(12),
            uuids: vec!["cube".into(), "shared".into()],
            owner: "bob".into(),
            sender: None,
        }
    );
    assert_eq!(fx.deliveries[1].to, [BOB, CAROL]);
    assert_eq!(fx.deliveries[1].channel, Channel::Subscriber);
    assert_eq!(
        decode(&fx.deliveries[1].wire),
        ServerMessage::Right {
            id: None,
            uuids: vec!["cube".into(), "shared".into()],
            owner: "bob".into(),
            sender: Some("alice".into()),
        }
    );
    assert_eq!(owner(&room, "cube"), "bob");
    // The revision does not move: the data did not change.
    assert_eq!(revision(&room, "cube"), 1);
    // The new owner may now write it, the old one may not.
    room.update(BOB, existing("cube"), false, None, data(4))
        .unwrap();
    assert_eq!(
        code(room.update(ALICE, existing("cube"), false, None, data(5))),
        ErrorCode::NotOwner
    );
}

// -------------------------------------------------------------------- leave

#[test]
fn leaving_releases_owned_blocks_to_common() {
    let mut room = active_room();
    room.update(BOB, block("b2", "Object"), false, None, data(1))
        .unwrap();
    room.update(BOB, block("b1", "Object"), false, None, data(1))
        .unwrap();
    room.join(DAVE, "dave", false, None).unwrap(); // not subscribed
    let fx = room.leave(BOB);
    assert!(fx.presence_changed);
    assert!(fx.disconnect.is_empty());
    assert_eq!(fx.deliveries.len(), 1);
    assert_eq!(fx.deliveries[0].to, [ALICE, CAROL]);
    assert_eq!(fx.deliveries[0].channel, Channel::Subscriber);
    assert_eq!(
        decode(&fx.deliveries[0].wire),
        ServerMessage::Right {
            id: None,
            uuids: vec!["b1".into(), "b2".into()],
            owner: COMMON.into(),
            sender: Some("bob".into()),
        }
    );
    assert_eq!(owner(&room, "b1"), COMMON);
    assert_eq!(owner(&room, "b2"), COMMON);
    assert_eq!(owner(&room, "cube"), "alice");
    assert!(room.member(BOB).is_none());
    assert_eq!(names(&room), ["alice", "carol", "dave"]);
    // Released blocks are anyone's now.
    room.update(CAROL, existing("b1"), false, None, data(2))
        .unwrap();
}

#[test]
fn leaving_without_blocks_only_changes_presence() {
    let mut room = active_room();
    let fx = room.leave(CAROL);
    assert!(fx.presence_changed);
    assert!(fx.deliveries.is_empty());
    assert_eq!(room.status().users, 2);
    let fx = room.leave(CAROL);
    assert!(!fx.presence_changed);
    assert!(fx.deliveries.is_empty());
}

#[test]
fn released_blocks_reach_downloading_clients_after_their_snapshot() {
    let limits = Limits {
        snapshot_window_messages: 1,
        ..Limits::default()
    };
    let mut room = active_with(limits, vec![(block("cube", "Object"), data(1))]);
    room.join(DAVE, "dave", false, None).unwrap();
    room.subscribe(DAVE, StreamOptions::default()).unwrap();
    let fx = room.leave(ALICE);
    assert!(wires_to(&fx, DAVE, Channel::Subscriber).is_empty());
    assert_eq!(fx.deliveries[0].to, [BOB, CAROL]);
    room.acknowledge(DAVE, 1).unwrap();
    room.acknowledge(DAVE, 2).unwrap();
    let fx = room.acknowledge(DAVE, 3).unwrap();
    assert_eq!(labels(&fx, DAVE), ["END", "RIGHT [\"cube\"] COMMON"]);
}

// --------------------------------------------------------------------- kick

#[test]
fn only_admins_and_the_console_may_kick() {
    let room = active_room();
    assert_eq!(
        code(room.kick_target(Some(BOB), "carol")),
        ErrorCode::NotAdmin
    );
    assert_eq!(room.kick_target(Some(ALICE), "carol"), Ok(CAROL));
    assert_eq!(room.kick_target(None, "bob"), Ok(BOB));
    assert_eq!(code(room.kick_target(None, "zed")), ErrorCode::UnknownUser);
    assert_eq!(
        code(room.kick_target(Some(ALICE), "zed")),
        ErrorCode::UnknownUser
    );
    assert_eq!(
        code(room.kick_target(Some(ClientId(99)), "bob")),
        ErrorCode::NotAuthenticated
    );
    assert_eq!(room.status().users, 3);
}

// ----------------------------------------------------------------- metadata

#[test]
fn metadata_updates_merge() {
    let mut room = Room::new(Limits::default());
    let initial = map(&[
        ("frame", Value::from(1)),
        ("mode", Value::from("EDIT")),
        ("scene", Value::from("Scene")),
    ]);
    room.join(ALICE, "alice", false, Some(initial)).unwrap();
    let fx = room
        .set_metadata(
            ALICE,
            map(&[
                ("mode", Value::from("OBJECT")),
                ("frame", Value::Nil),
                ("color", Value::Array(vec![Value::from(1), Value::from(0)])),
                ("absent", Value::Nil),
            ]),
        )
        .unwrap();
    assert!(fx.presence_changed);
    assert!(fx.deliveries.is_empty());
    assert_eq!(
        room.users()[0].metadata,
        map(&[
            ("mode", Value::from("OBJECT")),
            ("scene", Value::from("Scene")),
            ("color", Value::Array(vec![Value::from(1), Value::from(0)])),
        ])
    );
}

#[test]
fn metadata_must_be_a_map_with_string_keys() {
    let mut room = Room::new(Limits::default());
    let initial = map(&[("frame", Value::from(1))]);
    room.join(ALICE, "alice", false, Some(initial.clone()))
        .unwrap();
    assert_eq!(
        code(room.set_metadata(ALICE, Value::from(3))),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        code(room.set_metadata(ALICE, Value::Array(vec![]))),
        ErrorCode::InvalidMessage
    );
    let mixed = Value::Map(vec![
        (Value::from("frame"), Value::from(2)),
        (Value::from(1), Value::from(2)),
    ]);
    assert_eq!(
        code(room.set_metadata(ALICE, mixed)),
        ErrorCode::InvalidMessage
    );
    assert_eq!(room.users()[0].metadata, initial);
    assert_eq!(
        code(room.set_metadata(ClientId(99), map(&[]))),
        ErrorCode::NotAuthenticated
    );
}

#[test]
fn joiners_get_the_whole_list_and_the_others_only_what_changed() {
    let mut room = lobby(Limits::default());
    // Everyone joined since the last time: the whole list, to each.
    let first = room.presence();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].to, [ALICE, BOB, CAROL]);
    assert_eq!(first[0].channel, Channel::Commands);
    let ServerMessage::ClientsState { users } = decode(&first[0].wire) else {
        panic!("expected CLIENTS_STATE");
    };
    assert_eq!(users.len(), 3);
    // Nothing changed: nothing to say, however often asked.
    assert!(room.presence().is_empty());
    room.latencies_measured();
    assert!(room.presence().is_empty(), "no latency measured yet");
    // Bob's changed keys, Alice's new status, Carol's latency: only those.
    room.set_metadata(BOB, map(&[("frame", Value::from(5))]))
        .unwrap();
    room.set_metadata(BOB, map(&[("mode", Value::from("EDIT"))]))
        .unwrap();
    init(&mut room, ALICE);
    room.set_latency(CAROL, 12.5);
    room.latencies_measured();
    let changes = room.presence();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].to, [ALICE, BOB, CAROL]);
    let ServerMessage::Presence {
        left,
        joined,
        changed,
        latency,
    } = decode(&changes[0].wire)
    else {
        panic!("expected PRESENCE");
    };
    assert!(left.is_empty() && joined.is_empty());
    assert_eq!(
        changed,
        [
            UserChange {
                name: "alice".into(),
                status: Some(UserStatus::Uploading),
                metadata: None,
            },
            UserChange {
                name: "bob".into(),
                status: None,
                metadata: Some(map(&[
                    ("frame", Value::from(5)),
                    ("mode", Value::from("EDIT"))
                ])),
            },
        ]
    );
    assert_eq!(
        latency.into_iter().collect::<Vec<_>>(),
        [("carol".to_owned(), 12.5)]
    );
    // The same latency again is not news.
    room.latencies_measured();
    assert!(room.presence().is_empty());
    // A newcomer gets the whole list; the others its entry; a leaver's
    // name goes to those who stay.
    let dave = ClientId(40);
    room.join(dave, "dave", false, None).unwrap();
    room.leave(CAROL);
    let both = room.presence();
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(both[0].to, [dave]);
    assert!(
        matches!(decode(&both[0].wire), ServerMessage::ClientsState { users } if users.len() == 3)
    );
    assert_eq!(both[1].to, [ALICE, BOB]);
    let ServerMessage::Presence { left, joined, .. } = decode(&both[1].wire) else {
        panic!("expected PRESENCE");
    };
    assert_eq!(left, ["carol"]);
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].name, "dave");
}

#[test]
fn fetch_sends_the_datablock_with_the_request_id() {
    let mut room = active_room();
    room.update(
        ALICE,
        existing("cube"),
        true,
        None,
        patch(vec![set_op(&["n"], Value::from(8))]),
    )
    .unwrap();
    let fx = room.fetch(BOB, Some(77), "cube").unwrap();
    assert_eq!(fx.deliveries.len(), 1);
    let delivery = &fx.deliveries[0];
    assert_eq!(delivery.to, [BOB]);
    assert_eq!(delivery.channel, Channel::Subscriber);
    assert_eq!(
        decode(&delivery.wire),
        ServerMessage::Datablock {
            header: DatablockHeader {
                uuid: "cube".into(),
                type_id: "Object".into(),
                owner: "alice".into(),
                deps: vec![],
                revision: 2,
            },
            id: Some(77),
            chunk: ChunkFields::default(),
        }
    );
    let payload = delivery.wire.payload.as_ref().expect("inline data");
    assert_eq!(decode_data(payload), decode_data(&data(8)));
}

#[test]
fn fetch_of_an_unknown_uuid_is_refused() {
    let mut room = active_room();
    let err = room.fetch(BOB, Some(1), "ghost").unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownDatablock);
    assert!(err.message.contains("ghost"), "{}", err.message);
    assert_eq!(
        code(room.fetch(ClientId(99), None, "cube")),
        ErrorCode::NotAuthenticated
    );
}
