//! A whole session against the real server: hosting, joining, editing,
//! ownership, presence, kicks and timeouts.

mod common;

use common::*;
use replication_serve::client::{Client, ClientError, ClientOptions};
use replication_serve::protocol::patch::{Patch, PatchOp, PathStep};
use replication_serve::protocol::{
    AuthStatus, COMMON, ChunkFields, CommandRequest, ServerMessage, SessionState, UserStatus,
    codec::encode_value, encode,
};
use rmpv::Value;
use std::time::{Duration, Instant};

fn refused(result: Result<impl std::fmt::Debug, ClientError>, code: &str) -> String {
    match result {
        Err(ClientError::Refused { code: c, message }) if c == code => message,
        other => panic!("expected a {code} refusal, got {other:?}"),
    }
}

fn state_of(client: &mut Client) -> (SessionState, u64, u64) {
    match client.server_info(T).expect("server info") {
        ServerMessage::ServerInfo {
            state,
            users_online,
            datablocks,
            ..
        } => (state, users_online, datablocks),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn admin_hosts_and_uploads_the_first_scene() {
    let server = TestServer::start();
    let mut host = admin(&server, "host");
    assert_eq!(state_of(&mut host), (SessionState::Waiting, 1, 0));
    let blocks = [
        block("cube", "Object", object("Cube", [0.0, 0.0, 0.0])),
        block("mesh", "Mesh", Value::Binary(vec![7; 3000])),
    ];
    assert_eq!(host.upload(&blocks, T).unwrap(), 2);
    assert_eq!(state_of(&mut host), (SessionState::Active, 1, 2));
}

#[test]
fn an_empty_scene_is_a_valid_start() {
    let (server, mut host) = hosted(&[]);
    assert_eq!(state_of(&mut host), (SessionState::Active, 1, 0));
    let (_bob, blocks) = joined(&server, "bob");
    assert!(blocks.is_empty());
}

#[test]
fn only_one_admin_uploads_and_only_admins_may() {
    let server = TestServer::start();
    let (mut bob, status) = user(&server, "bob");
    assert_eq!(status, AuthStatus::Lobby);
    let msg = refused(bob.upload(&[], T), "NotAdmin");
    assert!(msg.contains("admin"), "{msg}");

    let mut host = admin(&server, "host");
    let mut other = admin(&server, "other");
    // host starts an upload by hand and does not finish it yet.
    host.send_raw(
        replication_serve::protocol::Channel::Commands,
        &[&encode(&CommandRequest::ServerSnapshot {
            id: Some(99),
            step: replication_serve::protocol::UploadStep::Init,
            uuid: None,
            type_id: None,
            owner: None,
            deps: None,
            chunk: ChunkFields::default(),
        })],
    )
    .unwrap();
    wait(&mut host, "INIT accepted", |e| {
        matches!(
            e.message,
            ServerMessage::ServerSnapshot { id: Some(99), .. }
        )
    });
    let msg = refused(other.upload(&[], T), "UploadInProgress");
    assert!(
        msg.contains("host"),
        "the refusal names the uploader: {msg}"
    );
    assert_eq!(state_of(&mut other).0, SessionState::SrvSync);
}

#[test]
fn lobby_users_receive_the_scene_when_the_upload_completes() {
    let server = TestServer::start();
    let (mut early, status) = user(&server, "early");
    assert_eq!(status, AuthStatus::Lobby);
    early.subscribe(None).unwrap();
    let mut host = admin(&server, "host");
    host.upload(
        &[block("cube", "Object", object("Cube", [1.0, 0.0, 0.0]))],
        T,
    )
    .unwrap();
    let ev = wait(
        &mut early,
        "the snapshot's datablock",
        |e| matches!(&e.message, ServerMessage::Datablock { header, .. } if header.uuid == "cube"),
    );
    assert_eq!(
        value(ev.payload.as_ref().unwrap()),
        object("Cube", [1.0, 0.0, 0.0])
    );
}

#[test]
fn joiners_download_dependencies_first_with_progress() {
    let mut scene = vec![
        block("object", "Object", object("Suzanne", [0.0; 3])),
        block("mesh", "Mesh", Value::Binary(vec![1; 100])),
        block("material", "Material", Value::from("red")),
    ];
    scene[0].deps = vec!["mesh".into(), "material".into()];
    scene[1].deps = vec!["material".into()];
    let (server, _host) = hosted(&scene);
    let (mut bob, _) = user(&server, "bob");
    let mut progress = Vec::new();
    let blocks = bob
        .download(T, |done, total| progress.push((done, total)))
        .unwrap();
    let order: Vec<&str> = blocks.iter().map(|b| b.header.uuid.as_str()).collect();
    assert_eq!(order, ["material", "mesh", "object"]);
    assert_eq!(progress, [(1, 3), (2, 3), (3, 3)]);
    assert_eq!(blocks[2].header.deps, ["mesh", "material"]);
    assert_eq!(blocks[2].header.revision, 1);
}

#[test]
fn large_payloads_travel_in_chunks_both_ways() {
    let server = TestServer::start_with(|c| {
        c.limits.chunk_bytes = 4096;
        c.limits.max_header_bytes = 4096;
    });
    let big = Value::Binary((0..50_000u32).map(|i| (i % 251) as u8).collect());
    let mut host = admin(&server, "host");
    host.upload(&[block("image", "Image", big.clone())], T)
        .unwrap();
    let (mut bob, blocks) = joined(&server, "bob");
    assert_eq!(value(&blocks[0].data), big);
    let bigger = Value::Binary(vec![9; 70_000]);
    host.update(&block("image", "Image", bigger.clone()))
        .unwrap();
    let ev = wait_update(&mut bob, "image");
    assert_eq!(value(ev.payload.as_ref().unwrap()), bigger);
    assert_eq!(value(&bob.fetch("image", T).unwrap().data), bigger);
}

#[test]
fn updates_during_a_download_arrive_after_it_in_order_exactly_once() {
    let server = TestServer::start_with(|c| c.limits.snapshot_window_messages = 4);
    let mut host = admin(&server, "host");
    let scene: Vec<_> = (0..300)
        .map(|i| block(&format!("b{i}"), "Object", Value::from(i)))
        .collect();
    host.upload(&scene, T).unwrap();
    let (mut bob, _) = user(&server, "bob");
    bob.subscribe(Some(4)).unwrap();
    // Nothing orders the host's channel after bob's: wait until the
    // download has begun. It cannot finish before bob reads on (window of
    // 4), so these updates happen during it.
    loop {
        let ev = bob.next_event(T).unwrap().expect("the download begins");
        if let ServerMessage::Snapshot { step, .. } = ev.message {
            assert_eq!(step, replication_serve::protocol::SnapshotStep::Begin);
            break;
        }
    }
    for round in 1..=5 {
        host.update(&block("b7", "Object", Value::from(1000 + round)))
            .unwrap();
    }
    let mut snapshot = Vec::new();
    let mut updates = Vec::new();
    let mut ended = false;
    while updates.len() < 5 {
        let ev = bob.next_event(T).unwrap().expect("events keep coming");
        match ev.message {
            ServerMessage::Datablock { header, .. } => {
                assert!(!ended, "no datablock after END");
                snapshot.push(header.uuid);
            }
            ServerMessage::Snapshot { step, .. } => {
                ended |= step == replication_serve::protocol::SnapshotStep::End;
            }
            ServerMessage::Update { header, .. } => {
                assert!(ended, "live updates come after the snapshot");
                updates.push((header.revision, value(ev.payload.as_ref().unwrap())));
            }
            _ => {}
        }
    }
    assert_eq!(snapshot.len(), 300);
    let revisions: Vec<u64> = updates.iter().map(|(r, _)| *r).collect();
    assert_eq!(revisions, [2, 3, 4, 5, 6], "each update once, in order");
    assert_eq!(updates[4].1, Value::from(1005));
}

#[test]
fn edits_reach_every_other_client_but_not_the_sender() {
    let (server, mut host) = hosted(&[block("cube", "Object", object("Cube", [0.0; 3]))]);
    let (mut bob, _) = joined(&server, "bob");
    let (mut carol, _) = joined(&server, "carol");
    bob.update(&block("cube", "Object", object("Cube", [4.0, 5.0, 6.0])))
        .unwrap();
    for client in [&mut host, &mut carol] {
        let ev = wait_update(client, "cube");
        let ServerMessage::Update { sender, header, .. } = &ev.message else {
            unreachable!()
        };
        assert_eq!(sender, "bob");
        assert_eq!(header.revision, 2);
        assert_eq!(
            value(ev.payload.as_ref().unwrap()),
            object("Cube", [4.0, 5.0, 6.0])
        );
    }
    // New datablocks belong to their creator unless they say COMMON.
    let mut lamp = block("lamp", "Light", Value::from("sun"));
    lamp.owner = None;
    carol.update(&lamp).unwrap();
    let ev = wait_update(&mut bob, "lamp");
    let ServerMessage::Update { header, .. } = ev.message else {
        unreachable!()
    };
    assert_eq!(header.owner, "carol");
    // bob saw carol's update, so he never got his own echoed: the next
    // message for him about cube would be someone else's.
    assert!(
        bob.wait_for(std::time::Duration::from_millis(300), |e| matches!(
            &e.message,
            ServerMessage::Update { header, .. } if header.uuid == "cube"
        ))
        .is_err()
    );
}

#[test]
fn patches_edit_the_server_state_and_reach_others() {
    let (server, mut host) = hosted(&[block("cube", "Object", object("Cube", [0.0; 3]))]);
    let (mut bob, _) = joined(&server, "bob");
    let patch = Patch {
        ops: vec![PatchOp::Set {
            path: vec![PathStep::Key("location".into()), PathStep::Index(1)],
            value: Value::from(9.5),
        }],
    };
    host.patch("cube", &patch, Some(1)).unwrap();
    let ev = wait_update(&mut bob, "cube");
    let ServerMessage::Update {
        patch: is_patch,
        header,
        ..
    } = &ev.message
    else {
        unreachable!()
    };
    assert!(is_patch);
    assert_eq!(header.revision, 2);
    let mut local = object("Cube", [0.0; 3]);
    Patch::from_value(value(ev.payload.as_ref().unwrap()))
        .unwrap()
        .apply(&mut local)
        .unwrap();
    assert_eq!(local, object("Cube", [0.0, 9.5, 0.0]));
    let fetched = bob.fetch("cube", T).unwrap();
    assert_eq!(value(&fetched.data), local);
    assert_eq!(fetched.header.revision, 2);
    // A patch against a stale revision is refused and changes nothing.
    host.patch("cube", &patch, Some(1)).unwrap();
    let err = wait(&mut host, "stale error", |e| {
        matches!(e.message, ServerMessage::Error { .. })
    });
    let ServerMessage::Error {
        code, refers_to, ..
    } = err.message
    else {
        unreachable!()
    };
    assert_eq!(code, replication_serve::protocol::ErrorCode::StaleRevision);
    assert_eq!(refers_to.uuid.as_deref(), Some("cube"));
    assert_eq!(bob.fetch("cube", T).unwrap().header.revision, 2);
}

#[test]
fn the_server_enforces_ownership() {
    let (server, mut host) = hosted(&[
        block("cube", "Object", object("Cube", [0.0; 3])),
        block("lamp", "Light", Value::from("sun")),
    ]);
    let (mut bob, _) = joined(&server, "bob");
    let (mut carol, _) = joined(&server, "carol");
    bob.lock(&["cube"], T).unwrap();
    let ev = wait(
        &mut carol,
        "bob's lock",
        |e| matches!(&e.message, ServerMessage::Right { owner, .. } if owner == "bob"),
    );
    assert!(matches!(ev.message, ServerMessage::Right { ref uuids, .. } if uuids == &["cube"]));

    // carol can neither lock, edit nor delete what bob owns.
    assert!(refused(carol.lock(&["cube"], T), "NotOwner").contains("bob"));
    refused(carol.delete("cube", false, T), "NotOwner");
    refused(
        carol.change_owner(&["cube", "lamp"], "carol", false, T),
        "NotOwner",
    );
    carol
        .update(&block("cube", "Object", object("Hacked", [9.0; 3])))
        .unwrap();
    wait(
        &mut carol,
        "refused update",
        |e| matches!(&e.message, ServerMessage::Error { refers_to, .. } if refers_to.uuid.as_deref() == Some("cube")),
    );
    let cube = carol.fetch("cube", T).unwrap();
    assert_eq!(value(&cube.data), object("Cube", [0.0; 3]));
    assert_eq!(cube.header.owner, "bob");
    // the all-or-nothing RIGHT left lamp COMMON.
    assert_eq!(carol.fetch("lamp", T).unwrap().header.owner, COMMON);
    // a non-admin cannot force; an admin can.
    refused(carol.change_owner(&["cube"], "carol", true, T), "NotOwner");
    host.change_owner(&["cube"], "host", true, T).unwrap();
    let ev = wait(
        &mut bob,
        "forced RIGHT",
        |e| matches!(&e.message, ServerMessage::Right { owner, .. } if owner == "host"),
    );
    assert!(matches!(ev.message, ServerMessage::Right { sender: Some(ref s), .. } if s == "host"));
    host.unlock(&["cube"], T).unwrap();
    assert_eq!(bob.fetch("cube", T).unwrap().header.owner, COMMON);
}

#[test]
fn deletes_reach_others_and_respect_owners() {
    let (server, mut host) = hosted(&[
        block("cube", "Object", object("Cube", [0.0; 3])),
        block("lamp", "Light", Value::from("sun")),
    ]);
    let (mut bob, _) = joined(&server, "bob");
    host.lock(&["lamp"], T).unwrap();
    refused(bob.delete("lamp", false, T), "NotOwner");
    bob.delete("cube", false, T).unwrap();
    let ev = wait(&mut host, "DELETE", |e| {
        matches!(e.message, ServerMessage::Delete { .. })
    });
    assert!(
        matches!(ev.message, ServerMessage::Delete { ref uuid, sender: Some(ref s), .. } if uuid == "cube" && s == "bob")
    );
    refused(bob.fetch("cube", T), "UnknownDatablock");
    host.delete("lamp", false, T).unwrap();
    assert_eq!(state_of(&mut bob).2, 0);
}

#[test]
fn presence_is_broadcast_to_everyone() {
    let (server, mut host) = hosted(&[]);
    let (mut bob, _) = joined(&server, "bob");
    let presence = Value::Map(vec![
        (Value::from("frame"), Value::from(42)),
        (Value::from("mode"), Value::from("EDIT_MESH")),
        (
            Value::from("color"),
            Value::Array(vec![Value::from(1.0), Value::from(0.5), Value::from(0.0)]),
        ),
    ]);
    bob.set_metadata(presence.clone()).unwrap();
    let ev = wait(&mut host, "bob's presence", |e| match &e.message {
        ServerMessage::ClientsState { users } => users
            .iter()
            .any(|u| u.name == "bob" && u.metadata == presence),
        _ => false,
    });
    let ServerMessage::ClientsState { users } = ev.message else {
        unreachable!()
    };
    let host_state = users.iter().find(|u| u.name == "host").unwrap();
    assert!(host_state.admin);
    assert_eq!(host_state.status, UserStatus::Active);
    // latency appears once pings have been answered
    wait(&mut host, "latency", |e| match &e.message {
        ServerMessage::ClientsState { users } => users.iter().all(|u| u.latency_ms.is_some()),
        _ => false,
    });
}

#[test]
fn admins_kick_and_locks_are_released() {
    let (server, mut host) = hosted(&[block("cube", "Object", object("Cube", [0.0; 3]))]);
    let (mut bob, _) = joined(&server, "bob");
    let (mut carol, _) = joined(&server, "carol");
    bob.lock(&["cube"], T).unwrap();
    // a non-admin's KICK is refused and nothing happens
    assert!(refused(carol.kick("bob", None, T), "NotAdmin").contains("admin"));
    assert_eq!(state_of(&mut carol).1, 3);
    host.kick("bob", Some("testing"), T).unwrap();
    let ev = wait(&mut bob, "DISCONNECT", |e| {
        matches!(e.message, ServerMessage::Disconnect { .. })
    });
    let ServerMessage::Disconnect { reason } = ev.message else {
        unreachable!()
    };
    assert!(
        reason.contains("kicked by host") && reason.contains("testing"),
        "{reason}"
    );
    let ev = wait(
        &mut carol,
        "released lock",
        |e| matches!(&e.message, ServerMessage::Right { owner, .. } if owner == COMMON),
    );
    assert!(matches!(ev.message, ServerMessage::Right { ref uuids, .. } if uuids == &["cube"]));
    assert_eq!(state_of(&mut carol).1, 2);
}

/// A server that drops clients silent for 1.5 s (pinging every 250 ms),
/// and its host, who uploaded a cube.
fn quick_timeout_session() -> (TestServer, Client) {
    let server = TestServer::start_with(|c| {
        c.timeout_ms = 1500;
        c.heartbeat_interval_ms = 250;
    });
    let mut host = admin(&server, "host");
    host.upload(&[block("cube", "Object", object("Cube", [0.0; 3]))], T)
        .unwrap();
    (server, host)
}

#[test]
fn silent_clients_time_out_and_their_locks_are_freed() {
    let (server, mut host) = quick_timeout_session();
    let (mut bob, _) = joined(&server, "bob");
    bob.lock(&["cube"], T).unwrap();
    bob.answer_pings = false;
    // bob stays silent from here on; host keeps polling (and answering pings).
    let ev = wait(
        &mut host,
        "bob's locks freed",
        |e| matches!(&e.message, ServerMessage::Right { owner, sender: Some(s), .. } if owner == COMMON && s == "bob"),
    );
    assert!(matches!(ev.message, ServerMessage::Right { ref uuids, .. } if uuids == &["cube"]));
    assert_eq!(state_of(&mut host).1, 1);
    let ev = wait(&mut bob, "DISCONNECT", |e| {
        matches!(e.message, ServerMessage::Disconnect { .. })
    });
    assert!(
        matches!(ev.message, ServerMessage::Disconnect { ref reason } if reason == "timed out")
    );
}

#[test]
fn a_client_reading_only_subscriber_messages_still_answers_pings() {
    let (server, host) = quick_timeout_session();
    let (bob, _) = joined(&server, "bob");
    // Both wait on their subscriber sockets alone, for twice the timeout.
    let mut watched = [host, bob];
    let until = Instant::now() + Duration::from_secs(3);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        Client::next_subscriber_frames_of(&mut watched, 0, left).unwrap();
    }
    let [mut host, mut bob] = watched;
    host.update(&block("cube", "Object", object("Cube", [1.0; 3])))
        .unwrap();
    let ev = wait(&mut bob, "the update, or a DISCONNECT", |e| {
        matches!(
            &e.message,
            ServerMessage::Disconnect { .. } | ServerMessage::Update { .. }
        )
    });
    assert!(
        matches!(ev.message, ServerMessage::Update { .. }),
        "bob was dropped: {:?}",
        ev.message
    );
}

#[test]
fn wrong_passwords_versions_and_names_are_refused() {
    let server = TestServer::start_with(|c| c.server_password = Some("letmein".into()));
    let mut wrong_admin = Client::connect(ClientOptions {
        server_password: Some("letmein".into()),
        ..ClientOptions::admin(server.port, "mallory", "guess")
    })
    .unwrap();
    refused(wrong_admin.authenticate(T), "WrongAdminPassword");
    let mut no_server_pw = Client::connect(ClientOptions::new(server.port, "eve")).unwrap();
    refused(no_server_pw.authenticate(T), "WrongServerPassword");
    let mut ok = Client::connect(ClientOptions {
        server_password: Some("letmein".into()),
        ..ClientOptions::new(server.port, "bob")
    })
    .unwrap();
    assert_eq!(ok.authenticate(T).unwrap(), AuthStatus::Lobby);
    let mut twin = Client::connect(ClientOptions {
        server_password: Some("letmein".into()),
        ..ClientOptions::new(server.port, "bob")
    })
    .unwrap();
    refused(twin.authenticate(T), "NameTaken");
    // a different protocol version is refused with both versions named
    let reason = refused_version(&server, 7, Some("letmein"));
    assert!(reason.contains('7') && reason.contains('2'), "{reason}");
}

/// The reason of the AUTH FAILED answering a login that claims
/// `protocol_version` (with the server password, when there is one).
fn refused_version(server: &TestServer, version: u64, server_password: Option<&str>) -> String {
    let mut old = Client::connect(ClientOptions::new(server.port, "old")).unwrap();
    let mut auth = vec![
        (Value::from("type"), Value::from("AUTH")),
        (Value::from("id"), Value::from(1)),
        (Value::from("user"), Value::from("old")),
        (Value::from("role"), Value::from("CLIENT")),
        (Value::from("protocol_version"), Value::from(version)),
    ];
    if let Some(password) = server_password {
        auth.push((Value::from("server_password"), Value::from(password)));
    }
    old.send_raw(
        replication_serve::protocol::Channel::Commands,
        &[&encode_value(&Value::Map(auth))],
    )
    .unwrap();
    let ev = wait(&mut old, "FAILED", |e| {
        matches!(e.message, ServerMessage::Auth { .. })
    });
    let ServerMessage::Auth { status, reason, .. } = ev.message else {
        unreachable!()
    };
    assert_eq!(status, AuthStatus::Failed);
    reason.unwrap()
}

/// Clients of version 1 (before RESUME and presence deltas) are refused
/// with a reason that says what to do.
#[test]
fn version_1_clients_are_told_to_update() {
    let server = TestServer::start();
    let reason = refused_version(&server, 1, None);
    assert!(reason.contains("update the client"), "{reason}");
}

#[test]
fn repeated_failed_logins_are_slowed_down() {
    let server = TestServer::start();
    let mut guesser =
        Client::connect(ClientOptions::admin(server.port, "mallory", "wrong")).unwrap();
    for _ in 0..3 {
        refused(guesser.authenticate(T), "WrongAdminPassword");
    }
    // Even the right password is not checked during the lockout.
    let mut right = Client::connect(ClientOptions::admin(server.port, "mallory", "admin")).unwrap();
    let msg = refused(right.authenticate(T), "TooManyAttempts");
    assert!(msg.contains("retry"), "{msg}");
}

#[test]
fn clients_leave_cleanly() {
    let (server, mut host) = hosted(&[block("cube", "Object", object("Cube", [0.0; 3]))]);
    let (mut bob, _) = joined(&server, "bob");
    bob.lock(&["cube"], T).unwrap();
    bob.leave().unwrap();
    wait(
        &mut host,
        "bob's locks freed",
        |e| matches!(&e.message, ServerMessage::Right { owner, .. } if owner == COMMON),
    );
    assert_eq!(state_of(&mut host).1, 1);
}

#[test]
fn acknowledged_updates_are_applied_before_what_follows() {
    let (server, _host) = hosted(&[block("cube", "Object", object("Cube", [0.0; 3]))]);
    let (mut bob, _) = joined(&server, "bob");
    let (mut carol, _) = joined(&server, "carol");
    bob.lock(&["cube"], T).unwrap();
    // Channels are not ordered with each other: waiting for the ACK makes
    // the update land before the unlock and the departure.
    let mut moved = block("cube", "Object", object("Cube", [7.0; 3]));
    moved.owner = None;
    let revision = bob.update_confirmed(&moved, T).unwrap();
    assert_eq!(revision, 2);
    bob.unlock(&["cube"], T).unwrap();
    bob.leave().unwrap();
    let ev = wait_update(&mut carol, "cube");
    assert_eq!(
        value(ev.payload.as_ref().unwrap()),
        object("Cube", [7.0; 3])
    );
    let fetched = carol.fetch("cube", T).unwrap();
    assert_eq!(
        (fetched.header.revision, fetched.header.owner.as_str()),
        (2, COMMON)
    );
    // A refused acknowledged update names its id.
    carol.lock(&["cube"], T).unwrap();
    let (mut dave, _) = joined(&server, "dave");
    let mut taken = block("cube", "Object", object("Dave", [1.0; 3]));
    taken.owner = None;
    let refused = dave.update_confirmed(&taken, T);
    assert!(
        matches!(refused, Err(ClientError::Refused { ref code, .. }) if code == "NotOwner"),
        "{refused:?}"
    );
}

#[test]
fn unfinished_transfers_are_bounded_server_wide() {
    let server = TestServer::start_with(|c| {
        c.limits.chunk_bytes = 4096;
        c.limits.max_header_bytes = 4096;
        c.limits.max_datablock_bytes = 100_000;
        c.limits.max_transfer_bytes_per_client = 100_000;
        c.limits.max_transfer_bytes_total = 150_000;
    });
    let mut host = admin(&server, "host");
    host.upload(&[], T).unwrap();
    let (mut bob, _) = joined(&server, "bob");
    let (mut carol, _) = joined(&server, "carol");
    // Announce a chunked UPDATE (with an id, to get an answer) and send no
    // chunk: its size stays reserved.
    let announce = |client: &mut Client, id: u64, size: u64| {
        let header = encode(&replication_serve::protocol::PublisherMessage::Update {
            id: Some(id),
            uuid: format!("big-{id}"),
            type_id: Some("Image".into()),
            owner: None,
            deps: None,
            patch: false,
            base_revision: None,
            chunk: ChunkFields {
                transfer: Some(id),
                chunks: Some(25),
                size: Some(size),
            },
        });
        let token = client.token().unwrap().to_vec();
        client
            .send_raw(
                replication_serve::protocol::Channel::Publisher,
                &[&token, &header],
            )
            .unwrap();
    };
    announce(&mut bob, 1, 90_000);
    // An acknowledged update on the same (ordered) channel shows that the
    // announcement was handled, and accepted: no ERROR came first.
    let mut tiny = block("tiny", "Empty", Value::Nil);
    tiny.owner = None;
    assert_eq!(bob.update_confirmed(&tiny, T).unwrap(), 1);
    announce(&mut carol, 2, 90_000);
    let ev = wait(&mut carol, "the refusal", |e| {
        matches!(e.message, ServerMessage::Error { .. })
    });
    let ServerMessage::Error {
        code,
        message,
        refers_to,
    } = ev.message
    else {
        unreachable!()
    };
    assert_eq!(
        code,
        replication_serve::protocol::ErrorCode::LimitExceeded,
        "{message}"
    );
    assert_eq!((refers_to.id, refers_to.transfer), (Some(2), Some(2)));
    // Within the budget, a smaller transfer is still accepted and completes.
    let mut small = block("small", "Image", Value::Binary(vec![3; 40_000]));
    small.owner = None;
    assert_eq!(carol.update_confirmed(&small, T).unwrap(), 1);
}
