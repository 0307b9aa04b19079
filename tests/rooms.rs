//! Rooms: independent sessions on one server. Isolation, listing, creation,
//! leaving and switching, keep-open and the last user leaving, limits, the
//! console's room commands, and rooms surviving a restart.

mod child;
mod common;
use child::*;
use common::*;

use std::time::{Duration, Instant};

use replication_serve::client::{Client, ClientError, ClientOptions, Event};
use replication_serve::config::Config;
use replication_serve::protocol::{AuthStatus, RoomInfo, ServerMessage};
use rmpv::Value;

fn connect(port: u16, user: &str, room: Option<&str>, admin: bool) -> Client {
    let mut options = if admin {
        ClientOptions::admin(port, user, "admin")
    } else {
        ClientOptions::new(port, user)
    };
    if let Some(room) = room {
        options = options.in_room(room);
    }
    Client::connect(options).expect("connect")
}

/// An admin who created `room` and uploaded `blocks` into it.
fn host_room(port: u16, room: &str, blocks: &[replication_serve::client::Block]) -> Client {
    let mut host = connect(port, &format!("host-{room}"), Some(room), true);
    assert_eq!(host.authenticate(T).expect("auth"), AuthStatus::Lobby);
    assert_eq!(host.room(), Some(room));
    host.upload(blocks, T).expect("upload");
    host
}

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn rooms(port: u16) -> Vec<RoomInfo> {
    let mut probe = connect(port, "probe", None, false);
    match probe.server_info(T).expect("server info") {
        ServerMessage::ServerInfo { rooms, .. } => rooms,
        other => panic!("{other:?}"),
    }
}

fn room_named(port: u16, name: &str) -> Option<RoomInfo> {
    rooms(port).into_iter().find(|r| r.name == name)
}

/// Every UPDATE this client receives within `wait`, by uuid.
fn updates_within(client: &mut Client, wait: Duration) -> Vec<String> {
    let until = Instant::now() + wait;
    let mut seen = Vec::new();
    while let Ok(Some(event)) = client.next_event(until.saturating_duration_since(Instant::now())) {
        if let ServerMessage::Update { header, .. } = event.message {
            seen.push(header.uuid);
        }
        if Instant::now() >= until {
            break;
        }
    }
    seen
}

fn uuids(blocks: &[replication_serve::client::Received]) -> Vec<String> {
    let mut out: Vec<String> = blocks.iter().map(|b| b.header.uuid.clone()).collect();
    out.sort();
    out
}

#[test]
fn two_rooms_edited_at_once_never_see_each_other() {
    let server = TestServer::start();
    let mut host_a = host_room(
        server.port,
        "a",
        &[block("a-cube", "Object", object("a", [0.0; 3]))],
    );
    let mut host_b = host_room(
        server.port,
        "b",
        &[block("b-cube", "Object", object("b", [0.0; 3]))],
    );

    // Same user name in both rooms: names are per room.
    let mut ann_a = connect(server.port, "ann", Some("a"), false);
    assert_eq!(ann_a.authenticate(T).expect("auth"), AuthStatus::Running);
    let got = ann_a.download(T, |_, _| {}).expect("download a");
    assert_eq!(uuids(&got), ["a-cube"]);
    let mut ann_b = connect(server.port, "ann", Some("b"), false);
    assert_eq!(ann_b.authenticate(T).expect("auth"), AuthStatus::Running);
    let got = ann_b.download(T, |_, _| {}).expect("download b");
    assert_eq!(uuids(&got), ["b-cube"]);

    // Both rooms edited at the same time.
    for i in 0..20 {
        let x = f64::from(i);
        host_a
            .update(&block("a-cube", "Object", object("a", [x, 0.0, 0.0])))
            .expect("update a");
        host_b
            .update(&block("b-cube", "Object", object("b", [x, 0.0, 0.0])))
            .expect("update b");
    }
    host_a
        .update_confirmed(&block("a-last", "Object", object("a", [1.0; 3])), T)
        .expect("a last");
    host_b
        .update_confirmed(&block("b-last", "Object", object("b", [1.0; 3])), T)
        .expect("b last");
    let seen_a = ann_a
        .wait_for(T, |e| matches!(&e.message, ServerMessage::Update { header, .. } if header.uuid == "a-last"))
        .map(|_| ());
    seen_a.expect("ann in a gets a's updates");
    ann_b
        .wait_for(T, |e| matches!(&e.message, ServerMessage::Update { header, .. } if header.uuid == "b-last"))
        .expect("ann in b gets b's updates");
    // Nothing of the other room arrived, before or after.
    let leftovers_a = updates_within(&mut ann_a, Duration::from_millis(300));
    let leftovers_b = updates_within(&mut ann_b, Duration::from_millis(300));
    assert!(
        leftovers_a.iter().all(|u| u.starts_with("a-")),
        "{leftovers_a:?}"
    );
    assert!(
        leftovers_b.iter().all(|u| u.starts_with("b-")),
        "{leftovers_b:?}"
    );

    // Presence lists only the room's own users.
    let presence = ann_a
        .wait_for(
            T,
            |e| matches!(&e.message, ServerMessage::ClientsState { users } if users.len() == 2),
        )
        .expect("presence in a");
    let ServerMessage::ClientsState { users } = presence.message else {
        unreachable!()
    };
    let mut names: Vec<String> = users.into_iter().map(|u| u.name).collect();
    names.sort();
    assert_eq!(names, ["ann", "host-a"]);

    // Ownership and kicks stay inside a room.
    host_a.lock(&["a-cube"], T).expect("lock in a");
    let (code, _) = refusal(host_a.kick("host-b", None, T));
    assert_eq!(code, "UnknownUser");
    let (code, _) = refusal(host_b.delete("a-cube", false, T));
    assert_eq!(code, "UnknownDatablock");
}

