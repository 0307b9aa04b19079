//! CURVE sessions end to end: encrypted sessions with keys given or
//! trusted on first use, the refusals (a wrong server key, a changed pinned
//! key, an unlisted client key, a plain client on an encrypted server),
//! what a relay in the middle sees, and hostile bytes before the handshake.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use replication_serve::client::{Client, ClientError, ClientOptions, ServerTrust};
use replication_serve::config::{Config, Encryption};
use replication_serve::protocol::{AuthStatus, ServerMessage};
use replication_serve::security::key::{KeyPair, PublicKey};
use rmpv::Value;

/// A server that encrypts (on loopback, so `required`), its key kept in
/// `dir`.
fn encrypted_server(dir: &Path, configure: impl Fn(&mut Config)) -> TestServer {
    let key = dir.join("server.key");
    TestServer::start_with(move |c| {
        c.encryption = Encryption::Required;
        c.server_key = Some(key.clone());
        // Clients that wait in a test without polling must not time out.
        c.timeout_ms = 120_000;
        configure(c);
    })
}

fn server_public_key(dir: &Path) -> PublicKey {
    KeyPair::load(&dir.join("server.key"))
        .expect("the server made its key")
        .public()
}

fn known_servers(dir: &Path) -> PathBuf {
    dir.join("client/known_servers")
}

/// The scene's text every capture looks for.
const SCENE_TEXT: &str = "a-scene-string-only-this-test-knows";
const ADMIN_PASSWORD: &str = "an-admin-password-only-this-test-knows";

fn scene() -> Vec<replication_serve::client::Block> {
    vec![
        block("cube", "Object", object(SCENE_TEXT, [1.0, 2.0, 3.0])),
        block("light", "Light", object("light", [0.0, 0.0, 5.0])),
    ]
}

#[test]
fn an_encrypted_session_runs_end_to_end_with_a_given_key_and_trust_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let server = encrypted_server(dir.path(), |_| {});
    let key = server_public_key(dir.path());

    let mut host = Client::connect(
        ClientOptions::admin(server.port, "host", "admin").trusting(ServerTrust::Key(key)),
    )
    .expect("connect");
    assert_eq!(host.server_key(), Some(key));
    host.authenticate(T).expect("admin auth");
    host.upload(&scene(), T).expect("upload");

    // The first connection pins the key; the second finds it pinned.
    let pins = known_servers(dir.path());
    let options =
        ClientOptions::new(server.port, "bob").trusting(ServerTrust::FirstUse(pins.clone()));
    let (mut bob, blocks) = joined_with(options.clone());
    assert_eq!(bob.server_key(), Some(key));
    assert_eq!(blocks.len(), 2);
    let pinned = std::fs::read_to_string(&pins).expect("the key was pinned");
    assert_eq!(pinned, format!("127.0.0.1:{} {key}\n", server.port));
    let (mut carol, _) = joined_with(ClientOptions {
        user: "carol".into(),
        ..options
    });
    assert_eq!(
        std::fs::read_to_string(&pins).unwrap(),
        pinned,
        "pinned once"
    );

    // Live traffic both ways, and heartbeats through the heartbeat port.
    host.update(&block("cube", "Object", object("moved", [4.0, 5.0, 6.0])))
        .expect("update");
    wait_update(&mut bob, "cube");
    wait_update(&mut carol, "cube");
    let info = bob.server_info(T).expect("server info");
    assert!(
        matches!(
            info,
            ServerMessage::ServerInfo {
                users_online: 3,
                ..
            }
        ),
        "{info:?}"
    );
    wait(
        &mut carol,
        "a latency measured over the heartbeat port",
        |e| match &e.message {
            ServerMessage::Presence { latency, .. } => !latency.is_empty(),
            ServerMessage::ClientsState { users } => users.iter().any(|u| u.latency_ms.is_some()),
            _ => false,
        },
    );
}

