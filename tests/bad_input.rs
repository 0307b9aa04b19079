//! Bad input of every kind, on every channel.
//!
//! The rule under test: bad input gets an ERROR on the command channel where
//! there is a reply path, a WARN log line, no state change, no panic, and the
//! other clients do not notice. Each test sends bad input, then checks
//! (a) the ERROR the sender got (or that nothing came back where there is no
//! reply path), (b) that the session is exactly as before (SERVER_INFO counts,
//! FETCH of the datablocks) and (c) that a well-behaved client still gets a
//! live update.
//!
//! Where the blocking client cannot express the bad input, [`Raw`] speaks to
//! the server with bare ZeroMQ sockets. WARN lines are captured by a global
//! tracing layer and attributed to one test's server by the thread that logs
//! them (see [`Logs`]).

mod common;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use common::*;
use replication_serve::client::{Client, ClientError, Event};
use replication_serve::protocol::codec::encode_value;
use replication_serve::protocol::{
    AuthStatus, Channel, DatablockHeader, ErrorCode, HeartbeatMessage, MAX_DEPS, RefersTo,
    ServerMessage, SessionState, UploadStatus, decode_header,
};
use rmpv::Value;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

// ---------------------------------------------------------------------------
// MessagePack helpers

fn s(text: &str) -> Value {
    Value::from(text)
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

fn enc(value: &Value) -> Vec<u8> {
    encode_value(value).to_vec()
}

/// An encoded map with string keys.
fn msg(entries: &[(&str, Value)]) -> Vec<u8> {
    enc(&map(entries))
}

/// `count` nested one-element arrays around nil: 0x91 0x91 ... 0xc0.
fn nested_arrays(count: usize) -> Vec<u8> {
    let mut out = vec![0x91u8; count];
    out.push(0xc0);
    out
}

/// `count` nested one-entry maps `{"a": {"a": ...}}` around nil.
fn nested_maps(count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 3 + 1);
    for _ in 0..count {
        out.extend_from_slice(&[0x81, 0xa1, b'a']);
    }
    out.push(0xc0);
    out
}

/// A map of `entries` plus a `"pad"` string, encoded to exactly `len` bytes
/// (unknown keys are ignored by the server, so only the size matters).
fn padded(entries: &[(&str, Value)], len: usize) -> Vec<u8> {
    let base = msg(entries).len();
    let guess = len.saturating_sub(base + 16);
    for pad in guess..guess + 32 {
        let mut all = entries.to_vec();
        all.push(("pad", Value::from("x".repeat(pad))));
        let bytes = msg(&all);
        if bytes.len() == len {
            return bytes;
        }
    }
    panic!("cannot pad a header to exactly {len} bytes");
}

/// The frames of one multipart message.
type Parts = Vec<Vec<u8>>;

fn frames(parts: &[Vec<u8>]) -> Vec<&[u8]> {
    parts.iter().map(Vec::as_slice).collect()
}

/// A unique suffix for identities and markers.
fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------------------
// Log capture

struct Line {
    thread: ThreadId,
    text: String,
}

static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

fn lines() -> MutexGuard<'static, Vec<Line>> {
    LINES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records every WARN and ERROR event with the thread that logged it.
struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut text = event.metadata().level().to_string();
        event.record(&mut Fields(&mut text));
        let thread = std::thread::current().id();
        lines().push(Line { thread, text });
    }
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

/// The WARN lines of one test's server: those logged by its core thread,
/// found by a marker the test makes it log.
struct Logs {
    thread: ThreadId,
}