#[test]
fn server_info_lists_the_rooms() {
    let server = TestServer::start();
    let _host = host_room(
        server.port,
        "alpha",
        &[block("x", "Mesh", object("x", [0.0; 3]))],
    );
    let mut secret = connect(server.port, "s", Some("secret"), true);
    secret = {
        let mut options = ClientOptions::admin(server.port, "s", "admin").in_room("secret");
        options.room_password = Some("pw".into());
        drop(secret);
        Client::connect(options).expect("connect")
    };
    secret.authenticate(T).expect("create secret");
    let listed = rooms(server.port);
    let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["default", "alpha", "secret"], "default first");
    let alpha = &listed[1];
    assert_eq!(alpha.users_online, 1);
    assert_eq!(alpha.datablocks, 1);
    assert!(alpha.bytes > 0);
    assert_eq!(alpha.state.to_string(), "ACTIVE");
    assert!(!alpha.private);
    assert!(!alpha.keep_open);
    assert!(listed[2].private, "a room password makes it private");
    assert!(listed[0].keep_open, "the default room always stays");
    // A wrong room password is refused; the right one admits.
    let mut wrong = connect(server.port, "w", Some("secret"), false);
    let (code, _) = refusal(wrong.authenticate(T));
    assert_eq!(code, "WrongRoomPassword");
    let mut options = ClientOptions::new(server.port, "r").in_room("secret");
    options.room_password = Some("pw".into());
    let mut right = Client::connect(options).expect("connect");
    assert_eq!(right.authenticate(T).expect("auth"), AuthStatus::Lobby);
}

#[test]
fn only_admins_create_rooms_unless_rooms_are_open() {
    let server = TestServer::start();
    let mut user = connect(server.port, "u", Some("mine"), false);
    let (code, message) = refusal(user.authenticate(T));
    assert_eq!(code, "UnknownRoom");
    assert!(message.contains("only admins"), "{message}");
    assert!(room_named(server.port, "mine").is_none());

    let open = TestServer::start_with(|c: &mut Config| c.open_rooms = true);
    let mut creator = connect(open.port, "u", Some("mine"), false);
    assert_eq!(creator.authenticate(T).expect("auth"), AuthStatus::Lobby);
    // The creator is the room's admin: it uploads the scene.
    creator
        .upload(&[block("m", "Mesh", object("m", [0.0; 3]))], T)
        .expect("the creator uploads");
    let mut other = connect(open.port, "v", Some("mine"), false);
    assert_eq!(other.authenticate(T).expect("auth"), AuthStatus::Running);
    let (code, _) = refusal(other.set_keep_open(true, T));
    assert_eq!(code, "NotAdmin");
    creator.set_keep_open(true, T).expect("the creator may");
}