#[test]
fn a_wrong_server_key_is_refused_with_both_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let server = encrypted_server(dir.path(), |_| {});
    let key = server_public_key(dir.path());
    let wrong = KeyPair::generate().unwrap().public();
    let error =
        Client::connect(ClientOptions::new(server.port, "bob").trusting(ServerTrust::Key(wrong)))
            .err()
            .expect("refused");
    let message = error.to_string();
    assert!(matches!(error, ClientError::WrongServerKey(_)), "{error:?}");
    assert!(
        message.contains(&key.fingerprint()) && message.contains(&wrong.fingerprint()),
        "{message}"
    );
    // The server is unharmed.
    let (mut ok, _) = user_with_key(&server, "ok", key);
    ok.server_info(T).expect("still serving");
}

fn user_with_key(server: &TestServer, name: &str, key: PublicKey) -> (Client, AuthStatus) {
    let mut c =
        Client::connect(ClientOptions::new(server.port, name).trusting(ServerTrust::Key(key)))
            .expect("connect");
    let status = c.authenticate(T).expect("auth");
    (c, status)
}

#[test]
fn a_changed_pinned_key_is_refused_with_what_may_be_happening_and_how_to_accept_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = encrypted_server(dir.path(), |_| {});
    let port = first.port;
    let pins = known_servers(dir.path());
    let options = ClientOptions {
        port,
        ..ClientOptions::new(port, "bob").trusting(ServerTrust::FirstUse(pins.clone()))
    };
    Client::connect(options.clone())
        .expect("first use")
        .authenticate(T)
        .expect("auth");
    let old = server_public_key(dir.path());
    first.stop();

    // The same address and port, another key: a new server, or someone in
    // the middle.
    std::fs::remove_file(dir.path().join("server.key")).unwrap();
    let second = loop {
        let key = dir.path().join("server.key");
        let config = Config {
            bind: [127, 0, 0, 1].into(),
            port,
            in_memory: true,
            encryption: Encryption::Required,
            server_key: Some(key),
            ..Config::default()
        };
        match replication_serve::server::Server::bind(config) {
            Ok(server) => break server,
            // The old sockets' ports may linger a moment.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(second.run(token))
            .unwrap();
    });
    let new = server_public_key(dir.path());
    assert_ne!(old, new);

    let error = Client::connect(options.clone()).err().expect("refused");
    let message = error.to_string();
    assert!(
        matches!(error, ClientError::ChangedServerKey(_)),
        "{error:?}"
    );
    for part in [
        &new.fingerprint(),
        &old.fingerprint(),
        "intercepting",
        "new key",
        &format!("127.0.0.1:{port}"),
        &pins.display().to_string(),
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }

    // Accepting it deliberately: the line removed, the key is pinned anew.
    std::fs::write(&pins, "").unwrap();
    let mut again = Client::connect(options).expect("accepted after the line was removed");
    again.authenticate(T).expect("auth");
    assert_eq!(again.server_key(), Some(new));
    shutdown.cancel();
    thread.join().unwrap();
}

#[test]
fn only_listed_client_keys_are_admitted_and_the_list_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let alice = KeyPair::generate().unwrap();
    let mallory = KeyPair::generate().unwrap();
    let list = dir.path().join("authorized_keys");
    std::fs::write(&list, format!("# the team\n{} alice\n", alice.public())).unwrap();
    let server = encrypted_server(dir.path(), |c| c.authorized_keys = Some(list.clone()));
    let key = server_public_key(dir.path());
    let with_key = |name: &str, pair: &KeyPair| ClientOptions {
        client_key: Some(pair.clone()),
        ..ClientOptions::new(server.port, name).trusting(ServerTrust::Key(key))
    };

    let mut a = Client::connect(with_key("alice", &alice)).expect("connect");
    assert_eq!(
        a.authenticate(T).expect("alice is listed"),
        AuthStatus::Lobby
    );

    let mut m = Client::connect(with_key("mallory", &mallory)).expect("connect");
    let error = m.authenticate(Duration::from_secs(5)).expect_err("refused");
    let message = error.to_string();
    assert!(matches!(error, ClientError::KeyNotAdmitted(_)), "{error:?}");
    assert!(
        message.contains(&mallory.public().to_text()) && message.contains("admin"),
        "{message}"
    );
    drop(m);

    // Listed later: the server reads the file again by itself.
    std::fs::write(
        &list,
        format!("{} alice\n{} mallory\n", alice.public(), mallory.public()),
    )
    .unwrap();
    let deadline = Instant::now() + T;
    loop {
        let mut m = Client::connect(with_key("mallory", &mallory)).expect("connect");
        match m.authenticate(Duration::from_secs(3)) {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
    }
    a.server_info(T).expect("alice is unharmed");
}

