//! Durable sessions, against the real binary: SIGKILL at random moments
//! while clients write, restarts, `save` and `--load`, autosave rotation,
//! compaction, and damaged data directories and session files.

mod child;
mod common;
use child::*;
use common::*;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use replication_serve::client::{Block, Client, ClientOptions, Received};
use replication_serve::protocol::codec::decode_value;
use replication_serve::protocol::patch::Patch;
use replication_serve::protocol::{AuthStatus, COMMON, ServerMessage};
use rmpv::Value;

const BIN: &str = env!("CARGO_BIN_EXE_replication-serve");
const ADMIN: &str = "admin";

/// Starts the binary on `data_dir` with `args`, stdin piped for the
/// console when `console` is set.
fn start_on(data_dir: &Path, args: &[&str], console: bool) -> Server {
    start_listening(console, |port| server_command(data_dir, port, args))
}

fn server_command(data_dir: &Path, port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REPLICATION_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["--bind", "127.0.0.1", "-p", &port.to_string(), "-pwd", ADMIN])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("XDG_DATA_HOME", fresh_data_home());
    cmd
}

/// Runs the binary on `data_dir` expecting it to refuse to start; returns
/// its stderr.
fn refused_start(data_dir: &Path, args: &[&str]) -> String {
    let finished = finish(server_command(data_dir, free_base_port(), args));
    assert!(
        !finished.status.success(),
        "the server started:\n{}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("listening"),
        "{}",
        finished.stderr
    );
    finished.stderr
}

fn connect(server: &Server, user: &str, admin: bool) -> Client {
    let options = if admin {
        ClientOptions::admin(server.port, user, ADMIN)
    } else {
        ClientOptions::new(server.port, user)
    };
    Client::connect(options).expect("connect")
}

/// Each datablock's value: `n` counts its updates (so `n == revision - 1`
/// always holds), `twice` is `2 n`, and `pad` makes it about 300 bytes.
fn value(n: i64) -> Value {
    Value::Map(vec![
        ("n".into(), n.into()),
        ("twice".into(), (2 * n).into()),
        ("pad".into(), "p".repeat(256).into()),
    ])
}

/// A patch taking a datablock's value to `n`: two operations, applied
/// together or not at all.
fn patch_to(n: i64) -> Patch {
    let op = |key: &str, v: i64| {
        Value::Map(vec![
            ("op".into(), "set".into()),
            ("path".into(), Value::Array(vec![key.into()])),
            ("value".into(), v.into()),
        ])
    };
    Patch::from_value(Value::Array(vec![op("n", n), op("twice", 2 * n)])).expect("patch")
}

fn scene(count: usize) -> Vec<Block> {
    (0..count)
        .map(|i| block(&format!("block-{i:02}"), "Object", value(0)))
        .collect()
}

/// The scene as a late joiner downloads it: uuid to (revision, value).
fn download(server: &Server, user: &str) -> (AuthStatus, HashMap<String, (u64, Value, String)>) {
    let mut client = connect(server, user, false);
    let status = client.authenticate(T).expect("authenticate");
    let blocks = client.download(T, |_, _| {}).expect("download");
    let _ = client.leave();
    (status, by_uuid(blocks))
}

fn by_uuid(blocks: Vec<Received>) -> HashMap<String, (u64, Value, String)> {
    blocks
        .into_iter()
        .map(|b| {
            let value = decode_value(&b.data).expect("valid data");
            (b.header.uuid, (b.header.revision, value, b.header.owner))
        })
        .collect()
}

fn field(value: &Value, key: &str) -> i64 {
    value
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(key)))
        .and_then(|(_, v)| v.as_i64())
        .unwrap_or_else(|| panic!("no {key} in {value}"))
}

/// The newest revision of each datablock that some client was told about:
/// acknowledged to its writer, or forwarded to a reader.
#[derive(Default)]
struct Seen(Mutex<HashMap<String, u64>>);

impl Seen {
    fn saw(&self, uuid: &str, revision: u64) {
        let mut seen = self.0.lock().expect("lock");
        let entry = seen.entry(uuid.to_owned()).or_default();
        *entry = (*entry).max(revision);
    }

    fn snapshot(&self) -> HashMap<String, u64> {
        self.0.lock().expect("lock").clone()
    }
}