#[test]
fn leaving_and_switching_rooms() {
    let server = TestServer::start();
    let _a = host_room(
        server.port,
        "a",
        &[block("in-a", "Mesh", object("a", [0.0; 3]))],
    );
    let mut host_b = host_room(
        server.port,
        "b",
        &[block("in-b", "Mesh", object("b", [0.0; 3]))],
    );
    let mut traveller = connect(server.port, "t", Some("a"), false);
    traveller.authenticate(T).expect("auth");
    assert_eq!(
        uuids(&traveller.download(T, |_, _| {}).expect("a")),
        ["in-a"]
    );
    traveller.lock(&["in-a"], T).expect("lock");

    // A refused switch leaves the client where it was.
    let (code, _) = refusal(traveller.join_room("nowhere", None, T));
    assert_eq!(code, "UnknownRoom");
    assert_eq!(traveller.room(), Some("a"));
    let mine = replication_serve::client::Block {
        owner: Some("t".into()),
        ..block("in-a", "Mesh", object("a", [1.0; 3]))
    };
    traveller.update_confirmed(&mine, T).expect("still in a");

    let joined = traveller.join_room("b", None, T).expect("switch");
    assert_eq!(joined.room, "b");
    assert_eq!(joined.status, AuthStatus::Running);
    assert!(!joined.created && !joined.admin);
    assert_eq!(
        uuids(&traveller.download(T, |_, _| {}).expect("b")),
        ["in-b"]
    );
    // Its lock in a was released, and a's traffic no longer reaches it.
    let a_room = room_named(server.port, "a").expect("a");
    assert_eq!(a_room.users_online, 1);
    host_b
        .update_confirmed(&block("in-b", "Mesh", object("b", [2.0; 3])), T)
        .expect("b update");
    traveller
        .wait_for(
            T,
            |e| matches!(&e.message, ServerMessage::Update { header, .. } if header.uuid == "in-b"),
        )
        .expect("b's update reaches it");

    // Leaving: connected, in no room, room commands refused.
    traveller.leave_room(T).expect("leave");
    assert_eq!(traveller.room(), None);
    let (code, _) =
        refusal(traveller.update_confirmed(&block("in-b", "Mesh", object("b", [3.0; 3])), T));
    assert_eq!(code, "NotInRoom");
    assert!(matches!(
        traveller.server_info(T).expect("still served"),
        ServerMessage::ServerInfo { .. }
    ));
    assert_eq!(room_named(server.port, "b").expect("b").users_online, 1);
    // And back into a room.
    assert_eq!(
        traveller.join_room("a", None, T).expect("a again").status,
        AuthStatus::Running
    );
}

