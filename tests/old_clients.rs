//! Old Multi-User clients (the add-on with its own `replication` library,
//! which speaks pickled frames) against the real binary: their login is
//! refused and their server-info request answered in frames they can read,
//! byte for byte; nothing changes on the server; the rest of what they send
//! is dropped with one log line at most.

mod child;
mod common;
use child::*;
use common::*;

use std::time::Instant;

use replication_serve::client::ClientOptions;
use replication_serve::protocol::codec::encode_value;
use replication_serve::protocol::{AuthStatus, ErrorCode, ServerMessage, decode_header};
use rmpv::Value;

/// An old client's login, exactly as the add-on sends it: the pickled type
/// (9, "Auth"), the user name, and its pickled request.
const OLD_LOGIN: [&[u8]; 3] = [
    b"\x80\x04K\t.",
    b"alice",
    b"\x80\x04\x95Q\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\tAUTH_TYPE\x94\x8c\x06CLIENT\x94\
      \x8c\x07AUTH_ID\x94\x8c\x05alice\x94\x8c\x05S_PWD\x94N\x8c\x05A_PWD\x94N\x8c\x07VERSION\
      \x94\x8c\x060.9.10\x94u.",
];

/// An old client's server-info request (type 14, "RequestServerInfo").
const OLD_SERVER_INFO: [&[u8]; 3] = [
    b"\x80\x04K\x0e.",
    b"guest",
    b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x07RQ_INFO\x94.",
];

/// Another of their messages (type 7, "Snapshot"), the kind they send on
/// the other channels.
const OLD_SNAPSHOT: [&[u8]; 3] = [
    b"\x80\x04K\x07.",
    b"alice",
    b"\x80\x04\x95\x1b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x05STATE\x94\x8c\x0c\
      REQUEST_INIT\x94s.",
];

const REFUSAL: &str = "FAILED: this server is replication-serve (protocol v2), which this \
                       Multi-User cannot talk to; install the Multi-User package for \
                       replication-serve (see docs/blender.md)";

/// Python's pickle of a str: PROTO 2, BINUNICODE (u32 length,
/// little-endian, then UTF-8), STOP.
fn pickled_str(text: &str) -> Vec<u8> {
    let mut out = vec![0x80, 0x02, b'X'];
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.push(b'.');
    out
}

/// `{"private": private, "version": version}`: PROTO 2, EMPTY_DICT, MARK,
/// key, value, key, value, SETITEMS, STOP.
fn pickled_info(private: bool) -> Vec<u8> {
    let version = format!(
        "{} (protocol v2; see docs/blender.md)",
        env!("CARGO_PKG_VERSION")
    );
    let mut out = vec![0x80, 0x02, b'}', b'(', b'X', 7, 0, 0, 0];
    out.extend_from_slice(b"private");
    out.push(if private { 0x88 } else { 0x89 });
    out.extend_from_slice(&[b'X', 7, 0, 0, 0]);
    out.extend_from_slice(b"version");
    out.push(b'X');
    out.extend_from_slice(&(version.len() as u32).to_le_bytes());
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"u.");
    out
}

/// The binary on free ports, with `args`.
fn start(args: &[&str]) -> Server {
    let data = fresh_data_home().join("data");
    start_listening(false, |port| server_on(&data, port, args))
}

/// An old client's DEALER on one channel (base + `offset`), with a 16-byte
/// identity as the add-on sets (a uuid).
fn old_socket(context: &zmq::Context, port: u16, offset: u16, identity: &[u8]) -> zmq::Socket {
    let socket = context.socket(zmq::DEALER).expect("socket");
    socket.set_identity(identity).expect("identity");
    socket.set_linger(0).expect("linger");
    socket
        .connect(&format!("tcp://127.0.0.1:{}", port + offset))
        .expect("connect");
    socket
}

fn identity(n: u8) -> Vec<u8> {
    let mut id = vec![0xa0 | n; 16];
    id[15] = n;
    id
}

/// The next message on `socket`, waiting at most `T`.
fn receive(socket: &zmq::Socket) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no answer within {T:?}");
        if socket
            .poll(zmq::POLLIN, left.as_millis() as i64)
            .expect("poll")
            > 0
        {
            return socket.recv_multipart(0).expect("receive");
        }
    }
}

/// Sends a request and returns the answer's frames.
fn ask(socket: &zmq::Socket, request: &[&[u8]]) -> Vec<Vec<u8>> {
    socket
        .send_multipart(request.iter().copied(), 0)
        .expect("send");
    receive(socket)
}

fn v1(entries: &[(&str, Value)]) -> Vec<u8> {
    let map = entries
        .iter()
        .map(|(k, v)| (Value::from(*k), v.clone()))
        .collect();
    encode_value(&Value::Map(map)).to_vec()
}

fn lines_with(server: &Server, needle: &str) -> Vec<String> {
    let lines = server.stderr.snapshot();
    lines.into_iter().filter(|l| l.contains(needle)).collect()
}

