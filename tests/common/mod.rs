//! Shared helpers for integration tests: a real server on free ports, and
//! clients with generous deadlines.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use replication_serve::client::{Block, Client, ClientOptions, Event};
use replication_serve::config::Config;
use replication_serve::protocol::{AuthStatus, ServerMessage};
use replication_serve::server::{Server, ServerError};
use replication_serve::transport::BindError;
use rmpv::Value;
use tokio_util::sync::CancellationToken;

/// Deadline for anything that should happen: long, so that a loaded machine
/// does not fail tests, and only reached when something is really wrong.
pub const T: Duration = Duration::from_secs(20);

/// Next base port to try; spread by process id so test binaries running at
/// the same time start far apart.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

fn candidate() -> u16 {
    let _ = NEXT_PORT.compare_exchange(
        0,
        20_000 + (std::process::id() % 3000) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let port = NEXT_PORT.fetch_add(4, Ordering::SeqCst);
    if port > 60_000 {
        NEXT_PORT.store(20_000, Ordering::SeqCst);
    }
    port
}

/// A base port whose four ports were free a moment ago (for tests that
/// start the binary; in-process servers retry on their own).
pub fn free_base_port() -> u16 {
    loop {
        let base = candidate();
        let free = (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
}

/// A server running on its own thread, stopped when dropped.
pub struct TestServer {
    pub port: u16,
    pub shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    pub console: tokio::sync::mpsc::Sender<replication_serve::core::ConsoleRequest>,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(configure: impl Fn(&mut Config)) -> Self {
        loop {
            let mut config = Config {
                bind: [127, 0, 0, 1].into(),
                in_memory: true,
                ..Config::default()
            };
            configure(&mut config);
            config.port = free_base_port();
            let server = match Server::bind(config.clone()) {
                Ok(s) => s,
                Err(ServerError::Bind(BindError::InUse { .. })) => continue,
                Err(e) => panic!("cannot start the test server: {e}"),
            };
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            let console = server.console_sender();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(server.run(token)).expect("server run");
            });
            return Self {
                port: config.port,
                shutdown,
                thread: Some(thread),
                console,
            };
        }
    }

    /// Stops the server and waits for it to finish.
    pub fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An authenticated admin.
pub fn admin(server: &TestServer, name: &str) -> Client {
    let mut c = Client::connect(ClientOptions::admin(server.port, name, "admin")).expect("connect");
    c.authenticate(T).expect("admin auth");
    c
}

/// An authenticated regular user.
pub fn user(server: &TestServer, name: &str) -> (Client, AuthStatus) {
    let mut c = Client::connect(ClientOptions::new(server.port, name)).expect("connect");
    let status = c.authenticate(T).expect("user auth");
    (c, status)
}

/// A datablock with a map as data.
pub fn block(uuid: &str, type_id: &str, data: Value) -> Block {
    Block {
        uuid: uuid.into(),
        type_id: type_id.into(),
        owner: Some("COMMON".into()),
        deps: Vec::new(),
        data,
    }
}

/// `{"name": name, "location": [x, y, z]}`
pub fn object(name: &str, loc: [f64; 3]) -> Value {
    Value::Map(vec![
        (Value::from("name"), Value::from(name)),
        (
            Value::from("location"),
            Value::Array(loc.iter().map(|v| Value::from(*v)).collect()),
        ),
    ])
}

/// A server with an admin who uploaded `blocks`; the session is ACTIVE.
pub fn hosted(blocks: &[Block]) -> (TestServer, Client) {
    let server = TestServer::start();
    let mut host = admin(&server, "host");
    host.upload(blocks, T).expect("upload");
    (server, host)
}

/// A user who joined and downloaded the session.
pub fn joined(
    server: &TestServer,
    name: &str,
) -> (Client, Vec<replication_serve::client::Received>) {
    joined_with(ClientOptions::new(server.port, name))
}

/// A regular user with these options that has downloaded the scene.
pub fn joined_with(options: ClientOptions) -> (Client, Vec<replication_serve::client::Received>) {
    let mut c = Client::connect(options).expect("connect");
    let status = c.authenticate(T).expect("user auth");
    assert_eq!(status, AuthStatus::Running);
    let blocks = c.download(T, |_, _| {}).expect("download");
    (c, blocks)
}

/// Decodes a datablock payload.
pub fn value(bytes: &[u8]) -> Value {
    replication_serve::protocol::codec::decode_value(bytes).expect("payload decodes")
}

/// Waits for the next event whose message satisfies `pred`.
pub fn wait(client: &mut Client, what: &str, pred: impl FnMut(&Event) -> bool) -> Event {
    client
        .wait_for(T, pred)
        .unwrap_or_else(|e| panic!("{} waited for {what}: {e}", client.user()))
}

/// Waits for an UPDATE of `uuid`.
pub fn wait_update(client: &mut Client, uuid: &str) -> Event {
    wait(
        client,
        &format!("UPDATE {uuid}"),
        |e| matches!(&e.message, ServerMessage::Update { header, .. } if header.uuid == uuid),
    )
}