#[test]
fn the_last_user_leaving_closes_a_room_unless_it_is_kept() {
    let server = TestServer::start();
    // An ordinary room: closed when its last user leaves.
    let mut host = host_room(
        server.port,
        "short",
        &[block("s", "Mesh", object("s", [0.0; 3]))],
    );
    host.leave().expect("leave");
    wait_until(
        || room_named(server.port, "short").is_none(),
        "the room to close",
    );
    // Kept open: stays, with its scene.
    let mut keeper = host_room(
        server.port,
        "kept",
        &[block("k", "Mesh", object("k", [0.0; 3]))],
    );
    keeper.set_keep_open(true, T).expect("keep open");
    assert!(room_named(server.port, "kept").expect("kept").keep_open);
    keeper.leave().expect("leave");
    wait_until(
        || room_named(server.port, "kept").is_some_and(|r| r.users_online == 0),
        "the kept room to be empty",
    );
    let mut back = connect(server.port, "back", Some("kept"), false);
    assert_eq!(back.authenticate(T).expect("auth"), AuthStatus::Running);
    assert_eq!(
        uuids(&back.download(T, |_, _| {}).expect("download")),
        ["k"]
    );
    // The default room stays whatever happens.
    let mut lone = connect(server.port, "lone", None, false);
    assert_eq!(lone.authenticate(T).expect("auth"), AuthStatus::Lobby);
    lone.leave().expect("leave");
    assert!(room_named(server.port, "default").is_some());

    // With keep_rooms, every room stays.
    let keeping = TestServer::start_with(|c: &mut Config| c.keep_rooms = true);
    let mut host = host_room(keeping.port, "stays", &[]);
    host.leave().expect("leave");
    wait_until(
        || room_named(keeping.port, "stays").is_some_and(|r| r.users_online == 0),
        "the room to stay, empty",
    );
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + T;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn limits_per_room_and_per_server() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.limits.max_rooms = 2;
        c.limits.max_users_total = 3;
        c.limits.max_datablocks_total = 3;
        c.limits.max_room_bytes = c.limits.max_datablock_bytes;
        c.limits.max_bytes_total = c.limits.max_datablock_bytes * 2;
    });
    let mut host = host_room(
        server.port,
        "one",
        &[block("1", "Mesh", object("1", [0.0; 3]))],
    );
    // Rooms: the default one and "one" are the most.
    let mut extra = connect(server.port, "x", Some("two"), true);
    let (code, message) = refusal(extra.authenticate(T));
    assert_eq!(code, "LimitExceeded", "{message}");
    // Datablocks in all rooms.
    host.update_confirmed(&block("2", "Mesh", object("2", [0.0; 3])), T)
        .expect("second");
    host.update_confirmed(&block("3", "Mesh", object("3", [0.0; 3])), T)
        .expect("third");
    let (code, message) =
        refusal(host.update_confirmed(&block("4", "Mesh", object("4", [0.0; 3])), T));
    assert_eq!(code, "LimitExceeded", "{message}");
    assert!(message.contains("all rooms"), "{message}");
    // Users in all rooms: host, and two more.
    let mut u1 = connect(server.port, "u1", None, false);
    u1.authenticate(T).expect("u1");
    let mut u2 = connect(server.port, "u2", Some("one"), false);
    u2.authenticate(T).expect("u2");
    let mut u3 = connect(server.port, "u3", None, false);
    let (code, message) = refusal(u3.authenticate(T));
    assert_eq!(code, "LimitExceeded", "{message}");
    assert!(message.contains("server is full"), "{message}");

    // Bytes in one room.
    let small = TestServer::start_with(|c: &mut Config| {
        c.limits.max_datablock_bytes = 64 << 10;
        c.limits.max_room_bytes = 100 << 10;
    });
    let mut filler = host_room(small.port, "r", &[]);
    let big = Value::Binary(vec![1; 60 << 10]);
    filler
        .update_confirmed(&block("big-1", "Image", big.clone()), T)
        .expect("60 KiB fits");
    let (code, message) = refusal(filler.update_confirmed(&block("big-2", "Image", big), T));
    assert_eq!(code, "LimitExceeded", "{message}");
    assert!(message.contains("room"), "{message}");
}

// ---------------------------------------------------------------------------
// The real binary: console room commands, and rooms across a restart
// ---------------------------------------------------------------------------

/// Sends a console line; returns the stdout lines it printed, once one of
/// them matches `last`.
fn console(server: &mut Server, line: &str, last: impl Fn(&str) -> bool) -> Vec<String> {
    let from = server.stdout.len();
    server.console(line);
    let at = server.stdout.expect_from(from, line, last);
    server.stdout.snapshot()[from..=at].to_vec()
}

fn is_disconnect(event: &Event) -> bool {
    matches!(event.message, ServerMessage::Disconnect { .. })
}