#[test]
fn an_old_login_is_refused_in_frames_it_can_read_and_changes_nothing() {
    let server = start(&[]);
    let context = zmq::Context::new();
    let old = old_socket(&context, server.port, 0, &identity(1));

    let answer = ask(&old, &OLD_LOGIN);
    assert_eq!(
        answer,
        vec![
            b"\x80\x02K\x09.".to_vec(),
            b"server".to_vec(),
            pickled_str(REFUSAL)
        ]
    );
    let told = server.stderr.expect_from(0, "the old client told", |l| {
        l.contains("INFO") && l.contains("old Multi-User client tried to log in")
    });
    let line = &server.stderr.snapshot()[told];
    assert!(line.contains("127.0.0.1"), "names the peer: {line}");
    assert!(
        !line.contains("alice") && !line.contains("CLIENT"),
        "{line}"
    );

    // Again and again from the same place: each is answered the same, and
    // none counts as a failed login (a few would lock the address out).
    for _ in 0..5 {
        assert_eq!(ask(&old, &OLD_LOGIN)[2], pickled_str(REFUSAL));
    }
    assert_eq!(
        lines_with(&server, "old Multi-User client").len(),
        1,
        "one line per old client"
    );

    // It got no session: a request that needs one is refused.
    let delete = v1(&[
        ("type", "DELETE".into()),
        ("id", 3.into()),
        ("uuid", "x".into()),
    ]);
    let refused = ask(&old, &[&delete]);
    match decode_header(&refused[0], usize::MAX).expect("an ERROR") {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::NotAuthenticated),
        other => panic!("expected not_authenticated, got {other:?}"),
    }

    // A client of this server logs in from the same address at once, and
    // is the only one online.
    let mut bob = server.client(|port| ClientOptions::new(port, "bob"));
    assert_eq!(bob.authenticate(T).expect("auth"), AuthStatus::Lobby);
    match bob.server_info(T).expect("server info") {
        ServerMessage::ServerInfo { users_online, .. } => assert_eq!(users_online, 1),
        other => panic!("{other:?}"),
    }
    assert!(
        lines_with(&server, "malformed").is_empty(),
        "{}",
        server.stderr.text()
    );
}

#[test]
fn an_old_server_info_request_is_answered_with_a_dict() {
    for (args, private) in [(&[][..], false), (&["-spwd", "secret"][..], true)] {
        let server = start(args);
        let context = zmq::Context::new();
        let old = old_socket(&context, server.port, 0, &identity(2));
        let answer = ask(&old, &OLD_SERVER_INFO);
        assert_eq!(
            answer,
            vec![
                b"\x80\x02K\x0e.".to_vec(),
                b"server".to_vec(),
                pickled_info(private)
            ],
            "private: {private}"
        );
    }
}

#[test]
fn old_messages_on_the_other_channels_are_dropped_with_one_line_at_most() {
    let server = start(&["-l", "DEBUG"]);
    let context = zmq::Context::new();
    let id = identity(3);
    let subscriber = old_socket(&context, server.port, 1, &id);
    let heartbeat = old_socket(&context, server.port, 3, &id);
    // After them on each channel, a v1 message the server drops with a
    // WARN line: once both lines are there, the old messages before them
    // have been handled.
    let fetch = v1(&[("type", "FETCH".into()), ("uuid", "x".into())]);
    let pong = v1(&[("type", "PONG".into()), ("seq", 1.into())]);
    for (socket, marker) in [(&subscriber, &fetch), (&heartbeat, &pong)] {
        for _ in 0..20 {
            socket
                .send_multipart(OLD_SNAPSHOT.iter().copied(), 0)
                .expect("send");
        }
        socket.send(&marker[..], 0).expect("send");
    }
    let dropped = |l: &str| l.contains("has not authenticated");
    let first = server.stderr.expect_from(0, "a marker dropped", dropped);
    server
        .stderr
        .expect_from(first + 1, "the other marker dropped", dropped);
    let noted = lines_with(&server, "old Multi-User client");
    assert_eq!(noted.len(), 1, "{}", server.stderr.text());
    assert!(noted[0].contains("DEBUG"), "{}", noted[0]);
    assert_eq!(
        lines_with(&server, "WARN").len(),
        2,
        "only the markers: {}",
        server.stderr.text()
    );
    for socket in [&subscriber, &heartbeat] {
        assert_eq!(socket.poll(zmq::POLLIN, 0).expect("poll"), 0, "no answer");
    }

    // A login from that client now is still answered, and logged.
    let commands = old_socket(&context, server.port, 0, &id);
    assert_eq!(ask(&commands, &OLD_LOGIN)[2], pickled_str(REFUSAL));
    server.stderr.expect_from(0, "the old client told", |l| {
        l.contains("INFO") && l.contains("old Multi-User client tried to log in")
    });
}