#[test]
fn a_plain_client_on_an_encrypting_server_is_refused_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = encrypted_server(dir.path(), |_| {});
    let key = server_public_key(dir.path());
    let (mut member, _) = user_with_key(&server, "member", key);

    let mut plain = Client::connect(ClientOptions::new(server.port, "plain")).expect("connect");
    let refused = plain.authenticate(Duration::from_secs(3));
    assert!(
        matches!(refused, Err(ClientError::Timeout(_))),
        "{refused:?}"
    );
    // The plain client is told why when it asks the key service.
    let answer = plain_request(server.port + 3, b"\x81\xa4type\xa4AUTH");
    assert!(
        String::from_utf8_lossy(&answer).contains("encryption_required"),
        "{answer:?}"
    );
    member.server_info(T).expect("the member is unharmed");
    let (mut later, _) = user_with_key(&server, "later", key);
    later
        .server_info(T)
        .expect("new encrypted clients still join");
}

/// One message over a plain DEALER to `port`; the first answer's header.
fn plain_request(port: u16, header: &[u8]) -> Vec<u8> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).unwrap();
    socket.set_linger(0).unwrap();
    socket.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
    socket.send(header, 0).unwrap();
    assert!(
        socket.poll(zmq::POLLIN, T.as_millis() as i64).unwrap() > 0,
        "no answer on port {port}"
    );
    socket.recv_bytes(0).unwrap()
}

/// Forwards four consecutive ports to the server's, keeping every byte
/// that passes in either direction.
struct Relay {
    base: u16,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    fn start(server_base: u16) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listeners = loop {
            let base = free_base_port();
            let bound: Result<Vec<_>, _> = (0..4)
                .map(|i| TcpListener::bind(("127.0.0.1", base + i)))
                .collect();
            if let Ok(listeners) = bound {
                break listeners;
            }
        };
        let base = listeners[0].local_addr().unwrap().port();
        for (offset, listener) in listeners.into_iter().enumerate() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", server_base + offset as u16))
                    else {
                        continue;
                    };
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        let seen = seen.clone();
                        std::thread::spawn(move || {
                            let mut buffer = [0u8; 16 * 1024];
                            while let Ok(n) = from.read(&mut buffer) {
                                if n == 0 || to.write_all(&buffer[..n]).is_err() {
                                    break;
                                }
                                seen.lock().unwrap().extend_from_slice(&buffer[..n]);
                            }
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            });
        }
        Self { base, seen }
    }

    fn saw(&self, text: &str) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(text.len()).any(|w| w == text.as_bytes())
    }
}

/// A session through the relay: the admin logs in with the password and
/// uploads the scene, a user downloads it and receives an update.
fn session_through(relay: &Relay, trust: ServerTrust) {
    let mut host = Client::connect(
        ClientOptions::admin(relay.base, "host", ADMIN_PASSWORD).trusting(trust.clone()),
    )
    .expect("connect");
    host.authenticate(T).expect("admin auth");
    host.upload(&scene(), T).expect("upload");
    let (mut bob, blocks) = joined_with(ClientOptions::new(relay.base, "bob").trusting(trust));
    assert_eq!(blocks.len(), 2);
    host.update(&block(
        "light",
        "Light",
        object(SCENE_TEXT, [1.0, 1.0, 1.0]),
    ))
    .expect("update");
    let update = wait_update(&mut bob, "light");
    let data = value(update.payload.as_deref().expect("data"));
    assert!(format!("{data}").contains(SCENE_TEXT));
    assert!(matches!(data, Value::Map(_)));
}