#[test]
fn console_room_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_listening(true, |port| {
        server_on(dir.path(), port, &["--autosave", "0"])
    });
    let _a = host_room(
        server.port,
        "a",
        &[block("a1", "Mesh", object("a", [0.0; 3]))],
    );
    let _b = host_room(server.port, "b", &[]);
    let mut bob_a = connect(server.port, "bob", Some("a"), false);
    bob_a.authenticate(T).expect("auth");
    let mut bob_b = connect(server.port, "bob", Some("b"), false);
    bob_b.authenticate(T).expect("auth");

    let lines = console(&mut server, "rooms", |l| l.starts_with("b "));
    let a_line = lines
        .iter()
        .find(|l| l.starts_with("a "))
        .expect("a listed");
    assert!(
        a_line.contains(" 2 ") && a_line.contains("ACTIVE"),
        "{a_line}"
    );

    let lines = console(&mut server, "users b", |l| l.contains("bob"));
    assert!(lines.iter().all(|l| !l.starts_with("a ")), "{lines:?}");

    let lines = console(&mut server, "status a", |l| l.starts_with("up "));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("room a: state ACTIVE, 1 datablocks")),
        "{lines:?}"
    );

    // Two bobs: the room must be named.
    let lines = console(&mut server, "kick bob", |l| l.starts_with("cannot kick"));
    assert!(
        lines.last().is_some_and(|l| l.contains("say which")),
        "{lines:?}"
    );
    console(&mut server, "kick bob a too noisy", |l| {
        l == "kicked bob from room a"
    });
    let event = bob_a.wait_for(T, is_disconnect).expect("bob in a is told");
    assert!(
        matches!(&event.message, ServerMessage::Disconnect { reason } if reason.contains("too noisy")),
        "{event:?}"
    );

    // close: its users are disconnected with the reason, the room is gone.
    console(&mut server, "close b  end of the day", |l| {
        l.starts_with("closed room b")
    });
    let event = bob_b.wait_for(T, is_disconnect).expect("bob in b is told");
    assert!(
        matches!(&event.message, ServerMessage::Disconnect { reason } if reason.contains("room b closed") && reason.contains("end of the day")),
        "{event:?}"
    );
    assert!(room_named(server.port, "b").is_none());
    let lines = console(&mut server, "close default", |l| {
        l.starts_with("cannot close")
    });
    assert!(
        lines.last().is_some_and(|l| l.contains("default room")),
        "{lines:?}"
    );
}

#[test]
fn recorded_rooms_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_listening(false, |port| {
        server_on(dir.path(), port, &["--autosave", "0"])
    });
    // "kept": kept open and left empty; "busy": its host is still in it at
    // the restart; "gone": closed when its last user left.
    let mut kept = host_room(
        server.port,
        "kept",
        &[block("k", "Mesh", object("k", [0.0; 3]))],
    );
    kept.set_keep_open(true, T).expect("keep open");
    kept.update_confirmed(&block("k", "Mesh", object("k", [5.0; 3])), T)
        .expect("update");
    kept.leave().expect("leave");
    let _busy = host_room(
        server.port,
        "busy",
        &[block("b", "Mesh", object("b", [0.0; 3]))],
    );
    let mut gone = host_room(
        server.port,
        "gone",
        &[block("g", "Mesh", object("g", [0.0; 3]))],
    );
    gone.leave().expect("leave");
    wait_until(
        || room_named(server.port, "gone").is_none(),
        "gone to close",
    );
    let mut server = server;
    server.signal("KILL");
    let _ = server.wait_exit();
    drop(server);

    let server = start_listening(false, |port| {
        server_on(dir.path(), port, &["--autosave", "0"])
    });
    let listed = rooms(server.port);
    let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["default", "busy", "kept"]);
    assert!(listed[2].keep_open, "the setting came back");
    let mut viewer = connect(server.port, "viewer", Some("kept"), false);
    assert_eq!(viewer.authenticate(T).expect("auth"), AuthStatus::Running);
    let scene = viewer.download(T, |_, _| {}).expect("download");
    assert_eq!(scene.len(), 1);
    assert_eq!(scene[0].header.revision, 2);
    assert_eq!(value(&scene[0].data), object("k", [5.0; 3]));
    // The closed room's data is gone from the disk.
    let left: Vec<String> = std::fs::read_dir(dir.path().join("rooms"))
        .expect("rooms dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["busy", "kept"]);
}

#[test]
fn a_refused_switch_changes_nothing_and_leaves_no_room_behind() {
    let server = TestServer::start();
    let mut host = host_room(
        server.port,
        "home",
        &[block("h", "Mesh", object("h", [0.0; 3]))],
    );
    host.lock(&["h"], T).expect("lock");
    // Metadata over the limit in the new room: refused before leaving.
    let huge: Vec<(Value, Value)> = (0..300)
        .map(|i| (Value::from(format!("k{i}")), Value::from(i)))
        .collect();
    let request = replication_serve::protocol::CommandRequest::JoinRoom {
        id: Some(900),
        room: "elsewhere".into(),
        room_password: None,
        metadata: Some(Value::Map(huge)),
    };
    host.send_raw(
        replication_serve::protocol::Channel::Commands,
        &[&replication_serve::protocol::encode(&request)],
    )
    .expect("send");
    let error = host
        .wait_for(T, |e| matches!(&e.message, ServerMessage::Error { refers_to, .. } if refers_to.id == Some(900)))
        .expect("refused");
    assert!(
        matches!(&error.message, ServerMessage::Error { code, .. } if format!("{code:?}") == "LimitExceeded"),
        "{error:?}"
    );
    // Still in its room, still owning its datablock, and no empty room left.
    let home = room_named(server.port, "home").expect("home");
    assert_eq!(home.users_online, 1);
    assert!(room_named(server.port, "elsewhere").is_none());
    let mine = replication_serve::client::Block {
        owner: Some("host-home".into()),
        ..block("h", "Mesh", object("h", [1.0; 3]))
    };
    host.update_confirmed(&mine, T).expect("still the owner");
}