impl Logs {
    /// Makes the server log a unique marker (an AUTH refused for its
    /// protocol version, which changes nothing) and remembers the thread
    /// that logged it.
    fn attach(port: u16) -> Self {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let _ = tracing_subscriber::registry().with(Capture).try_init();
        });
        // Terminated, so that no marker is a prefix of another
        // ("log-marker-…-1" of "log-marker-…-12").
        let marker = format!("log-marker-{}-end", unique());
        let mut raw = Raw::connect(port);
        raw.send(
            Channel::Commands,
            &[&msg(&[
                ("type", s("AUTH")),
                ("id", Value::from(1)),
                ("user", s(&marker)),
                ("role", s("CLIENT")),
                ("protocol_version", Value::from(999)),
            ])],
        );
        match raw.answer() {
            ServerMessage::Auth {
                status: AuthStatus::Failed,
                code: Some(ErrorCode::VersionMismatch),
                ..
            } => {}
            other => panic!("expected AUTH FAILED for the log marker, got {other:?}"),
        }
        // The refusal is logged before it is sent.
        let thread = lines()
            .iter()
            .find(|l| l.text.contains(&marker))
            .map(|l| l.thread)
            .expect("the server logged the marker");
        Self { thread }
    }

    /// Where the lines logged from now on start.
    fn mark(&self) -> usize {
        lines().len()
    }

    /// Waits (up to T) for a WARN line of this server, logged after `since`,
    /// that contains every one of `needles`.
    fn expect_warn(&self, since: usize, needles: &[&str]) {
        let deadline = Instant::now() + T;
        loop {
            let found = lines().iter().skip(since).any(|l| {
                l.thread == self.thread
                    && l.text.starts_with("WARN")
                    && needles.iter().all(|n| l.text.contains(n))
            });
            if found {
                return;
            }
            if Instant::now() >= deadline {
                let mine: Vec<String> = lines()
                    .iter()
                    .skip(since)
                    .filter(|l| l.thread == self.thread)
                    .map(|l| l.text.clone())
                    .collect();
                panic!("no WARN line with {needles:?}; the server logged {mine:#?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The number of WARN lines of this server since `since`.
    fn warnings_since(&self, since: usize) -> usize {
        lines()
            .iter()
            .skip(since)
            .filter(|l| l.thread == self.thread && l.text.starts_with("WARN"))
            .count()
    }
}

// ---------------------------------------------------------------------------
// A client made of bare sockets

/// Four bare sockets with one identity: for input the blocking client cannot
/// send (an identity that never authenticated, a forged or missing token,
/// frames of any shape).
struct Raw {
    commands: zmq::Socket,
    subscriber: zmq::Socket,
    publisher: zmq::Socket,
    heartbeat: zmq::Socket,
    token: Vec<u8>,
    /// Messages received and not yet consumed, with their channel.
    inbox: VecDeque<(Channel, ServerMessage)>,
    /// Every heartbeat message received (pings are answered).
    heartbeats: Vec<HeartbeatMessage>,
    /// Channels whose new connection the server asked to prove before the
    /// token was known.
    resume_due: Vec<Channel>,
}

impl Raw {
    fn connect(port: u16) -> Self {
        let context = zmq::Context::new();
        let identity = format!("raw-{}", unique());
        let socket = |kind: zmq::SocketType, offset: u16| {
            let s = context.socket(kind).expect("socket");
            if kind == zmq::DEALER {
                s.set_identity(identity.as_bytes()).expect("identity");
                s.set_rcvhwm(0).expect("rcvhwm");
            }
            s.set_linger(0).expect("linger");
            s.connect(&format!("tcp://127.0.0.1:{}", port + offset))
                .expect("connect");
            s
        };
        Self {
            commands: socket(zmq::DEALER, 0),
            subscriber: socket(zmq::DEALER, 1),
            publisher: socket(zmq::PUSH, 2),
            heartbeat: socket(zmq::DEALER, 3),
            token: Vec::new(),
            inbox: VecDeque::new(),
            heartbeats: Vec::new(),
            resume_due: Vec::new(),
        }
    }

    /// Answers the server's RESUME on `channel` with the token, now or once
    /// it is known.
    fn resume(&mut self, channel: Channel) {
        if self.token.is_empty() {
            self.resume_due.push(channel);
            return;
        }
        let token = String::from_utf8(self.token.clone()).expect("token");
        self.send(
            channel,
            &[&msg(&[("type", s("RESUME")), ("token", s(&token))])],
        );
    }

    fn socket(&self, channel: Channel) -> &zmq::Socket {
        match channel {
            Channel::Commands => &self.commands,
            Channel::Subscriber => &self.subscriber,
            Channel::Publisher => &self.publisher,
            Channel::Heartbeat => &self.heartbeat,
        }
    }

    /// Sends `parts` as one multipart message, exactly as given.
    fn send(&self, channel: Channel, parts: &[&[u8]]) {
        self.socket(channel)
            .send_multipart(parts.iter().copied(), 0)
            .expect("send");
    }

    /// Sends on the publisher channel behind this client's token.
    fn publish(&self, parts: &[&[u8]]) {
        let mut all: Vec<&[u8]> = vec![&self.token];
        all.extend_from_slice(parts);
        self.send(Channel::Publisher, &all);
    }

    /// Authenticates as a regular user; keeps the token.
    fn authenticate(&mut self, user: &str) -> AuthStatus {
        self.send(
            Channel::Commands,
            &[&msg(&[
                ("type", s("AUTH")),
                ("id", Value::from(1)),
                ("user", s(user)),
                ("role", s("CLIENT")),
                ("protocol_version", Value::from(2)),
            ])],
        );
        match self.answer() {
            ServerMessage::Auth {
                status,
                token: Some(token),
                ..
            } if status != AuthStatus::Failed => {
                self.token = token.into_bytes();
                for channel in std::mem::take(&mut self.resume_due) {
                    self.resume(channel);
                }
                status
            }
            other => panic!("{user} could not authenticate: {other:?}"),
        }
    }

    /// Reads whatever arrives within `timeout`, answering pings.
    fn pump(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut got = false;
            while let Ok(parts) = self.heartbeat.recv_multipart(zmq::DONTWAIT) {
                let hb: HeartbeatMessage = decode_header(&parts[0], usize::MAX).expect("heartbeat");
                match hb {
                    HeartbeatMessage::Ping { seq } => {
                        let pong = msg(&[("type", s("PONG")), ("seq", Value::from(seq))]);
                        self.send(Channel::Heartbeat, &[&pong]);
                    }
                    HeartbeatMessage::Resume { token: None } => self.resume(Channel::Heartbeat),
                    _ => {}
                }
                self.heartbeats.push(hb);
                got = true;
            }
            for channel in [Channel::Commands, Channel::Subscriber] {
                while let Ok(parts) = self.socket(channel).recv_multipart(zmq::DONTWAIT) {
                    let m: ServerMessage = decode_header(&parts[0], usize::MAX).expect("header");
                    if m == (ServerMessage::Resume {}) {
                        self.resume(channel);
                        continue;
                    }
                    self.inbox.push_back((channel, m));
                    got = true;
                }
            }
            let now = Instant::now();
            if got || now >= deadline {
                return;
            }
            let wait = i64::try_from((deadline - now).as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            let mut items = [
                self.commands.as_poll_item(zmq::POLLIN),
                self.subscriber.as_poll_item(zmq::POLLIN),
                self.heartbeat.as_poll_item(zmq::POLLIN),
            ];
            zmq::poll(&mut items, wait).expect("poll");
        }
    }

    /// The next message on the command channel other than presence;
    /// anything on the subscriber channel is a failure.
    fn answer(&mut self) -> ServerMessage {
        let deadline = Instant::now() + T;
        loop {
            while let Some((channel, m)) = self.inbox.pop_front() {
                assert_eq!(
                    channel,
                    Channel::Commands,
                    "unexpected subscriber message {m:?}"
                );
                if !is_presence(&m) {
                    return m;
                }
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no answer on the command channel within {T:?}"
            );
            self.pump(deadline - now);
        }
    }

    /// The next answer, which must be an ERROR with `code`.
    fn expect_error(&mut self, code: ErrorCode) -> (String, RefersTo) {
        match self.answer() {
            ServerMessage::Error {
                code: got,
                message,
                refers_to,
            } => {
                assert_eq!(got, code, "wrong ERROR code: {message}");
                (message, refers_to)
            }
            other => panic!("expected ERROR {code:?}, got {other:?}"),
        }
    }

    /// Reads until a message on `channel` satisfies `found`; returns what
    /// came before it (on any channel), presence left out.
    fn until(
        &mut self,
        channel: Channel,
        mut found: impl FnMut(&ServerMessage) -> bool,
    ) -> Vec<(Channel, ServerMessage)> {
        let deadline = Instant::now() + T;
        let mut before = Vec::new();
        loop {
            while let Some((got, m)) = self.inbox.pop_front() {
                if got == channel && found(&m) {
                    return before;
                }
                if !is_presence(&m) {
                    before.push((got, m));
                }
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "nothing awaited on the {} channel within {T:?}; got {before:?}",
                channel.name()
            );
            self.pump(deadline - now);
        }
    }

    /// Sends a PING with `seq` and waits for its PONG; returns every
    /// heartbeat message received before it.
    fn ping(&mut self, seq: u64) -> Vec<HeartbeatMessage> {
        let ping = msg(&[("type", s("PING")), ("seq", Value::from(seq))]);
        self.send(Channel::Heartbeat, &[&ping]);
        let deadline = Instant::now() + T;
        loop {
            let pong = HeartbeatMessage::Pong { seq };
            if let Some(at) = self.heartbeats.iter().position(|h| *h == pong) {
                return self.heartbeats[..at].to_vec();
            }
            let now = Instant::now();
            assert!(now < deadline, "no PONG {seq} within {T:?}");
            self.pump(deadline - now);
        }
    }
}

// ---------------------------------------------------------------------------
// Session helpers

/// A live session: `host` (admin) uploaded `cube`; `bob` and `carol` joined
/// and downloaded it. Bob misbehaves, carol watches, the host writes.
struct Session {
    server: TestServer,
    logs: Logs,
    host: Client,
    bob: Client,
    carol: Client,
}

fn session() -> Session {
    session_with(|_| {})
}

fn session_with(configure: impl Fn(&mut replication_serve::config::Config)) -> Session {
    let server = TestServer::start_with(configure);
    let logs = Logs::attach(server.port);
    let mut host = admin(&server, "host");
    host.upload(
        &[block("cube", "Object", object("Cube", [0.0, 0.0, 0.0]))],
        T,
    )
    .expect("upload");
    let (bob, _) = joined(&server, "bob");
    let (carol, _) = joined(&server, "carol");
    Session {
        server,
        logs,
        host,
        bob,
        carol,
    }
}

/// What the session looks like from outside: SERVER_INFO's counts and the
/// header and data of some datablocks.
#[derive(Debug, PartialEq)]
struct Observed {
    state: SessionState,
    users: u64,
    datablocks: u64,
    blocks: Vec<(DatablockHeader, Value)>,
}

fn observe(client: &mut Client, uuids: &[&str]) -> Observed {
    let (state, users, datablocks) = match client.server_info(T).expect("SERVER_INFO") {
        ServerMessage::ServerInfo {
            state,
            users_online,
            datablocks,
            ..
        } => (state, users_online, datablocks),
        other => panic!("expected SERVER_INFO, got {other:?}"),
    };
    let blocks = uuids
        .iter()
        .map(|uuid| {
            let got = client.fetch(uuid, T).expect("FETCH");
            (got.header, value(&got.data))
        })
        .collect();
    Observed {
        state,
        users,
        datablocks,
        blocks,
    }
}

/// Asserts that FETCH of `uuid` is refused: the datablock does not exist.
fn assert_absent(client: &mut Client, uuid: &str) {
    match client.fetch(uuid, T) {
        Err(ClientError::Refused { code, .. }) if code == "UnknownDatablock" => {}
        other => panic!("datablock {uuid} should not exist: {other:?}"),
    }
}

/// The writer updates `uuid`; the reader must receive exactly that data.
fn assert_live(writer: &mut Client, reader: &mut Client, uuid: &str, x: f64) {
    let data = object("Live", [x, x, x]);
    writer
        .update(&block(uuid, "Object", data.clone()))
        .expect("update");
    wait(reader, &format!("the live update of {uuid}"), |e| {
        matches!(&e.message, ServerMessage::Update { header, .. } if header.uuid == uuid)
            && e.payload.as_deref().map(value).as_ref() == Some(&data)
    });
}

/// True for CLIENTS_STATE and PRESENCE, which the server sends to everyone
/// at any time (a PRESENCE with the latencies after every heartbeat that
/// measured one), so they answer nothing.
fn is_presence(m: &ServerMessage) -> bool {
    matches!(
        m,
        ServerMessage::ClientsState { .. } | ServerMessage::Presence { .. }
    )
}

/// True for a message that answers something on the command channel.
fn is_answer(e: &Event) -> bool {
    e.channel == Channel::Commands && !matches!(e.message, ServerMessage::ClientsState { .. })
}

/// The next answer on `client`'s command channel.
fn answer(client: &mut Client) -> ServerMessage {
    wait(client, "an answer on the command channel", is_answer).message
}

/// The next answer on `client`'s command channel, which must be an ERROR
/// with `code`.
fn expect_error(client: &mut Client, code: ErrorCode) -> (String, RefersTo) {
    match answer(client) {
        ServerMessage::Error {
            code: got,
            message,
            refers_to,
        } => {
            assert_eq!(got, code, "wrong ERROR code: {message}");
            (message, refers_to)
        }
        other => panic!("expected ERROR {code:?}, got {other:?}"),
    }
}

fn refers(kind: &str, id: Option<u64>, uuid: Option<&str>) -> RefersTo {
    RefersTo {
        kind: Some(kind.to_owned()),
        id,
        uuid: uuid.map(str::to_owned),
        transfer: None,
    }
}

/// What an ERROR about a message of chunked transfer `transfer` refers to.
fn refers_transfer(kind: &str, id: Option<u64>, uuid: Option<&str>, transfer: u64) -> RefersTo {
    RefersTo {
        transfer: Some(transfer),
        ..refers(kind, id, uuid)
    }
}

/// What an ERROR about a CHUNK of transfer `transfer` refers to.
fn chunk_refers(transfer: u64) -> RefersTo {
    refers_transfer("CHUNK", None, None, transfer)
}

// ---------------------------------------------------------------------------
// Command channel

/// Headers that are not a valid command, with the code they must get.
fn bad_commands() -> Vec<(&'static str, Parts, ErrorCode)> {
    use ErrorCode::{InvalidMessage, Malformed};
    let info = msg(&[("type", s("SERVER_INFO")), ("id", Value::from(1))]);
    let mut trailing = info.clone();
    trailing.extend_from_slice(b"\x00garbage");
    let mut twice = info.clone();
    twice.extend_from_slice(&info);
    vec![
        (
            "bytes that are not MessagePack",
            vec![b"\xc1\xc1 not msgpack \xc1".to_vec()],
            Malformed,
        ),
        ("plain text", vec![b"hello, server".to_vec()], Malformed),
        (
            "a truncated map",
            vec![info[..info.len() - 3].to_vec()],
            Malformed,
        ),
        (
            "an array",
            vec![enc(&Value::Array(vec![Value::from(1), Value::from(2)]))],
            InvalidMessage,
        ),
        ("an integer", vec![enc(&Value::from(5))], InvalidMessage),
        ("nil", vec![enc(&Value::Nil)], InvalidMessage),
        ("a string", vec![enc(&s("SERVER_INFO"))], InvalidMessage),
        (
            "a map without \"type\"",
            vec![msg(&[("id", Value::from(1)), ("user", s("x"))])],
            InvalidMessage,
        ),
        (
            "a map with integer keys",
            vec![enc(&Value::Map(vec![(Value::from(1), s("SERVER_INFO"))]))],
            InvalidMessage,
        ),
        (
            "a non-string type",
            vec![msg(&[("type", Value::from(5))])],
            InvalidMessage,
        ),
        (
            "an unknown type",
            vec![msg(&[("type", s("FROBNICATE")), ("id", Value::from(3))])],
            InvalidMessage,
        ),
        (
            "a type in the wrong case",
            vec![msg(&[("type", s("server_info"))])],
            InvalidMessage,
        ),
        (
            "a server-only type",
            vec![msg(&[
                ("type", s("CLIENTS_STATE")),
                ("users", Value::Array(vec![])),
            ])],
            InvalidMessage,
        ),
        (
            "a publisher message on the command channel",
            vec![msg(&[("type", s("UPDATE")), ("uuid", s("cube"))])],
            InvalidMessage,
        ),
        (
            "AUTH with user=5",
            vec![msg(&[
                ("type", s("AUTH")),
                ("user", Value::from(5)),
                ("role", s("CLIENT")),
                ("protocol_version", Value::from(2)),
            ])],
            InvalidMessage,
        ),
        (
            "AUTH with an unknown role",
            vec![msg(&[
                ("type", s("AUTH")),
                ("user", s("eve")),
                ("role", s("ROOT")),
                ("protocol_version", Value::from(2)),
            ])],
            InvalidMessage,
        ),
        (
            "AUTH without protocol_version",
            vec![msg(&[
                ("type", s("AUTH")),
                ("user", s("eve")),
                ("role", s("CLIENT")),
            ])],
            InvalidMessage,
        ),
        (
            "RIGHT with a string for uuids",
            vec![msg(&[
                ("type", s("RIGHT")),
                ("uuids", s("cube")),
                ("owner", s("COMMON")),
            ])],
            InvalidMessage,
        ),
        (
            "DELETE with a negative id",
            vec![msg(&[
                ("type", s("DELETE")),
                ("id", Value::from(-1)),
                ("uuid", s("cube")),
            ])],
            InvalidMessage,
        ),
        (
            "DELETE with a float id",
            vec![msg(&[
                ("type", s("DELETE")),
                ("id", Value::from(1.0)),
                ("uuid", s("cube")),
            ])],
            InvalidMessage,
        ),
        (
            "DELETE with force=nil",
            vec![msg(&[
                ("type", s("DELETE")),
                ("uuid", s("cube")),
                ("force", Value::Nil),
            ])],
            InvalidMessage,
        ),
        (
            "RIGHT with force=1",
            vec![msg(&[
                ("type", s("RIGHT")),
                ("uuids", Value::Array(vec![s("cube")])),
                ("owner", s("COMMON")),
                ("force", Value::from(1)),
            ])],
            InvalidMessage,
        ),
        (
            "KICK without a user",
            vec![msg(&[("type", s("KICK")), ("id", Value::from(4))])],
            InvalidMessage,
        ),
        (
            "a repeated \"type\" key",
            vec![enc(&Value::Map(vec![
                (s("type"), s("SERVER_INFO")),
                (s("type"), s("KICK")),
                (s("user"), s("bob")),
            ]))],
            InvalidMessage,
        ),
        (
            "a repeated field",
            vec![enc(&Value::Map(vec![
                (s("type"), s("RIGHT")),
                (s("uuids"), Value::Array(vec![s("cube")])),
                (s("owner"), s("COMMON")),
                (s("owner"), s("bob")),
            ]))],
            InvalidMessage,
        ),
        (
            "three frames",
            vec![info.clone(), enc(&Value::Nil), enc(&Value::Nil)],
            Malformed,
        ),
        (
            "a hundred frames",
            std::iter::repeat_n(info.clone(), 100).collect(),
            Malformed,
        ),
        (
            "10,000 nested arrays",
            vec![nested_arrays(10_000)],
            Malformed,
        ),
        ("10,000 nested maps", vec![nested_maps(10_000)], Malformed),
        (
            "an array claiming 4 billion elements",
            vec![vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]],
            Malformed,
        ),
        (
            "a string claiming 4 GiB",
            vec![vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'x']],
            Malformed,
        ),
        (
            "the reserved byte 0xc1 as a value",
            vec![{
                let mut m = vec![0x81, 0xa4];
                m.extend_from_slice(b"type");
                m.push(0xc1);
                m
            }],
            Malformed,
        ),
        (
            "trailing garbage after a valid map",
            vec![trailing],
            Malformed,
        ),
        ("two maps in one frame", vec![twice], Malformed),
    ]
}

#[test]
fn command_garbage_from_a_member_gets_errors_and_changes_nothing() {
    let Session {
        server: _server,
        logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    for (what, parts, code) in bad_commands() {
        let since = logs.mark();
        bob.send_raw(Channel::Commands, &frames(&parts))
            .expect("send");
        let (message, refers_to) = expect_error(&mut bob, code);
        assert!(!message.is_empty(), "{what}: empty message");
        assert_eq!(refers_to, RefersTo::default(), "{what}: {message}");
        logs.expect_warn(since, &[&format!("code={code:?}")]);
    }
    assert_eq!(observe(&mut carol, &["cube"]), before);
    // The offender itself is still served.
    assert!(matches!(
        bob.server_info(T).expect("bob's SERVER_INFO"),
        ServerMessage::ServerInfo {
            users_online: 3,
            ..
        }
    ));
    assert_live(&mut host, &mut carol, "cube", 1.0);
    assert_live(&mut bob, &mut carol, "cube", 2.0);
}

#[test]
fn command_garbage_from_an_unknown_identity_gets_errors_and_changes_nothing() {
    let Session {
        server,
        logs,
        mut host,
        bob: _bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let mut eve = Raw::connect(server.port);
    for (what, parts, code) in bad_commands() {
        let since = logs.mark();
        eve.send(Channel::Commands, &frames(&parts));
        let (message, refers_to) = eve.expect_error(code);
        assert_eq!(refers_to, RefersTo::default(), "{what}: {message}");
        logs.expect_warn(since, &[&format!("code={code:?}")]);
    }
    assert_eq!(observe(&mut carol, &["cube"]), before);
    assert_live(&mut host, &mut carol, "cube", 1.0);
    // The identity is not poisoned: it can still authenticate properly.
    assert_eq!(eve.authenticate("eve"), AuthStatus::Running);
    assert!(matches!(
        carol.server_info(T).expect("SERVER_INFO"),
        ServerMessage::ServerInfo {
            users_online: 4,
            ..
        }
    ));
}

#[test]
fn commands_that_need_a_session_are_refused_to_an_unknown_identity() {
    let Session {
        server,
        logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let mut eve = Raw::connect(server.port);
    let data = enc(&object("Evil", [6.0, 6.0, 6.0]));
    let requests: Vec<(&str, RefersTo, Parts)> = vec![
        (
            "RIGHT",
            refers("RIGHT", Some(10), None),
            vec![msg(&[
                ("type", s("RIGHT")),
                ("id", Value::from(10)),
                ("uuids", Value::Array(vec![s("cube")])),
                ("owner", s("COMMON")),
                ("force", Value::from(true)),
            ])],
        ),
        (
            "DELETE",
            refers("DELETE", Some(11), Some("cube")),
            vec![msg(&[
                ("type", s("DELETE")),
                ("id", Value::from(11)),
                ("uuid", s("cube")),
                ("force", Value::from(true)),
            ])],
        ),
        (
            "KICK",
            refers("KICK", Some(12), None),
            vec![msg(&[
                ("type", s("KICK")),
                ("id", Value::from(12)),
                ("user", s("bob")),
            ])],
        ),
        (
            "SERVER_SNAPSHOT",
            refers("SERVER_SNAPSHOT", Some(13), None),
            vec![msg(&[
                ("type", s("SERVER_SNAPSHOT")),
                ("id", Value::from(13)),
                ("step", s("INIT")),
            ])],
        ),
        (
            "SERVER_SNAPSHOT",
            refers("SERVER_SNAPSHOT", Some(14), Some("evil")),
            vec![
                msg(&[
                    ("type", s("SERVER_SNAPSHOT")),
                    ("id", Value::from(14)),
                    ("step", s("SET")),
                    ("uuid", s("evil")),
                    ("type_id", s("Object")),
                ]),
                data.clone(),
            ],
        ),
        (
            "SERVER_SNAPSHOT",
            refers("SERVER_SNAPSHOT", Some(15), None),
            vec![msg(&[
                ("type", s("SERVER_SNAPSHOT")),
                ("id", Value::from(15)),
                ("step", s("END")),
            ])],
        ),
        (
            "UPDATE_USER_METADATA",
            refers("UPDATE_USER_METADATA", Some(16), None),
            vec![msg(&[
                ("type", s("UPDATE_USER_METADATA")),
                ("id", Value::from(16)),
                ("metadata", map(&[("color", s("red"))])),
            ])],
        ),
        (
            "CHUNK",
            chunk_refers(1),
            vec![
                msg(&[
                    ("type", s("CHUNK")),
                    ("transfer", Value::from(1)),
                    ("index", Value::from(0)),
                ]),
                data.clone(),
            ],
        ),
        (
            "DISCONNECT",
            refers("DISCONNECT", None, None),
            vec![msg(&[("type", s("DISCONNECT")), ("reason", s("bye"))])],
        ),
    ];
    for (kind, expected, parts) in requests {
        let since = logs.mark();
        eve.send(Channel::Commands, &frames(&parts));
        let (message, refers_to) = eve.expect_error(ErrorCode::NotAuthenticated);
        assert_eq!(refers_to, expected, "{kind}: {message}");
        logs.expect_warn(since, &["code=NotAuthenticated"]);
    }
    // SERVER_INFO needs no session and still works for the same identity.
    eve.send(
        Channel::Commands,
        &[&msg(&[("type", s("SERVER_INFO")), ("id", Value::from(17))])],
    );
    assert!(matches!(
        eve.answer(),
        ServerMessage::ServerInfo {
            id: Some(17),
            users_online: 3,
            ..
        }
    ));
    assert_eq!(observe(&mut carol, &["cube"]), before);
    assert_absent(&mut carol, "evil");
    // Bob was not kicked, and nobody's metadata changed.
    assert!(matches!(
        bob.server_info(T).expect("bob's SERVER_INFO"),
        ServerMessage::ServerInfo {
            users_online: 3,
            ..
        }
    ));
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

#[test]
fn refused_logins_create_no_session_and_do_not_lock_out() {
    let Session {
        server,
        logs,
        mut host,
        bob: _bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let mut eve = Raw::connect(server.port);
    let auth = |user: &str, extra: &[(&str, Value)]| {
        let mut entries = vec![
            ("type", s("AUTH")),
            ("id", Value::from(5)),
            ("user", s(user)),
            ("role", s("CLIENT")),
            ("protocol_version", Value::from(2)),
        ];
        entries.retain(|(k, _)| extra.iter().all(|(e, _)| e != k));
        entries.extend_from_slice(extra);
        msg(&entries)
    };
    let many_keys = Value::Map(
        (0..257)
            .map(|i| (Value::from(format!("k{i}")), Value::from(i)))
            .collect(),
    );
    let long_name = "n".repeat(129);
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        (
            "protocol version 1",
            auth("eve", &[("protocol_version", Value::from(1))]),
            ErrorCode::VersionMismatch,
        ),
        (
            "protocol version 3",
            auth("eve", &[("protocol_version", Value::from(3))]),
            ErrorCode::VersionMismatch,
        ),
        ("an empty name", auth("", &[]), ErrorCode::InvalidMessage),
        (
            "a 129-byte name",
            auth(&long_name, &[]),
            ErrorCode::InvalidMessage,
        ),
        (
            "a control character",
            auth("e\u{7}ve", &[]),
            ErrorCode::InvalidMessage,
        ),
        ("COMMON", auth("common", &[]), ErrorCode::InvalidMessage),
        ("a name in use", auth("bob", &[]), ErrorCode::NameTaken),
        (
            "metadata that is not a map",
            auth("eve", &[("metadata", Value::from(5))]),
            ErrorCode::InvalidMessage,
        ),
        (
            "metadata with integer keys",
            auth(
                "eve",
                &[("metadata", Value::Map(vec![(Value::from(1), s("x"))]))],
            ),
            ErrorCode::InvalidMessage,
        ),
        (
            "257 metadata keys",
            auth("eve", &[("metadata", many_keys)]),
            ErrorCode::LimitExceeded,
        ),
    ];
    for (what, request, code) in cases {
        let since = logs.mark();
        eve.send(Channel::Commands, &[&request]);
        match eve.answer() {
            ServerMessage::Auth {
                id: Some(5),
                status: AuthStatus::Failed,
                code: Some(got),
                token: None,
                ..
            } => assert_eq!(got, code, "{what}"),
            other => panic!("{what}: expected AUTH FAILED {code:?}, got {other:?}"),
        }
        logs.expect_warn(since, &["login refused"]);
    }
    assert_eq!(observe(&mut carol, &["cube"]), before);
    // None of these counts as a failed login: the identity (and its
    // address) can still log in.
    assert_eq!(eve.authenticate("eve"), AuthStatus::Running);
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

#[test]
fn refused_requests_from_a_member_change_nothing() {
    let Session {
        server: _server,
        logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let cases: Vec<(&str, Parts, ErrorCode, RefersTo)> = vec![
        (
            "RIGHT of a known and an unknown datablock (all or nothing)",
            vec![msg(&[
                ("type", s("RIGHT")),
                ("id", Value::from(20)),
                ("uuids", Value::Array(vec![s("cube"), s("ghost")])),
                ("owner", s("bob")),
            ])],
            ErrorCode::UnknownDatablock,
            refers("RIGHT", Some(20), None),
        ),
        (
            "RIGHT to a user who is not there",
            vec![msg(&[
                ("type", s("RIGHT")),
                ("id", Value::from(21)),
                ("uuids", Value::Array(vec![s("cube")])),
                ("owner", s("nobody")),
            ])],
            ErrorCode::UnknownUser,
            refers("RIGHT", Some(21), None),
        ),
        (
            "RIGHT of nothing",
            vec![msg(&[
                ("type", s("RIGHT")),
                ("id", Value::from(22)),
                ("uuids", Value::Array(vec![])),
                ("owner", s("bob")),
            ])],
            ErrorCode::InvalidMessage,
            refers("RIGHT", Some(22), None),
        ),
        (
            "DELETE of an unknown datablock",
            vec![msg(&[
                ("type", s("DELETE")),
                ("id", Value::from(23)),
                ("uuid", s("ghost")),
            ])],
            ErrorCode::UnknownDatablock,
            refers("DELETE", Some(23), Some("ghost")),
        ),
        (
            "KICK by a non-admin",
            vec![msg(&[
                ("type", s("KICK")),
                ("id", Value::from(24)),
                ("user", s("carol")),
            ])],
            ErrorCode::NotAdmin,
            refers("KICK", Some(24), None),
        ),
        (
            "metadata that is not a map",
            vec![msg(&[
                ("type", s("UPDATE_USER_METADATA")),
                ("id", Value::from(25)),
                ("metadata", Value::from(5)),
            ])],
            ErrorCode::InvalidMessage,
            refers("UPDATE_USER_METADATA", Some(25), None),
        ),
        (
            "metadata with integer keys",
            vec![msg(&[
                ("type", s("UPDATE_USER_METADATA")),
                ("id", Value::from(26)),
                ("metadata", Value::Map(vec![(Value::from(1), s("x"))])),
            ])],
            ErrorCode::InvalidMessage,
            refers("UPDATE_USER_METADATA", Some(26), None),
        ),
        (
            "a CHUNK without a data frame",
            vec![msg(&[
                ("type", s("CHUNK")),
                ("transfer", Value::from(77)),
                ("index", Value::from(0)),
            ])],
            ErrorCode::InvalidMessage,
            chunk_refers(77),
        ),
        (
            "a CHUNK for a transfer that was never announced",
            vec![
                msg(&[
                    ("type", s("CHUNK")),
                    ("transfer", Value::from(77)),
                    ("index", Value::from(0)),
                ]),
                vec![0xc0],
            ],
            ErrorCode::TransferFailed,
            chunk_refers(77),
        ),
    ];
    for (what, parts, code, expected) in cases {
        let since = logs.mark();
        bob.send_raw(Channel::Commands, &frames(&parts))
            .expect("send");
        let (message, refers_to) = expect_error(&mut bob, code);
        assert_eq!(refers_to, expected, "{what}: {message}");
        logs.expect_warn(since, &[&format!("code={code:?}")]);
    }
    // A second AUTH is answered with AUTH FAILED, not a new session.
    bob.send_raw(
        Channel::Commands,
        &[&msg(&[
            ("type", s("AUTH")),
            ("id", Value::from(27)),
            ("user", s("bob2")),
            ("role", s("CLIENT")),
            ("protocol_version", Value::from(2)),
        ])],
    )
    .expect("send");
    assert!(matches!(
        answer(&mut bob),
        ServerMessage::Auth {
            id: Some(27),
            status: AuthStatus::Failed,
            code: Some(ErrorCode::AlreadyAuthenticated),
            ..
        }
    ));
    assert_eq!(observe(&mut carol, &["cube"]), before);
    let users = carol
        .wait_for(T, |e| {
            matches!(e.message, ServerMessage::ClientsState { .. })
        })
        .expect("CLIENTS_STATE");
    if let ServerMessage::ClientsState { users } = users.message {
        let bob_state = users.iter().find(|u| u.name == "bob").expect("bob");
        assert_eq!(bob_state.metadata, Value::Map(Vec::new()));
    }
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

#[test]
fn headers_over_the_limit_are_too_large() {
    let Session {
        server,
        logs,
        mut host,
        mut bob,
        mut carol,
    } = session_with(|c| c.limits.max_header_bytes = 4096);
    let before = observe(&mut carol, &["cube"]);
    let info =
        |id: u64, len: usize| padded(&[("type", s("SERVER_INFO")), ("id", Value::from(id))], len);

    // The limit itself is accepted, one byte more is not.
    bob.send_raw(Channel::Commands, &[&info(1, 4096)])
        .expect("send");
    assert!(matches!(
        answer(&mut bob),
        ServerMessage::ServerInfo { id: Some(1), .. }
    ));
    let since = logs.mark();
    bob.send_raw(Channel::Commands, &[&info(2, 4097)])
        .expect("send");
    let (message, _) = expect_error(&mut bob, ErrorCode::TooLarge);
    assert!(message.contains("4096"), "{message}");
    logs.expect_warn(since, &["code=TooLarge"]);

    // About 8 KiB: a valid message, garbage, and a bit under 1 MiB (still
    // below the frame limit libzmq enforces, so the server reads it).
    let garbage = vec![0xc1u8; 8192];
    let big = info(3, 1 << 19);
    for header in [info(3, 8192), garbage.clone(), big] {
        bob.send_raw(Channel::Commands, &[&header]).expect("send");
        expect_error(&mut bob, ErrorCode::TooLarge);
    }

    // The same from an identity that never authenticated.
    let mut eve = Raw::connect(server.port);
    eve.send(Channel::Commands, &[&info(4, 8192)]);
    eve.expect_error(ErrorCode::TooLarge);

    // On the subscriber and heartbeat channels: the ERROR comes on the
    // command channel.
    let fetch = padded(
        &[
            ("type", s("FETCH")),
            ("id", Value::from(5)),
            ("uuid", s("cube")),
        ],
        8192,
    );
    bob.send_raw(Channel::Subscriber, &[&fetch]).expect("send");
    let (message, _) = expect_error(&mut bob, ErrorCode::TooLarge);
    assert!(message.contains("subscriber"), "{message}");
    let pong = padded(&[("type", s("PONG")), ("seq", Value::from(1))], 8192);
    bob.send_raw(Channel::Heartbeat, &[&pong]).expect("send");
    let (message, _) = expect_error(&mut bob, ErrorCode::TooLarge);
    assert!(message.contains("heartbeat"), "{message}");

    // On the publisher channel, behind a valid token.
    let mut mallory = Raw::connect(server.port);
    mallory.authenticate("mallory");
    let update = padded(
        &[
            ("type", s("UPDATE")),
            ("uuid", s("cube")),
            ("type_id", s("Object")),
        ],
        8192,
    );
    mallory.publish(&[&update, &enc(&object("Evil", [6.0, 6.0, 6.0]))]);
    let (message, _) = mallory.expect_error(ErrorCode::TooLarge);
    assert!(message.contains("publisher"), "{message}");

    assert_eq!(observe(&mut carol, &["cube"]).blocks, before.blocks);
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

// ---------------------------------------------------------------------------
// Unknown identities on the other channels

#[test]
fn subscriber_and_heartbeat_traffic_from_an_unknown_identity_is_dropped() {
    let Session {
        server,
        logs,
        mut host,
        bob: _bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let mut eve = Raw::connect(server.port);
    let since = logs.mark();
    for request in [
        msg(&[("type", s("SNAPSHOT")), ("window", Value::from(10))]),
        msg(&[
            ("type", s("FETCH")),
            ("id", Value::from(1)),
            ("uuid", s("cube")),
        ]),
        msg(&[("type", s("SNAPSHOT_ACK")), ("received", Value::from(5))]),
    ] {
        eve.send(Channel::Subscriber, &[&request]);
    }
    for beat in [
        msg(&[("type", s("PONG")), ("seq", Value::from(1))]),
        msg(&[("type", s("PONG")), ("seq", Value::from(0))]),
        msg(&[("type", s("PING")), ("seq", Value::from(7))]),
        b"\xc1 garbage".to_vec(),
    ] {
        eve.send(Channel::Heartbeat, &[&beat]);
    }
    // Malformed ones are dropped as well, with no ERROR on the command
    // channel.
    eve.send(Channel::Subscriber, &[b"\xc1"]);
    // Each connection's messages are handled in order: once the last one
    // was logged, all were handled.
    logs.expect_warn(since, &["channel=subscriber", "authenticated"]);
    logs.expect_warn(since, &["channel=subscriber", "malformed"]);
    logs.expect_warn(since, &["channel=heartbeat", "authenticated"]);
    logs.expect_warn(since, &["channel=heartbeat", "malformed"]);
    // No ERROR: the answer to a later request is the first thing on the
    // command channel.
    eve.send(
        Channel::Commands,
        &[&msg(&[("type", s("SERVER_INFO")), ("id", Value::from(2))])],
    );
    assert!(matches!(
        eve.answer(),
        ServerMessage::ServerInfo { id: Some(2), .. }
    ));
    assert_eq!(observe(&mut carol, &["cube"]), before);

    // No snapshot, no datablock, no PONG: once eve has a session, the
    // answers to a FETCH and a PING are the first things on those channels.
    assert_eq!(eve.authenticate("eve"), AuthStatus::Running);
    eve.send(
        Channel::Subscriber,
        &[&msg(&[
            ("type", s("FETCH")),
            ("id", Value::from(3)),
            ("uuid", s("cube")),
        ])],
    );
    let earlier = eve.until(Channel::Subscriber, |m| {
        matches!(m, ServerMessage::Datablock { id: Some(3), .. })
    });
    assert!(earlier.is_empty(), "unexpected messages: {earlier:?}");
    let earlier = eve.ping(99);
    assert!(
        earlier
            .iter()
            .all(|h| matches!(h, HeartbeatMessage::Ping { .. })),
        "the unknown identity got heartbeat answers: {earlier:?}"
    );
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

#[test]
fn subscriber_and_heartbeat_garbage_from_a_member_gets_errors() {
    let Session {
        server: _server,
        logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let cases: Vec<(Channel, Parts, ErrorCode)> = vec![
        (
            Channel::Subscriber,
            vec![b"\xc1".to_vec()],
            ErrorCode::Malformed,
        ),
        (
            Channel::Subscriber,
            vec![msg(&[("type", s("AUTH")), ("user", s("x"))])],
            ErrorCode::InvalidMessage,
        ),
        (
            Channel::Subscriber,
            vec![msg(&[("type", s("FETCH")), ("id", Value::from(1))])],
            ErrorCode::InvalidMessage,
        ),
        (
            Channel::Subscriber,
            vec![msg(&[("type", s("FETCH")), ("uuid", Value::from(5))])],
            ErrorCode::InvalidMessage,
        ),
        (
            Channel::Subscriber,
            vec![msg(&[("type", s("SNAPSHOT")), ("window", s("big"))])],
            ErrorCode::InvalidMessage,
        ),
        (
            Channel::Subscriber,
            vec![msg(&[("type", s("SNAPSHOT")), ("batches", Value::from(1))])],
            ErrorCode::InvalidMessage,
        ),
        (
            Channel::Subscriber,
            vec![msg(&[
                ("type", s("SNAPSHOT_ACK")),
                ("received", Value::from(-3)),
            ])],
            ErrorCode::InvalidMessage,
        ),
        (
            Channel::Subscriber,
            vec![msg(&[("type", s("SNAPSHOT"))]), Vec::new(), Vec::new()],
            ErrorCode::Malformed,
        ),
        (
            Channel::Subscriber,
            vec![nested_arrays(10_000)],
            ErrorCode::Malformed,
        ),
        (
            Channel::Heartbeat,
            vec![b"\xc1".to_vec()],
            ErrorCode::Malformed,
        ),
        (
            Channel::Heartbeat,
            vec![msg(&[("type", s("PONG"))])],
            ErrorCode::InvalidMessage,
        ),
        (
            Channel::Heartbeat,
            vec![msg(&[("type", s("PONG")), ("seq", Value::from(-1))])],
            ErrorCode::InvalidMessage,
        ),
        (
            Channel::Heartbeat,
            vec![msg(&[("type", s("SERVER_INFO"))])],
            ErrorCode::InvalidMessage,
        ),
    ];
    for (channel, parts, code) in cases {
        let since = logs.mark();
        bob.send_raw(channel, &frames(&parts)).expect("send");
        let (message, refers_to) = expect_error(&mut bob, code);
        assert!(message.contains(channel.name()), "{message}");
        assert_eq!(refers_to, RefersTo::default());
        logs.expect_warn(since, &[&format!("code={code:?}")]);
    }
    // A FETCH of an unknown datablock names it.
    bob.send_raw(
        Channel::Subscriber,
        &[&msg(&[
            ("type", s("FETCH")),
            ("id", Value::from(9)),
            ("uuid", s("ghost")),
        ])],
    )
    .expect("send");
    let (_, refers_to) = expect_error(&mut bob, ErrorCode::UnknownDatablock);
    assert_eq!(refers_to, refers("FETCH", Some(9), Some("ghost")));
    // A PONG nobody asked for is ignored without an answer: the ERROR for a
    // bad heartbeat message sent after it is the next answer.
    for beat in [
        msg(&[("type", s("PONG")), ("seq", Value::from(123_456))]),
        msg(&[("type", s("PONG"))]),
    ] {
        bob.send_raw(Channel::Heartbeat, &[&beat]).expect("send");
    }
    let (_, refers_to) = expect_error(&mut bob, ErrorCode::InvalidMessage);
    assert_eq!(refers_to, RefersTo::default());

    assert_eq!(observe(&mut carol, &["cube"]), before);
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

// ---------------------------------------------------------------------------
// Publisher channel

#[test]
fn publisher_traffic_with_a_forged_or_missing_token_is_dropped() {
    let Session {
        server,
        logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let update = |uuid: &str| {
        msg(&[
            ("type", s("UPDATE")),
            ("uuid", s(uuid)),
            ("type_id", s("Object")),
        ])
    };
    let evil = enc(&object("Evil", [6.0, 6.0, 6.0]));
    let forged = b"0123456789abcdef0123456789abcdef".to_vec();
    let since = logs.mark();

    // From an authenticated client's socket, but with a forged, empty or
    // missing token.
    let mut mallory = Raw::connect(server.port);
    mallory.authenticate("mallory");
    for parts in [
        vec![forged.clone(), update("cube"), evil.clone()],
        vec![forged.clone(), update("evil"), evil.clone()],
        vec![forged.clone(), b"\xc1".to_vec()],
        vec![forged.clone()],
        vec![Vec::new(), update("cube"), evil.clone()],
        vec![update("cube"), evil.clone()],
        vec![update("cube")],
    ] {
        mallory.send(Channel::Publisher, &frames(&parts));
    }
    // The same through the blocking client, which adds no token either.
    bob.send_raw(Channel::Publisher, &[&forged, &update("cube"), &evil])
        .expect("send");
    bob.send_raw(Channel::Publisher, &[&update("evil"), &evil])
        .expect("send");

    // Valid updates sent afterwards on the same connections are processed
    // after the forged ones: when carol has them, the forged ones are done.
    mallory.publish(&[&update("sentinel-m"), &enc(&object("M", [1.0, 1.0, 1.0]))]);
    bob.update(&block("sentinel-b", "Object", object("B", [1.0, 1.0, 1.0])))
        .expect("update");
    wait_update(&mut carol, "sentinel-m");
    wait_update(&mut carol, "sentinel-b");
    // Nothing forged reached carol, nobody got an ERROR.
    while let Some(e) = carol.next_event(Duration::ZERO).expect("events") {
        if let ServerMessage::Update { header, .. } = &e.message {
            assert!(
                header.uuid.starts_with("sentinel"),
                "a forged UPDATE was forwarded: {header:?}"
            );
        }
    }
    // Refused updates sent last on the same connections: their ERRORs are
    // the first answers, so the forged messages got none.
    mallory.publish(&[&update("cube")]);
    let (_, refers_to) = mallory.expect_error(ErrorCode::InvalidMessage);
    assert_eq!(refers_to, refers("UPDATE", None, Some("cube")));
    bob.update_raw(&block("cube", "Object", Value::Nil), b"\xc1")
        .expect("update_raw");
    let (_, refers_to) = expect_error(&mut bob, ErrorCode::Malformed);
    assert_eq!(refers_to, refers("UPDATE", None, Some("cube")));
    logs.expect_warn(since, &["channel=publisher"]);

    let after = observe(&mut carol, &["cube"]);
    assert_eq!(after.blocks, before.blocks);
    assert_eq!(
        after.datablocks,
        before.datablocks + 2,
        "only the sentinels"
    );
    assert_absent(&mut carol, "evil");
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

#[test]
fn update_with_garbage_data_from_the_client_api_is_malformed() {
    let Session {
        server: _server,
        logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    for garbage in [
        b"\xc1garbage".to_vec(),
        b"".to_vec(),
        nested_arrays(10_000),
        {
            let mut v = enc(&object("Cube", [9.0, 9.0, 9.0]));
            v.push(0);
            v
        },
    ] {
        let since = logs.mark();
        bob.update_raw(&block("cube", "Object", Value::Nil), &garbage)
            .expect("update_raw");
        let (message, refers_to) = expect_error(&mut bob, ErrorCode::Malformed);
        assert_eq!(refers_to, refers("UPDATE", None, Some("cube")), "{message}");
        logs.expect_warn(since, &["code=Malformed"]);
    }
    // A new datablock with garbage data is not created.
    bob.update_raw(&block("fresh", "Object", Value::Nil), b"\xc1")
        .expect("update_raw");
    let (_, refers_to) = expect_error(&mut bob, ErrorCode::Malformed);
    assert_eq!(refers_to, refers("UPDATE", None, Some("fresh")));
    assert_absent(&mut carol, "fresh");

    assert_eq!(observe(&mut carol, &["cube"]), before);
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

#[test]
fn bad_publisher_messages_with_a_valid_token_get_errors() {
    // Pings every 20 ms: PRESENCE with the latencies arrives between the
    // answers, as it does on a loaded machine where the test outlasts a
    // heartbeat, and the bare client must not take it for an answer.
    let Session {
        server,
        logs,
        mut host,
        bob: _bob,
        mut carol,
    } = session_with(|c| c.heartbeat_interval_ms = 20);
    let before = observe(&mut carol, &["cube"]);
    let mut mallory = Raw::connect(server.port);
    assert_eq!(mallory.authenticate("mallory"), AuthStatus::Running);

    let header = |extra: &[(&str, Value)]| {
        let mut entries = vec![("type", s("UPDATE")), ("uuid", s("cube"))];
        entries.extend_from_slice(extra);
        msg(&entries)
    };
    let chunk = |transfer: u64, index: u32| {
        msg(&[
            ("type", s("CHUNK")),
            ("transfer", Value::from(transfer)),
            ("index", Value::from(index)),
        ])
    };
    let data = enc(&object("Evil", [6.0, 6.0, 6.0]));
    let op = |entries: &[(&str, Value)]| map(entries);
    let patch = |ops: Vec<Value>| enc(&Value::Array(ops));
    let update = || refers("UPDATE", None, Some("cube"));
    let update_t = |transfer| refers_transfer("UPDATE", None, Some("cube"), transfer);
    let announce = |transfer: u64, chunks: u32, size: u64| {
        header(&[
            ("transfer", Value::from(transfer)),
            ("chunks", Value::from(chunks)),
            ("size", Value::from(size)),
        ])
    };

    // (frames after the token, expected ERROR and what it refers to; None
    // for steps that must be accepted silently).
    type Expected = Option<(ErrorCode, RefersTo)>;
    // One more than a datablock may depend on: a list that still fits
    // the header limit, so the dependency limit is what refuses it.
    let too_many_deps = format!("{} dependencies", MAX_DEPS + 1);
    let steps: Vec<(&str, Parts, Expected)> = vec![
        (
            "data that is not MessagePack",
            vec![header(&[]), b"\xc1".to_vec()],
            Some((ErrorCode::Malformed, update())),
        ),
        (
            "no data frame",
            vec![header(&[])],
            Some((ErrorCode::InvalidMessage, update())),
        ),
        (
            "a patch that is not MessagePack",
            vec![
                header(&[("patch", Value::from(true))]),
                b"\xc1\xc1".to_vec(),
            ],
            Some((ErrorCode::PatchFailed, update())),
        ),
        (
            "a patch that is a map",
            vec![
                header(&[("patch", Value::from(true))]),
                enc(&op(&[("op", s("set"))])),
            ],
            Some((ErrorCode::PatchFailed, update())),
        ),
        (
            "a patch with an unknown operation",
            vec![
                header(&[("patch", Value::from(true))]),
                patch(vec![op(&[
                    ("op", s("frobnicate")),
                    ("path", Value::Array(vec![])),
                ])]),
            ],
            Some((ErrorCode::PatchFailed, update())),
        ),
        (
            "a patch whose second operation fails (atomic)",
            vec![
                header(&[("patch", Value::from(true))]),
                patch(vec![
                    op(&[
                        ("op", s("set")),
                        ("path", Value::Array(vec![s("name")])),
                        ("value", s("Evil")),
                    ]),
                    op(&[
                        ("op", s("remove")),
                        ("path", Value::Array(vec![s("no such key")])),
                    ]),
                ]),
            ],
            Some((ErrorCode::PatchFailed, update())),
        ),
        (
            "a patch of an unknown datablock",
            vec![
                msg(&[
                    ("type", s("UPDATE")),
                    ("uuid", s("ghost")),
                    ("patch", Value::from(true)),
                ]),
                patch(vec![]),
            ],
            Some((
                ErrorCode::UnknownDatablock,
                refers("UPDATE", None, Some("ghost")),
            )),
        ),
        (
            "transfer without chunks and size",
            vec![header(&[("transfer", Value::from(1))])],
            Some((ErrorCode::InvalidMessage, update_t(1))),
        ),
        (
            "transfer and chunks without size",
            vec![header(&[
                ("transfer", Value::from(1)),
                ("chunks", Value::from(2)),
            ])],
            Some((ErrorCode::InvalidMessage, update_t(1))),
        ),
        (
            "size without transfer",
            vec![header(&[
                ("chunks", Value::from(2)),
                ("size", Value::from(4)),
            ])],
            Some((ErrorCode::InvalidMessage, update())),
        ),
        (
            "zero chunks",
            vec![announce(1, 0, 4)],
            Some((ErrorCode::InvalidMessage, update_t(1))),
        ),
        (
            "zero size",
            vec![announce(1, 1, 0)],
            Some((ErrorCode::InvalidMessage, update_t(1))),
        ),
        (
            "a chunked header with a data frame",
            vec![
                header(&[
                    ("transfer", Value::from(1)),
                    ("chunks", Value::from(1)),
                    ("size", Value::from(data.len())),
                ]),
                data.clone(),
            ],
            Some((ErrorCode::InvalidMessage, update_t(1))),
        ),
        (
            "more chunks than bytes",
            vec![announce(1, 10, 3)],
            Some((ErrorCode::TransferFailed, update_t(1))),
        ),
        (
            "a size beyond the datablock limit",
            vec![announce(1, 1, 1u64 << 40)],
            Some((ErrorCode::TooLarge, update_t(1))),
        ),
        (
            "an empty uuid",
            vec![msg(&[("type", s("UPDATE")), ("uuid", s(""))]), data.clone()],
            Some((ErrorCode::InvalidMessage, refers("UPDATE", None, Some("")))),
        ),
        (
            "a uuid with a control character",
            vec![
                msg(&[("type", s("UPDATE")), ("uuid", s("a\nb"))]),
                data.clone(),
            ],
            Some((
                ErrorCode::InvalidMessage,
                refers("UPDATE", None, Some("a\nb")),
            )),
        ),
        (
            &too_many_deps,
            vec![
                header(&[(
                    "deps",
                    Value::Array(
                        (0..=MAX_DEPS)
                            .map(|i| Value::from(format!("d{i}")))
                            .collect(),
                    ),
                )]),
                data.clone(),
            ],
            Some((ErrorCode::InvalidMessage, update())),
        ),
        (
            "patch=1",
            vec![header(&[("patch", Value::from(1))]), data.clone()],
            Some((ErrorCode::InvalidMessage, RefersTo::default())),
        ),
        (
            "patch=nil",
            vec![header(&[("patch", Value::Nil)]), data.clone()],
            Some((ErrorCode::InvalidMessage, RefersTo::default())),
        ),
        (
            "chunks beyond 32 bits",
            vec![header(&[
                ("transfer", Value::from(1)),
                ("chunks", Value::from(1u64 << 32)),
                ("size", Value::from(1u64 << 33)),
            ])],
            Some((ErrorCode::InvalidMessage, RefersTo::default())),
        ),
        (
            "uuid=5",
            vec![
                msg(&[("type", s("UPDATE")), ("uuid", Value::from(5))]),
                data.clone(),
            ],
            Some((ErrorCode::InvalidMessage, RefersTo::default())),
        ),
        (
            "a header that is not MessagePack",
            vec![b"\xc1".to_vec()],
            Some((ErrorCode::Malformed, RefersTo::default())),
        ),
        (
            "no header at all",
            vec![],
            Some((ErrorCode::Malformed, RefersTo::default())),
        ),
        (
            "three frames",
            vec![header(&[]), data.clone(), data.clone()],
            Some((ErrorCode::Malformed, RefersTo::default())),
        ),
        (
            "a command on the publisher channel",
            vec![msg(&[("type", s("KICK")), ("user", s("host"))])],
            Some((ErrorCode::InvalidMessage, RefersTo::default())),
        ),
        (
            "a CHUNK for an unknown transfer",
            vec![chunk(999, 0), data.clone()],
            Some((ErrorCode::TransferFailed, chunk_refers(999))),
        ),
        (
            "a CHUNK without a data frame",
            vec![chunk(999, 0)],
            Some((ErrorCode::InvalidMessage, chunk_refers(999))),
        ),
        // Chunks out of order abort the transfer.
        ("announce transfer 40", vec![announce(40, 2, 4)], None),
        (
            "chunk 1 of transfer 40 first",
            vec![chunk(40, 1), vec![0x93, 0x01]],
            Some((ErrorCode::TransferFailed, chunk_refers(40))),
        ),
        (
            "chunk 0 of the aborted transfer 40",
            vec![chunk(40, 0), vec![0x02, 0x03]],
            Some((ErrorCode::TransferFailed, chunk_refers(40))),
        ),
        // A chunk beyond the announced size aborts it.
        ("announce transfer 41", vec![announce(41, 2, 4)], None),
        (
            "5 bytes in the first chunk of 4",
            vec![chunk(41, 0), vec![0x94, 1, 2, 3, 4]],
            Some((ErrorCode::TransferFailed, chunk_refers(41))),
        ),
        // Chunks that fall short of the announced size.
        ("announce transfer 42", vec![announce(42, 2, 4)], None),
        ("chunk 0 of 42", vec![chunk(42, 0), vec![0x93]], None),
        (
            "a last chunk leaving the payload short",
            vec![chunk(42, 1), vec![0x01]],
            Some((ErrorCode::TransferFailed, chunk_refers(42))),
        ),
        // The same transfer id announced twice.
        ("announce transfer 43", vec![announce(43, 2, 4)], None),
        (
            "announce transfer 43 again",
            vec![announce(43, 2, 4)],
            Some((ErrorCode::TransferFailed, update_t(43))),
        ),
        (
            "abort transfer 43",
            vec![chunk(43, 7), vec![0x01]],
            Some((ErrorCode::TransferFailed, chunk_refers(43))),
        ),
        // Announced transfers reserve their size: beyond the per-client
        // limit (1 GiB) the next announcement is refused.
        ("announce 400 MiB", vec![announce(50, 1, 400 << 20)], None),
        (
            "announce 400 MiB more",
            vec![announce(51, 1, 400 << 20)],
            None,
        ),
        (
            "announce a third 400 MiB",
            vec![announce(52, 1, 400 << 20)],
            Some((ErrorCode::LimitExceeded, update_t(52))),
        ),
        (
            "abort transfer 50",
            vec![chunk(50, 3), vec![0x01]],
            Some((ErrorCode::TransferFailed, chunk_refers(50))),
        ),
        (
            "abort transfer 51",
            vec![chunk(51, 3), vec![0x01]],
            Some((ErrorCode::TransferFailed, chunk_refers(51))),
        ),
        // A chunked update the room would refuse is refused when announced,
        // and its chunks find no transfer.
        (
            "announce a chunked patch of an unknown datablock",
            vec![msg(&[
                ("type", s("UPDATE")),
                ("uuid", s("ghost")),
                ("patch", Value::from(true)),
                ("transfer", Value::from(60)),
                ("chunks", Value::from(1)),
                ("size", Value::from(1)),
            ])],
            Some((
                ErrorCode::UnknownDatablock,
                refers_transfer("UPDATE", None, Some("ghost"), 60),
            )),
        ),
        (
            "a chunk of the refused transfer 60",
            vec![chunk(60, 0), vec![0x90]],
            Some((ErrorCode::TransferFailed, chunk_refers(60))),
        ),
        (
            "announce an update of a stale revision",
            vec![header(&[
                ("base_revision", Value::from(1_000_000)),
                ("transfer", Value::from(61)),
                ("chunks", Value::from(1)),
                ("size", Value::from(data.len())),
            ])],
            Some((ErrorCode::StaleRevision, update_t(61))),
        ),
        (
            "a chunk of the refused transfer 61",
            vec![chunk(61, 0), data.clone()],
            Some((ErrorCode::TransferFailed, chunk_refers(61))),
        ),
        // Data that is not MessagePack is refused at the chunk that shows
        // it, about the UPDATE, and the transfer is aborted.
        ("announce transfer 44", vec![announce(44, 2, 4)], None),
        (
            "chunk 0 of 44 is garbage",
            vec![chunk(44, 0), vec![0xc1, 0xc1]],
            Some((ErrorCode::Malformed, update_t(44))),
        ),
        (
            "chunk 1 of the aborted transfer 44",
            vec![chunk(44, 1), vec![0xc1, 0xc1]],
            Some((ErrorCode::TransferFailed, chunk_refers(44))),
        ),
        // Chunks that each read well but hold more than one value: refused
        // when the last one arrives.
        ("announce transfer 46", vec![announce(46, 2, 2)], None),
        ("chunk 0 of 46", vec![chunk(46, 0), vec![0x01]], None),
        (
            "chunk 1 of 46 is a second value",
            vec![chunk(46, 1), vec![0x02]],
            Some((ErrorCode::Malformed, update_t(46))),
        ),
    ];
    for (what, parts, expected) in steps {
        let since = logs.mark();
        mallory.publish(&frames(&parts));
        let Some((code, refers_to)) = expected else {
            continue;
        };
        let (message, got) = mallory.expect_error(code);
        assert_eq!(got, refers_to, "{what}: {message}");
        logs.expect_warn(since, &[&format!("code={code:?}")]);
    }

    // Transfers are per channel: a CHUNK on the command channel does not
    // feed a transfer announced on the publisher channel.
    mallory.publish(&[&header(&[
        ("transfer", Value::from(45)),
        ("chunks", Value::from(1)),
        ("size", Value::from(data.len())),
    ])]);
    mallory.publish(&[b"\xc1"]);
    mallory.expect_error(ErrorCode::Malformed);
    let command_chunk = msg(&[
        ("type", s("CHUNK")),
        ("transfer", Value::from(45)),
        ("index", Value::from(0)),
    ]);
    mallory.send(Channel::Commands, &[&command_chunk, &data]);
    let (_, got) = mallory.expect_error(ErrorCode::TransferFailed);
    assert_eq!(got, chunk_refers(45));

    let after = observe(&mut carol, &["cube"]);
    assert_eq!(after.blocks, before.blocks);
    assert_eq!(after.datablocks, before.datablocks);
    assert_eq!(after.users, before.users + 1, "only mallory joined");
    assert_absent(&mut carol, "ghost");
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

// ---------------------------------------------------------------------------
// Frames beyond the socket's size limit

#[test]
fn oversized_frames_disconnect_only_the_offender() {
    let Session {
        server,
        logs: _logs,
        mut host,
        mut bob,
        mut carol,
    } = session_with(|c| {
        c.limits.chunk_bytes = 4096;
        c.limits.max_header_bytes = 4096;
    });
    let limit = replication_serve::config::Limits {
        chunk_bytes: 4096,
        max_header_bytes: 4096,
        ..Default::default()
    }
    .max_frame_bytes();
    let before = observe(&mut carol, &["cube"]);
    // A valid datablock value (a bin) too large for one frame.
    let oversized = enc(&Value::Binary(vec![7; limit + 1000]));
    assert!(oversized.len() > limit);

    // An authenticated client's UPDATE with an oversized data frame.
    let mut mallory = Raw::connect(server.port);
    mallory.authenticate("mallory");
    mallory.publish(&[
        &msg(&[
            ("type", s("UPDATE")),
            ("uuid", s("cube")),
            ("type_id", s("Object")),
        ]),
        &oversized,
    ]);
    // An oversized command from an unknown identity.
    let eve = Raw::connect(server.port);
    eve.send(Channel::Commands, &[&oversized]);
    // Bob's subscriber and heartbeat connections.
    bob.send_raw(Channel::Subscriber, &[&oversized])
        .expect("send");
    bob.send_raw(Channel::Heartbeat, &[&oversized])
        .expect("send");

    // The others are served as if nothing happened.
    assert_live(&mut host, &mut carol, "cube", 1.0);
    let (mut dave, blocks) = joined(&server, "dave");
    assert_eq!(blocks.len(), 1);
    assert_live(&mut host, &mut dave, "cube", 2.0);
    // The frames were never read: the datablock holds only the live data.
    let after = observe(&mut carol, &["cube"]);
    assert_eq!(after.blocks[0].0.revision, before.blocks[0].0.revision + 2);
    assert_eq!(after.blocks[0].1, object("Live", [2.0, 2.0, 2.0]));
    // Bob's command connection was not touched.
    assert!(matches!(
        bob.server_info(T).expect("bob's SERVER_INFO"),
        ServerMessage::ServerInfo { .. }
    ));
}

// ---------------------------------------------------------------------------
// Requests out of order

/// Sends a SERVER_SNAPSHOT step on the command channel.
fn upload_step(client: &Client, id: u64, step: &str, block: Option<(&str, &[u8])>) {
    let mut entries = vec![
        ("type", s("SERVER_SNAPSHOT")),
        ("id", Value::from(id)),
        ("step", s(step)),
    ];
    match block {
        Some((uuid, data)) => {
            entries.push(("uuid", s(uuid)));
            entries.push(("type_id", s("Object")));
            entries.push(("owner", s("COMMON")));
            client
                .send_raw(Channel::Commands, &[&msg(&entries), data])
                .expect("send");
        }
        None => client
            .send_raw(Channel::Commands, &[&msg(&entries)])
            .expect("send"),
    }
}

/// The next answer, which must be SERVER_SNAPSHOT `want` (with `code`) for
/// request `id`.
fn expect_upload_answer(
    client: &mut Client,
    id: u64,
    want: UploadStatus,
    want_code: Option<ErrorCode>,
) {
    match answer(client) {
        ServerMessage::ServerSnapshot {
            id: got,
            status,
            code,
            ..
        } if got == Some(id) && status == want && code == want_code => {}
        other => panic!(
            "expected SERVER_SNAPSHOT {want:?} ({want_code:?}) for request {id}, got {other:?}"
        ),
    }
}

fn info(client: &mut Client) -> (SessionState, u64, u64) {
    match client.server_info(T).expect("SERVER_INFO") {
        ServerMessage::ServerInfo {
            state,
            users_online,
            datablocks,
            ..
        } => (state, users_online, datablocks),
        other => panic!("expected SERVER_INFO, got {other:?}"),
    }
}

#[test]
fn upload_steps_and_updates_out_of_order_are_refused() {
    let server = TestServer::start();
    let logs = Logs::attach(server.port);
    let mut host = admin(&server, "host");
    let mut vice = admin(&server, "vice");
    let (mut bob, status) = user(&server, "bob");
    assert_eq!(status, AuthStatus::Lobby);
    let cube = enc(&object("Cube", [0.0, 0.0, 0.0]));
    let snapshot_ref = |id, uuid| refers("SERVER_SNAPSHOT", Some(id), uuid);

    // WAITING: SET and END without INIT.
    let since = logs.mark();
    upload_step(&host, 1, "END", None);
    assert_eq!(
        expect_error(&mut host, ErrorCode::NoUpload).1,
        snapshot_ref(1, None)
    );
    logs.expect_warn(since, &["code=NoUpload"]);
    upload_step(&host, 2, "SET", Some(("cube", &cube)));
    assert_eq!(
        expect_error(&mut host, ErrorCode::NoUpload).1,
        snapshot_ref(2, Some("cube"))
    );
    // A chunked SET without INIT is refused when announced; its chunks find
    // no transfer.
    let set = msg(&[
        ("type", s("SERVER_SNAPSHOT")),
        ("id", Value::from(3)),
        ("step", s("SET")),
        ("uuid", s("big")),
        ("type_id", s("Object")),
        ("transfer", Value::from(7)),
        ("chunks", Value::from(2)),
        ("size", Value::from(cube.len())),
    ]);
    host.send_raw(Channel::Commands, &[&set]).expect("send");
    let half = cube.len() / 2;
    for (index, part) in [&cube[..half], &cube[half..]].into_iter().enumerate() {
        let chunk = msg(&[
            ("type", s("CHUNK")),
            ("transfer", Value::from(7)),
            ("index", Value::from(index)),
        ]);
        host.send_raw(Channel::Commands, &[&chunk, part])
            .expect("send");
    }
    assert_eq!(
        expect_error(&mut host, ErrorCode::NoUpload).1,
        refers_transfer("SERVER_SNAPSHOT", Some(3), Some("big"), 7)
    );
    for _ in 0..2 {
        let (message, refers_to) = expect_error(&mut host, ErrorCode::TransferFailed);
        assert_eq!(refers_to, chunk_refers(7), "{message}");
    }
    // A non-admin's INIT is rejected; its END finds no upload.
    upload_step(&bob, 4, "INIT", None);
    expect_upload_answer(
        &mut bob,
        4,
        UploadStatus::Rejected,
        Some(ErrorCode::NotAdmin),
    );
    upload_step(&bob, 5, "END", None);
    assert_eq!(
        expect_error(&mut bob, ErrorCode::NoUpload).1,
        snapshot_ref(5, None)
    );
    // Nothing live works before the session is ACTIVE.
    bob.update(&block("cube", "Object", object("Cube", [1.0, 1.0, 1.0])))
        .expect("update");
    let (_, refers_to) = expect_error(&mut bob, ErrorCode::SessionNotActive);
    assert_eq!(refers_to, refers("UPDATE", None, Some("cube")));
    for request in [
        msg(&[
            ("type", s("RIGHT")),
            ("id", Value::from(6)),
            ("uuids", Value::Array(vec![s("cube")])),
            ("owner", s("bob")),
        ]),
        msg(&[
            ("type", s("DELETE")),
            ("id", Value::from(7)),
            ("uuid", s("cube")),
        ]),
    ] {
        bob.send_raw(Channel::Commands, &[&request]).expect("send");
        expect_error(&mut bob, ErrorCode::SessionNotActive);
    }
    bob.send_raw(
        Channel::Subscriber,
        &[&msg(&[
            ("type", s("FETCH")),
            ("id", Value::from(8)),
            ("uuid", s("cube")),
        ])],
    )
    .expect("send");
    expect_error(&mut bob, ErrorCode::SessionNotActive);
    assert_eq!(info(&mut bob), (SessionState::Waiting, 3, 0));

    // SRV_SYNC: only the uploader may send SET and END, and nobody updates.
    upload_step(&host, 10, "INIT", None);
    expect_upload_answer(&mut host, 10, UploadStatus::Accepted, None);
    upload_step(&vice, 11, "INIT", None);
    expect_upload_answer(
        &mut vice,
        11,
        UploadStatus::Rejected,
        Some(ErrorCode::UploadInProgress),
    );
    upload_step(&vice, 12, "SET", Some(("other", &cube)));
    expect_error(&mut vice, ErrorCode::NoUpload);
    upload_step(&vice, 13, "END", None);
    expect_error(&mut vice, ErrorCode::NoUpload);
    bob.update(&block("cube", "Object", object("Cube", [1.0, 1.0, 1.0])))
        .expect("update");
    expect_error(&mut bob, ErrorCode::SessionNotActive);
    host.update(&block("cube", "Object", object("Cube", [1.0, 1.0, 1.0])))
        .expect("update");
    expect_error(&mut host, ErrorCode::SessionNotActive);
    // Bad SET steps from the uploader change nothing.
    upload_step(&host, 14, "SET", Some(("cube", &cube)));
    upload_step(&host, 15, "SET", Some(("cube", &cube)));
    assert_eq!(
        expect_error(&mut host, ErrorCode::DuplicateDatablock).1,
        snapshot_ref(15, Some("cube"))
    );
    // A chunked SET the room refuses once complete is refused as the SET.
    let duplicate = msg(&[
        ("type", s("SERVER_SNAPSHOT")),
        ("id", Value::from(22)),
        ("step", s("SET")),
        ("uuid", s("cube")),
        ("type_id", s("Object")),
        ("transfer", Value::from(8)),
        ("chunks", Value::from(1)),
        ("size", Value::from(cube.len())),
    ]);
    let chunk = msg(&[
        ("type", s("CHUNK")),
        ("transfer", Value::from(8)),
        ("index", Value::from(0)),
    ]);
    host.send_raw(Channel::Commands, &[&duplicate])
        .expect("send");
    host.send_raw(Channel::Commands, &[&chunk, &cube])
        .expect("send");
    assert_eq!(
        expect_error(&mut host, ErrorCode::DuplicateDatablock).1,
        refers_transfer("SERVER_SNAPSHOT", Some(22), Some("cube"), 8)
    );
    upload_step(&host, 16, "SET", Some(("broken", b"\xc1")));
    expect_error(&mut host, ErrorCode::Malformed);
    upload_step(&host, 17, "SET", None);
    expect_error(&mut host, ErrorCode::InvalidMessage);
    let no_data = msg(&[
        ("type", s("SERVER_SNAPSHOT")),
        ("id", Value::from(18)),
        ("step", s("SET")),
        ("uuid", s("nodata")),
        ("type_id", s("Object")),
    ]);
    host.send_raw(Channel::Commands, &[&no_data]).expect("send");
    expect_error(&mut host, ErrorCode::InvalidMessage);
    assert_eq!(info(&mut bob), (SessionState::SrvSync, 3, 1));

    // ACTIVE: a second END or INIT is refused; the session works.
    upload_step(&host, 19, "END", None);
    match answer(&mut host) {
        ServerMessage::ServerSnapshot {
            id: Some(19),
            status: UploadStatus::Done,
            datablocks: Some(1),
            ..
        } => {}
        other => panic!("expected END DONE, got {other:?}"),
    }
    upload_step(&host, 20, "END", None);
    expect_error(&mut host, ErrorCode::NoUpload);
    upload_step(&host, 21, "INIT", None);
    expect_upload_answer(
        &mut host,
        21,
        UploadStatus::Rejected,
        Some(ErrorCode::AlreadyInitialised),
    );
    assert_eq!(info(&mut bob), (SessionState::Active, 3, 1));
    let blocks = bob.download(T, |_, _| {}).expect("download");
    assert_eq!(blocks.len(), 1);
    assert_eq!(value(&blocks[0].data), object("Cube", [0.0, 0.0, 0.0]));
    assert_live(&mut host, &mut bob, "cube", 1.0);
}

#[test]
fn snapshot_requests_out_of_order_are_refused() {
    let Session {
        server,
        logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let snapshot = msg(&[("type", s("SNAPSHOT"))]);
    let ack = |received: u64| {
        msg(&[
            ("type", s("SNAPSHOT_ACK")),
            ("received", Value::from(received)),
        ])
    };

    // The host, live since its upload, may ask once and gets the whole
    // session.
    let blocks = host.download(T, |_, _| {}).expect("the host's download");
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].header, before.blocks[0].0);
    assert_eq!(value(&blocks[0].data), before.blocks[0].1);
    // SNAPSHOT twice: bob already downloaded, and so did the host now.
    for client in [&mut bob, &mut host] {
        let since = logs.mark();
        client
            .send_raw(Channel::Subscriber, &[&snapshot])
            .expect("send");
        let (_, refers_to) = expect_error(client, ErrorCode::InvalidMessage);
        assert_eq!(refers_to, refers("SNAPSHOT", None, None));
        logs.expect_warn(since, &["code=InvalidMessage"]);
    }
    // SNAPSHOT_ACK beyond what was sent.
    bob.send_raw(Channel::Subscriber, &[&ack(1_000_000)])
        .expect("send");
    let (_, refers_to) = expect_error(&mut bob, ErrorCode::InvalidMessage);
    assert_eq!(refers_to, refers("SNAPSHOT_ACK", None, None));
    // SNAPSHOT_ACK with no download at all, then the download still works.
    let (mut dave, status) = user(&server, "dave");
    assert_eq!(status, AuthStatus::Running);
    for received in [0, 1, u64::MAX] {
        dave.send_raw(Channel::Subscriber, &[&ack(received)])
            .expect("send");
        expect_error(&mut dave, ErrorCode::InvalidMessage);
    }
    let blocks = dave.download(T, |_, _| {}).expect("download");
    assert_eq!(blocks.len(), 1);

    let after = observe(&mut carol, &["cube"]);
    assert_eq!(after.blocks, before.blocks);
    assert_eq!(after.users, before.users + 1, "only dave joined");
    assert_live(&mut host, &mut carol, "cube", 1.0);
    assert_live(&mut host, &mut dave, "cube", 2.0);
    // The host stayed live.
    assert_live(&mut carol, &mut host, "cube", 3.0);
}

// ---------------------------------------------------------------------------
// A flood

#[test]
fn a_flood_of_garbage_does_not_starve_the_others() {
    const FLOOD: usize = 10_000;
    let Session {
        server: _server,
        logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let since = logs.mark();
    let kinds = [
        b"\xc1".to_vec(),
        enc(&Value::from(5)),
        msg(&[("type", s("FROBNICATE"))]),
        nested_arrays(200),
    ];
    let started = Instant::now();
    for i in 0..FLOOD {
        bob.send_raw(Channel::Commands, &[&kinds[i % kinds.len()]])
            .expect("send");
    }
    // A well-behaved update right behind the flood arrives within T.
    assert_live(&mut host, &mut carol, "cube", 1.0);
    let live_after = started.elapsed();
    assert!(live_after < T, "the live update took {live_after:?}");

    // Every garbage message got its ERROR, in a bounded time.
    let deadline = Instant::now() + T;
    let mut errors = 0;
    while errors < FLOOD {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {errors} of {FLOOD} ERRORs within {T:?}"
        );
        if let Some(e) = bob.next_event(left).expect("event")
            && let ServerMessage::Error { code, .. } = e.message
        {
            assert!(
                matches!(code, ErrorCode::Malformed | ErrorCode::InvalidMessage),
                "{code:?}"
            );
            errors += 1;
        }
    }
    assert!(logs.warnings_since(since) >= FLOOD);
    let after = observe(&mut carol, &["cube"]);
    assert_eq!(after.users, before.users);
    assert_eq!(after.datablocks, before.datablocks);
    assert_eq!(after.blocks[0].0.revision, before.blocks[0].0.revision + 1);
    assert_live(&mut bob, &mut carol, "cube", 2.0);
}

// ---------------------------------------------------------------------------
// Odd but well-formed input

#[test]
fn dependency_cycles_and_dangling_dependencies_do_not_break_downloads() {
    let Session {
        server,
        logs: _logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let mut a = block("a", "Object", object("A", [0.0, 0.0, 0.0]));
    a.deps = vec!["b".into(), "a".into()];
    let mut b = block("b", "Object", object("B", [0.0, 0.0, 0.0]));
    b.deps = vec!["a".into(), "missing".into()];
    bob.update(&a).expect("update a");
    bob.update(&b).expect("update b");
    wait_update(&mut carol, "a");
    wait_update(&mut carol, "b");
    let (mut dave, blocks) = joined(&server, "dave");
    let mut uuids: Vec<&str> = blocks.iter().map(|b| b.header.uuid.as_str()).collect();
    uuids.sort_unstable();
    assert_eq!(uuids, ["a", "b", "cube"]);
    assert_live(&mut host, &mut dave, "cube", 1.0);
}

// ---------------------------------------------------------------------------
// Bugs

/// A header is a map with string keys: serde's tagged enums would also take
/// a sequence of the tag and the fields in declaration order, so
/// `["RIGHT", 99, ["cube"], "bob"]` must be refused, not obeyed.
#[test]
fn array_headers_are_not_messages() {
    let Session {
        server: _server,
        logs: _logs,
        mut host,
        mut bob,
        mut carol,
    } = session();
    let before = observe(&mut carol, &["cube"]);
    let arrays = [
        Value::Array(vec![
            s("RIGHT"),
            Value::from(99),
            Value::Array(vec![s("cube")]),
            s("bob"),
        ]),
        Value::Array(vec![s("SERVER_INFO"), Value::from(7)]),
    ];
    for header in arrays {
        bob.send_raw(Channel::Commands, &[&enc(&header)])
            .expect("send");
        match answer(&mut bob) {
            ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidMessage),
            other => panic!("{header} was obeyed: {other:?}"),
        }
    }
    assert_eq!(observe(&mut carol, &["cube"]), before);
    assert_live(&mut host, &mut carol, "cube", 1.0);
}

/// Header keys are strings: rmp-serde would also read a bin as a string, so
/// a map whose keys are bins must be refused.
#[test]
fn bin_keys_are_not_strings() {
    let Session {
        server: _server,
        logs: _logs,
        host: _host,
        mut bob,
        carol: _carol,
    } = session();
    let header = Value::Map(vec![
        (
            Value::Binary(b"type".to_vec()),
            Value::Binary(b"SERVER_INFO".to_vec()),
        ),
        (Value::Binary(b"id".to_vec()), Value::from(7)),
    ]);
    bob.send_raw(Channel::Commands, &[&enc(&header)])
        .expect("send");
    match answer(&mut bob) {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidMessage),
        other => panic!("a map with bin keys was obeyed: {other:?}"),
    }
}

/// Presence metadata is bounded in bytes as well as keys, because every
/// CLIENTS_STATE repeats it to everyone: an update that would pass
/// `limits.max_metadata_bytes` is refused with LimitExceeded and the stored
/// metadata stays within the limit.
#[test]
fn presence_metadata_is_bounded_in_bytes() {
    let Session {
        server,
        logs: _logs,
        host: _host,
        mut bob,
        carol: _carol,
    } = session_with(|c| c.limits.max_metadata_bytes = 4096);
    for i in 0..16 {
        let key = format!("k{i}");
        bob.set_metadata(map(&[(key.as_str(), Value::from("x".repeat(3000)))]))
            .expect("metadata");
    }
    // SERVER_INFO is answered after the metadata updates were handled.
    bob.server_info(T).expect("SERVER_INFO");
    let mut refused = 0;
    while let Some(e) = bob.next_event(Duration::ZERO).expect("events") {
        if let ServerMessage::Error { code, .. } = e.message {
            assert_eq!(code, ErrorCode::LimitExceeded);
            refused += 1;
        }
    }
    assert_eq!(
        refused, 15,
        "only the first 3000-byte value fits in 4096 bytes"
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    server
        .console
        .blocking_send(replication_serve::core::ConsoleRequest::Users {
            room: None,
            reply: tx,
        })
        .expect("console");
    let users = rx.blocking_recv().expect("users").expect("every room");
    let stored = users
        .iter()
        .map(|(_, u)| u)
        .find(|u| u.name == "bob")
        .expect("bob")
        .metadata
        .clone();
    assert!(
        enc(&stored).len() <= 4096,
        "{} bytes stored",
        enc(&stored).len()
    );
    assert_eq!(stored, map(&[("k0", Value::from("x".repeat(3000)))]));
}