#[test]
fn a_relay_in_the_middle_sees_neither_the_admin_password_nor_the_scene() {
    let dir = tempfile::tempdir().unwrap();
    let server = encrypted_server(dir.path(), |c| c.admin_password = ADMIN_PASSWORD.into());
    let relay = Relay::start(server.port);
    session_through(&relay, ServerTrust::FirstUse(known_servers(dir.path())));
    assert!(
        !relay.saw(ADMIN_PASSWORD),
        "the admin password crossed in clear"
    );
    assert!(!relay.saw(SCENE_TEXT), "the scene crossed in clear");
    assert!(!relay.saw("upload"), "nothing of the protocol is readable");
    assert!(relay.saw("CURVE"), "the relay did carry the session");

    // The same capture without encryption does see both: the check above
    // can fail.
    let plain = TestServer::start_with(|c| c.admin_password = ADMIN_PASSWORD.into());
    let relay = Relay::start(plain.port);
    session_through(
        &relay,
        ServerTrust::FirstUse(dir.path().join("other_known_servers")),
    );
    assert!(relay.saw(ADMIN_PASSWORD) && relay.saw(SCENE_TEXT));
}

#[test]
fn hostile_bytes_before_the_handshake_harm_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = encrypted_server(dir.path(), |_| {});
    let key = server_public_key(dir.path());
    let (mut member, _) = user_with_key(&server, "member", key);

    let mut curve_greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 1];
    curve_greeting.extend_from_slice(b"CURVE");
    curve_greeting.resize(64, 0);
    let mut null_greeting = curve_greeting.clone();
    null_greeting[12..32].fill(0);
    null_greeting[12..16].copy_from_slice(b"NULL");
    let inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xFF; 4096],
        vec![0; 64],
        curve_greeting[..11].to_vec(),
        // A CURVE greeting, then a HELLO that is garbage, then a frame
        // claiming 2^56 bytes.
        [
            curve_greeting.clone(),
            vec![0x04, 200],
            vec![0x41; 200],
            vec![0x06, 1, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat(),
        // A plain greeting on every port, then a huge frame.
        [
            null_greeting.clone(),
            vec![0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        ]
        .concat(),
        // ZMTP 2 on an encrypting server.
        vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 1, 5],
    ];
    for port in server.port..server.port + 4 {
        for input in &inputs {
            let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                panic!("port {port} refuses connections");
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            // The server may close first: a failed write is an answer too.
            let _ = stream.write_all(input);
            let mut sink = [0u8; 256];
            let _ = stream.read(&mut sink);
        }
    }
    // Connections left open mid-greeting, beside working clients.
    let idle: Vec<TcpStream> = (0..4)
        .filter_map(|i| TcpStream::connect(("127.0.0.1", server.port + i)).ok())
        .collect();
    member.server_info(T).expect("the member is unharmed");
    let (mut later, _) = user_with_key(&server, "later", key);
    later.server_info(T).expect("new clients still join");
    let answer = plain_request(server.port + 3, b"\x82\xa4type\xaaSERVER_KEY\xa2id\x01");
    assert!(
        String::from_utf8_lossy(&answer).contains(&key.to_text()),
        "the key service still answers"
    );
    drop(idle);
}

#[test]
fn a_plain_server_says_so_and_clients_trusting_on_first_use_pin_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let pins = known_servers(dir.path());
    let (mut bob, _) = user_with_options(
        ClientOptions::new(server.port, "bob").trusting(ServerTrust::FirstUse(pins.clone())),
    );
    assert_eq!(bob.server_key(), None);
    assert!(!pins.exists(), "nothing pinned for a plain server");
    bob.server_info(T).expect("works");
}

fn user_with_options(options: ClientOptions) -> (Client, AuthStatus) {
    let mut c = Client::connect(options).expect("connect");
    let status = c.authenticate(T).expect("auth");
    (c, status)
}