#[test]
fn room_passwords_are_throttled_when_switching_too() {
    let server = TestServer::start();
    let mut options = ClientOptions::admin(server.port, "owner", "admin").in_room("vault");
    options.room_password = Some("right".into());
    let mut owner = Client::connect(options).expect("connect");
    owner.authenticate(T).expect("create vault");
    let mut guesser = connect(server.port, "guesser", None, false);
    guesser.authenticate(T).expect("auth");
    for guess in ["a", "b", "c"] {
        let (code, _) = refusal(guesser.join_room("vault", Some(guess), T));
        assert_eq!(code, "WrongRoomPassword");
    }
    // The third failure locks the address out for 0.5 s: even the right
    // password is refused then (unless this machine stalled that long).
    let third = Instant::now();
    let result = guesser.join_room("vault", Some("right"), T);
    if third.elapsed() < Duration::from_millis(400) {
        assert_eq!(refusal(result).0, "TooManyAttempts");
        assert_eq!(guesser.room(), Some("default"));
    }
}

#[test]
fn a_switch_is_marked_on_the_subscriber_channel_and_old_updates_never_land() {
    let server = TestServer::start();
    let _a = host_room(
        server.port,
        "a",
        &[block("shared", "Mesh", object("a", [0.0; 3]))],
    );
    let mut host_b = host_room(
        server.port,
        "b",
        &[block("shared", "Mesh", object("b", [0.0; 3]))],
    );
    let mut mover = connect(server.port, "mover", Some("a"), false);
    mover.authenticate(T).expect("auth");
    mover.download(T, |_, _| {}).expect("download");
    let old_token = mover.token().expect("token").to_vec();
    let joined = mover.join_room("b", None, T).expect("switch");
    assert_eq!(joined.room, "b");
    assert_ne!(mover.token().expect("token"), old_token, "a new token");
    // The marker arrives on the subscriber channel, before the new room's
    // traffic.
    let marker = mover
        .wait_for(T, |e| {
            matches!(e.message, ServerMessage::Room { id: None, .. })
        })
        .expect("marker");
    assert_eq!(
        marker.channel,
        replication_serve::protocol::Channel::Subscriber
    );
    // An UPDATE sent with the old token (as if in flight at the switch) is
    // dropped, never applied to room b.
    let update = replication_serve::protocol::PublisherMessage::Update {
        id: Some(1),
        uuid: "shared".into(),
        type_id: None,
        owner: None,
        deps: None,
        patch: false,
        base_revision: None,
        chunk: Default::default(),
    };
    let data = replication_serve::protocol::codec::encode_value(&object("late", [9.0; 3]));
    mover
        .send_raw(
            replication_serve::protocol::Channel::Publisher,
            &[
                &old_token,
                &replication_serve::protocol::encode(&update),
                &data,
            ],
        )
        .expect("send");
    // A confirmed update with the new token goes through, after it.
    let revision = mover
        .update_confirmed(&block("other", "Mesh", object("m", [1.0; 3])), T)
        .expect("new token works");
    assert_eq!(revision, 1);
    let mut viewer = connect(server.port, "viewer", Some("b"), false);
    viewer.authenticate(T).expect("auth");
    let scene = viewer.download(T, |_, _| {}).expect("download");
    let shared = scene
        .iter()
        .find(|b| b.header.uuid == "shared")
        .expect("shared");
    assert_eq!(
        shared.header.revision, 1,
        "the stale update was not applied"
    );
    assert_eq!(value(&shared.data), object("b", [0.0; 3]));
    drop(host_b.leave());
}