/// How long a writer waits for an acknowledgement. After the kill none
/// comes; a writer that gives up early on a slow machine only writes less.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Writes the datablocks `uuids` (starting at their revisions) until the
/// connection fails, alternating full updates and patches, each
/// acknowledged before the next.
fn writer(port: u16, name: String, uuids: Vec<(String, u64)>, seen: Arc<Seen>) -> usize {
    let Ok(mut client) = Client::connect(ClientOptions::new(port, &name)) else {
        return 0;
    };
    if client.authenticate(T).is_err() {
        return 0;
    }
    let mut revisions: HashMap<String, u64> = uuids.iter().cloned().collect();
    let mut written = 0;
    'writing: loop {
        for (uuid, _) in &uuids {
            let revision = revisions[uuid];
            let n = i64::try_from(revision).expect("small");
            let result = if revision % 2 == 0 {
                client.patch_confirmed(uuid, &patch_to(n), Some(revision), ACK_WAIT)
            } else {
                client.update_confirmed(&block(uuid, "Object", value(n)), ACK_WAIT)
            };
            match result {
                Ok(new_revision) => {
                    assert_eq!(new_revision, revision + 1, "{uuid}");
                    seen.saw(uuid, new_revision);
                    revisions.insert(uuid.clone(), new_revision);
                    written += 1;
                }
                Err(_) => break 'writing,
            }
        }
    }
    written
}

/// Reads every update forwarded to it until `stop` or the connection fails.
fn reader(port: u16, seen: Arc<Seen>, stop: Arc<AtomicBool>, ready: std::sync::mpsc::Sender<()>) {
    let mut client = Client::connect(ClientOptions::new(port, "reader")).expect("connect");
    client.authenticate(T).expect("authenticate");
    client.download(T, |_, _| {}).expect("download");
    let _ = ready.send(());
    while !stop.load(Ordering::Relaxed) {
        match client.next_event(Duration::from_millis(50)) {
            Ok(Some(event)) => {
                if let ServerMessage::Update { header, .. } = event.message {
                    seen.saw(&header.uuid, header.revision);
                }
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// The crash test: writers update continuously, the server is killed with
/// SIGKILL at a random moment, restarted on the same directory, and every
/// revision any client was sent is there, with the value that revision
/// had. Repeated at several moments, each round starting from the state the
/// last one restored.
#[test]
fn sigkill_at_random_moments_loses_nothing_that_was_sent() {
    let seed: u64 = rand::rng().random();
    eprintln!("crash test seed: {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let server = start_on(&data, &[], false);
    let mut host = connect(&server, "host", true);
    host.authenticate(T).expect("authenticate");
    host.upload(&scene(16), T).expect("upload");
    host.leave().expect("leave");
    let mut revisions: HashMap<String, u64> =
        (0..16).map(|i| (format!("block-{i:02}"), 1)).collect();
    let mut server = Some(server);

    for round in 0..4 {
        let running = server.take().expect("a running server");
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = {
            let (seen, stop, port) = (seen.clone(), stop.clone(), running.port);
            std::thread::spawn(move || reader(port, seen, stop, ready_tx))
        };
        ready_rx.recv_timeout(T).expect("the reader is ready");
        let mut sorted: Vec<(String, u64)> = revisions.clone().into_iter().collect();
        sorted.sort();
        let writers: Vec<_> = sorted
            .chunks(8)
            .enumerate()
            .map(|(i, uuids)| {
                let (seen, port, uuids) = (seen.clone(), running.port, uuids.to_vec());
                std::thread::spawn(move || writer(port, format!("writer-{i}"), uuids, seen))
            })
            .collect();
        // Kill once some writing happened, at a random moment after that.
        let deadline = Instant::now() + T;
        while seen.snapshot().len() < 4 {
            assert!(Instant::now() < deadline, "the writers made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(20..600)));
        running.signal("KILL");
        drop(running);
        let written: usize = writers.into_iter().map(|w| w.join().expect("writer")).sum();
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("reader");
        let seen = seen.snapshot();
        assert!(written > 0, "round {round}: nothing was written");
        eprintln!("round {round}: {written} updates acknowledged before the kill");

        let restarted = start_on(&data, &[], false);
        assert!(
            restarted
                .stderr
                .find_from(0, |l| l.contains("restored the recorded session"))
                .is_some(),
            "{}",
            restarted.stderr.text()
        );
        let (status, restored) = download(&restarted, &format!("checker-{round}"));
        assert_eq!(status, AuthStatus::Running, "round {round}");
        assert_eq!(restored.len(), 16, "round {round}");
        for (uuid, (revision, value, owner)) in &restored {
            let sent = seen.get(uuid).copied().unwrap_or(revisions[uuid]);
            assert!(
                *revision >= sent,
                "round {round} (seed {seed}): {uuid} came back at revision {revision}, but revision {sent} had been sent"
            );
            let n = field(value, "n");
            assert_eq!(n, i64::try_from(*revision).expect("small") - 1, "{uuid}: {value}");
            assert_eq!(field(value, "twice"), 2 * n, "{uuid}: {value}");
            assert_eq!(owner, COMMON);
            revisions.insert(uuid.clone(), *revision);
        }
        server = Some(restarted);
    }
}
