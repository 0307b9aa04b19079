//! A routing identity is an address, not a credential: a new connection
//! that presents a client's identity cannot act as that client until it
//! proves the session with the token, while the client itself, whose
//! connection libzmq re-establishes after a drop, goes on.

mod child;
mod common;

use child::{server_on, start_listening};
use common::{T, TestServer, admin, block, object};
use replication_serve::client::{Client, ClientOptions};
use replication_serve::protocol::{
    AuthStatus, Channel, ServerMessage, SnapshotStep, SubscriberRequest, decode_header,
};

fn encode(value: &rmpv::Value) -> Vec<u8> {
    replication_serve::protocol::codec::encode_value(value).to_vec()
}

fn map(entries: &[(&str, rmpv::Value)]) -> Vec<u8> {
    encode(&rmpv::Value::Map(
        entries
            .iter()
            .map(|(k, v)| (rmpv::Value::from(*k), v.clone()))
            .collect(),
    ))
}

#[test]
fn a_stolen_identity_is_refused_and_logged() {
    let data = tempfile::tempdir().expect("data dir");
    let server = start_listening(false, |port| server_on(data.path(), port, &["-t", "1000"]));
    let mut host = server.client(|p| ClientOptions::admin(p, "host", "admin"));
    host.authenticate(T).expect("auth");
    host.upload(&[block("cube", "Object", object("cube", [0.0; 3]))], T)
        .expect("upload");
    // Someone who learnt the host's identity connects with it and asks to
    // delete the host's datablock, as an admin.
    let context = zmq::Context::new();
    let thief = context.socket(zmq::DEALER).expect("socket");
    thief.set_identity(host.identity()).expect("identity");
    thief.set_linger(0).expect("linger");
    thief
        .connect(&format!("tcp://127.0.0.1:{}", server.port))
        .expect("connect");
    let delete = map(&[
        ("type", "DELETE".into()),
        ("id", 1.into()),
        ("uuid", "cube".into()),
        ("force", true.into()),
    ]);
    thief.send(&delete[..], 0).expect("send");
    server.stderr.expect_from(0, "the refusal in the log", |l| {
        l.contains("refused the messages of a connection that presented this client's identity")
    });
    drop(thief);
    // Nothing was deleted.
    let mut reader = server.client(|p| ClientOptions::new(p, "reader"));
    assert_eq!(reader.authenticate(T).expect("auth"), AuthStatus::Running);
    let blocks = reader
        .download(T, |_, _| {})
        .unwrap_or_else(|e| panic!("{e}: {}", server.stderr.text()));
    assert_eq!(blocks.len(), 1, "the datablock is still there");
}

/// A frame over the socket maximum makes libzmq drop the sender's
/// connection; the client's socket reconnects by itself, and the session
/// goes on once the client has answered RESUME on the new connection.
#[test]
fn a_client_whose_connections_dropped_goes_on_after_resume() {
    let data = tempfile::tempdir().expect("data dir");
    let server = start_listening(false, |port| server_on(data.path(), port, &["-l", "DEBUG"]));
    let mut host = server.client(|p| ClientOptions::admin(p, "host", "admin"));
    host.authenticate(T).expect("auth");
    host.upload(&[block("cube", "Object", object("cube", [0.0; 3]))], T)
        .expect("upload");
    let mut reader = server.client(|p| ClientOptions::new(p, "reader"));
    reader.authenticate(T).expect("auth");
    reader.download(T, |_, _| {}).expect("download");
    let from = server.stderr.len();
    let before = reader.resumed();
    let oversized = vec![0u8; (2 << 20) + 4096];
    for channel in [Channel::Commands, Channel::Subscriber, Channel::Heartbeat] {
        reader
            .send_raw(channel, &[&oversized[..]])
            .expect("send oversized");
    }
    // Each new connection is held until the client proves it; messages
    // sent before the reconnection may be lost, so wait for all three.
    let deadline = std::time::Instant::now() + T;
    while reader.resumed() < before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the client answered {} RESUMEs: {}",
            reader.resumed() - before,
            server.stderr.text()
        );
        reader.poll_once(50).expect("poll");
        host.poll_once(0).expect("poll");
    }
    for channel in ["commands", "subscriber", "heartbeat"] {
        server.stderr.expect_from(from, "the proof", |l| {
            l.contains("reader") && l.contains("proved the session") && l.contains(channel)
        });
    }
    reader
        .lock(&["cube"], T)
        .unwrap_or_else(|e| panic!("lock after reconnecting: {e}: {}", server.stderr.text()));
    reader.unlock(&["cube"], T).expect("unlock");
    host.update(&block("cube", "Object", object("moved", [1.0; 3])))
        .expect("update");
    reader
        .wait_for(
            T,
            |e| matches!(&e.message, ServerMessage::Update { header, .. } if header.uuid == "cube"),
        )
        .unwrap_or_else(|e| panic!("{e}: {}", server.stderr.text()));
}

/// An empty message is how libzmq announces a new connection, so one a
/// client sends itself only makes its own connection prove the session
/// again, which the client does.
#[test]
fn an_empty_message_only_asks_its_sender_to_resume() {
    let data = tempfile::tempdir().expect("data dir");
    let server = start_listening(false, |port| server_on(data.path(), port, &[]));
    let mut host = server.client(|p| ClientOptions::admin(p, "host", "admin"));
    host.authenticate(T).expect("auth");
    host.upload(&[block("cube", "Object", object("cube", [0.0; 3]))], T)
        .expect("upload");
    let before = host.resumed();
    host.send_raw(Channel::Commands, &[b""]).expect("send");
    let deadline = std::time::Instant::now() + T;
    while host.resumed() == before {
        assert!(std::time::Instant::now() < deadline, "no RESUME asked");
        host.poll_once(50).expect("poll");
    }
    host.lock(&["cube"], T).expect("lock after resuming");
}

/// A client that reads its subscriber channel as raw frames still proves a
/// new connection there: the SNAPSHOT it sent on that connection before it
/// read the server's RESUME is answered, and RESUME is not handed out as a
/// stream message.
#[test]
fn a_raw_subscriber_reader_proves_a_new_connection() {
    let server = TestServer::start();
    let mut host = admin(&server, "host");
    host.upload(&[block("cube", "Object", object("cube", [0.0; 3]))], T)
        .expect("upload");
    let mut raw = Client::connect(ClientOptions::new(server.port, "raw")).expect("connect");
    raw.authenticate(T).expect("auth");
    let before = raw.resumed();
    // Whether the subscriber socket connected before or after AUTH was
    // answered is up to the machine; an empty message makes the server
    // take the connection for a new one either way, and hold what follows.
    raw.send_raw(Channel::Subscriber, &[b""]).expect("send");
    let snapshot = replication_serve::protocol::encode(&SubscriberRequest::Snapshot {
        window: None,
        batches: true,
    });
    raw.send_raw(Channel::Subscriber, &[&snapshot])
        .expect("send SNAPSHOT");
    let frames = raw
        .next_subscriber_frames(T)
        .expect("receive")
        .expect("the snapshot stream");
    let first: ServerMessage = decode_header(&frames[0], usize::MAX).expect("a header");
    assert!(
        matches!(
            first,
            ServerMessage::Snapshot {
                step: SnapshotStep::Begin,
                ..
            }
        ),
        "the stream starts with BEGIN, not {first:?}"
    );
    assert!(raw.resumed() > before, "the client proved the connection");
}