#[test]
fn snapshot_acks_of_the_old_room_are_ignored_after_a_switch() {
    let server = TestServer::start();
    let _a = host_room(
        server.port,
        "a",
        &[block("a1", "Mesh", object("a", [0.0; 3]))],
    );
    let _b = host_room(
        server.port,
        "b",
        &[block("b1", "Mesh", object("b", [0.0; 3]))],
    );
    let mut mover = connect(server.port, "mover", Some("a"), false);
    mover.authenticate(T).expect("auth");
    mover.download(T, |_, _| {}).expect("download a");
    mover.join_room("b", None, T).expect("switch");
    // An acknowledgement of room a's snapshot, arriving late.
    let ack = replication_serve::protocol::SubscriberRequest::SnapshotAck { received: 40 };
    mover
        .send_raw(
            replication_serve::protocol::Channel::Subscriber,
            &[&replication_serve::protocol::encode(&ack)],
        )
        .expect("send");
    // The download of b works, and no ERROR came back for the stale ack.
    assert_eq!(
        uuids(&mover.download(T, |_, _| {}).expect("download b")),
        ["b1"]
    );
    let errors = updates_and_errors(&mut mover, Duration::from_millis(300));
    assert_eq!(errors, 0);
    // After SNAPSHOT in b, a bogus acknowledgement is an error again.
    let bogus = replication_serve::protocol::SubscriberRequest::SnapshotAck { received: 10_000 };
    mover
        .send_raw(
            replication_serve::protocol::Channel::Subscriber,
            &[&replication_serve::protocol::encode(&bogus)],
        )
        .expect("send");
    mover
        .wait_for(T, |e| matches!(e.message, ServerMessage::Error { .. }))
        .expect("refused");
}

fn updates_and_errors(client: &mut Client, wait: Duration) -> usize {
    let until = Instant::now() + wait;
    let mut errors = 0;
    while let Ok(Some(event)) = client.next_event(until.saturating_duration_since(Instant::now())) {
        if matches!(event.message, ServerMessage::Error { .. }) {
            errors += 1;
        }
        if Instant::now() >= until {
            break;
        }
    }
    errors
}

#[test]
fn a_closed_room_can_be_made_again_at_once_and_leftovers_of_closing_go_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_listening(false, |port| {
        server_on(dir.path(), port, &["--autosave", "0"])
    });
    // Large enough that its data is in files of their own, which the
    // closing removes while the new room of the same name records.
    let big = Value::Binary(vec![7; 3 << 20]);
    let mut first = host_room(server.port, "again", &[block("old", "Image", big.clone())]);
    first
        .update_raw(
            &block("old", "Image", Value::Nil),
            &replication_serve::protocol::codec::encode_value(&big),
        )
        .expect("a large update on its way");
    first.leave().expect("leave");
    wait_until(
        || room_named(server.port, "again").is_none(),
        "the room to close",
    );
    let mut second = connect(server.port, "host-again-2", Some("again"), true);
    assert_eq!(second.authenticate(T).expect("auth"), AuthStatus::Lobby);
    second
        .upload(&[block("new", "Image", big.clone())], T)
        .expect("upload into the new room");
    second
        .update_confirmed(&block("new", "Image", Value::Binary(vec![9; 2 << 20])), T)
        .expect("update");
    let mut server = server;
    server.signal("KILL");
    let _ = server.wait_exit();
    drop(server);

    // A closing cut short by a stop leaves a directory that is no room.
    std::fs::create_dir_all(dir.path().join("rooms/.closing-1-0/blobs")).expect("leftover");
    let server = start_listening(false, |port| {
        server_on(dir.path(), port, &["--autosave", "0"])
    });
    let names: Vec<String> = rooms(server.port).into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["default", "again"]);
    let mut viewer = connect(server.port, "viewer", Some("again"), false);
    assert_eq!(viewer.authenticate(T).expect("auth"), AuthStatus::Running);
    let scene = viewer.download(T, |_, _| {}).expect("download");
    assert_eq!(uuids(&scene), ["new"], "the new room's record, whole");
    assert_eq!(value(&scene[0].data), Value::Binary(vec![9; 2 << 20]));
    let left: Vec<String> = std::fs::read_dir(dir.path().join("rooms"))
        .expect("rooms dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["again"], "no closing left behind");
}
