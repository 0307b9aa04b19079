//! Durable sessions, against the real binary: SIGKILL at random moments
//! while clients write, restarts, `save` and `--load`, autosave rotation,
//! compaction, and damaged data directories and session files.

mod child;
mod common;
use child::*;
use common::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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

const ADMIN: &str = "admin";

/// Starts the binary on `data_dir` with `args`, stdin piped for the
/// console when `console` is set.
fn start_on(data_dir: &Path, args: &[&str], console: bool) -> Server {
    start_listening(console, |port| server_on(data_dir, port, args))
}

/// Runs the binary on `data_dir` expecting it to refuse to start; returns
/// its stderr.
fn refused_start(data_dir: &Path, args: &[&str]) -> String {
    let finished = finish(server_on(data_dir, free_base_port(), args));
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
            let result = if revision.is_multiple_of(2) {
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
            assert_eq!(
                n,
                i64::try_from(*revision).expect("small") - 1,
                "{uuid}: {value}"
            );
            assert_eq!(field(value, "twice"), 2 * n, "{uuid}: {value}");
            assert_eq!(owner, COMMON);
            revisions.insert(uuid.clone(), *revision);
        }
        server = Some(restarted);
    }
}

/// Hosts `blocks` on `server` (the admin uploads them, then leaves).
fn host(server: &Server, blocks: &[Block]) {
    let mut admin = connect(server, "host", true);
    assert_eq!(
        admin.authenticate(T).expect("authenticate"),
        AuthStatus::Lobby
    );
    admin.upload(blocks, T).expect("upload");
    admin.leave().expect("leave");
}

/// Stops a server with SIGTERM and waits for it.
fn stop(mut server: Server) {
    server.signal("TERM");
    assert!(server.wait_exit().success(), "{}", server.stderr.text());
}

#[test]
fn a_restart_brings_the_session_back_with_owners_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_on(dir.path(), &[], false);
    host(&server, &scene(3));
    let mut bob = connect(&server, "bob", false);
    bob.authenticate(T).expect("authenticate");
    bob.lock(&["block-01"], T).expect("lock");
    let mine = Block {
        owner: Some("bob".into()),
        ..block("block-01", "Object", value(1))
    };
    bob.update_confirmed(&mine, T).expect("update");
    stop(server);

    let server = start_on(dir.path(), &[], false);
    let (status, restored) = download(&server, "carol");
    assert_eq!(status, AuthStatus::Running);
    assert_eq!(restored.len(), 3);
    let (revision, value, owner) = &restored["block-01"];
    assert_eq!(
        (*revision, field(value, "n"), owner.as_str()),
        (2, 1, COMMON)
    );
    // bob can come back and carry on from there.
    let mut bob = connect(&server, "bob", false);
    assert_eq!(
        bob.authenticate(T).expect("authenticate"),
        AuthStatus::Running
    );
    assert_eq!(
        bob.patch_confirmed("block-01", &patch_to(2), Some(2), T)
            .expect("patch"),
        3
    );
}

#[test]
fn in_memory_sessions_start_empty_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = start_on(&data, &["--in-memory", "--autosave", "0"], false);
    host(&server, &scene(2));
    stop(server);
    assert!(
        !data.exists(),
        "an in-memory server created {}",
        data.display()
    );
    let server = start_on(&data, &["--in-memory"], false);
    let mut client = connect(&server, "late", false);
    assert_eq!(
        client.authenticate(T).expect("authenticate"),
        AuthStatus::Lobby
    );
}

/// The console's `save` answers on stdout; returns that line.
fn console_save(server: &mut Server, argument: &str) -> String {
    let from = server.stdout.len();
    server.console(format!("save {argument}").trim_end());
    let at = server.stdout.expect_from(from, "the save answer", |l| {
        l.contains("saved ") || l.contains("cannot save")
    });
    server.stdout.snapshot()[at].clone()
}

#[test]
fn save_while_clients_write_then_load_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_on(&dir.path().join("a"), &[], true);
    // Nothing to save before the scene exists.
    assert!(console_save(&mut server, "").contains("no scene"));
    host(&server, &scene(8));

    // A writer keeps going while the admin saves.
    let seen = Arc::new(Seen::default());
    let uuids: Vec<(String, u64)> = (0..4).map(|i| (format!("block-{i:02}"), 1)).collect();
    let writer = {
        let (port, seen) = (server.port, seen.clone());
        std::thread::spawn(move || writer(port, "writer".into(), uuids, seen))
    };
    let deadline = Instant::now() + T;
    while seen.snapshot().len() < 4 {
        assert!(Instant::now() < deadline, "no writes");
        std::thread::sleep(Duration::from_millis(5));
    }
    let file = dir.path().join("copy.rsession");
    let line = console_save(&mut server, file.to_str().expect("utf-8"));
    assert!(line.contains("saved 8 datablocks"), "{line}");
    assert!(line.contains("copy.rsession"), "{line}");
    // The default name goes to the backup directory.
    let line = console_save(&mut server, "");
    assert!(line.contains("backups"), "{line}");
    stop(server);
    writer.join().expect("writer");

    // The file holds a consistent scene: every value matches its revision.
    let loaded = start_on(
        &dir.path().join("b"),
        &["--load", file.to_str().expect("utf-8")],
        false,
    );
    let (status, scene) = download(&loaded, "viewer");
    assert_eq!(status, AuthStatus::Running);
    assert_eq!(scene.len(), 8);
    for (uuid, (revision, value, owner)) in &scene {
        assert_eq!(
            field(value, "n"),
            i64::try_from(*revision).expect("small") - 1,
            "{uuid}"
        );
        assert_eq!(owner, COMMON);
    }
    stop(loaded);
    // And it was recorded in the new data directory: a restart without
    // --load has it too.
    let again = start_on(&dir.path().join("b"), &[], false);
    let (_, restarted) = download(&again, "viewer");
    assert_eq!(restarted, scene);
}

#[test]
fn load_replaces_the_recorded_session_after_saving_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // Session B, saved to a file.
    let mut server = start_on(&b, &[], true);
    host(&server, &[block("only-in-b", "Mesh", value(0))]);
    let file = dir.path().join("b.rsession");
    console_save(&mut server, file.to_str().expect("utf-8"));
    stop(server);
    // Session A, recorded; then started with --load B.
    let server = start_on(&a, &[], false);
    host(&server, &scene(2));
    stop(server);
    let server = start_on(&a, &["--load", file.to_str().expect("utf-8")], false);
    let (_, scene_now) = download(&server, "viewer");
    assert_eq!(scene_now.keys().collect::<Vec<_>>(), ["only-in-b"]);
    stop(server);
    // A was kept as a backup, which loads back.
    let kept: Vec<PathBuf> = std::fs::read_dir(a.join("backups"))
        .expect("backups")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let name = kept[0].file_name().and_then(|n| n.to_str()).expect("name");
    assert!(name.starts_with("before-load-"), "{name}");
    let server = start_on(&a, &["--load", kept[0].to_str().expect("utf-8")], false);
    let (_, scene_a) = download(&server, "viewer");
    assert_eq!(scene_a.len(), 2);
}

fn autosaves(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.expect("entry").path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("autosave-") && n.ends_with(".rsession"))
    });
    files.sort();
    files
}

#[test]
fn autosave_writes_only_after_changes_and_keeps_the_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backups = dir.path().join("saves");
    let server = start_on(
        &dir.path().join("data"),
        &[
            "--autosave",
            "300ms",
            "--autosave-keep",
            "2",
            "--backup-dir",
            backups.to_str().expect("utf-8"),
        ],
        false,
    );
    host(&server, &scene(2));
    let mut writer = connect(&server, "writer", false);
    writer.authenticate(T).expect("authenticate");
    let mut autosaved = 0;
    for n in 1..=4 {
        writer
            .update_confirmed(&block("block-00", "Object", value(n)), T)
            .expect("update");
        let from = server.stderr.len();
        server
            .stderr
            .expect_from(from, "an autosave", |l| l.contains("autosaved the session"));
        autosaved += 1;
    }
    assert!(autosaved >= 3);
    let files = autosaves(&backups);
    assert_eq!(files.len(), 2, "{files:?}");
    // Without changes, no new file appears over several intervals: the
    // heartbeat's own traffic is not a change.
    let before = server
        .stderr
        .text()
        .matches("autosaved the session")
        .count();
    writer.leave().expect("leave");
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < quiet_until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = server
        .stderr
        .text()
        .matches("autosaved the session")
        .count();
    assert!(after <= before + 1, "{before} then {after}");
    stop(server);
    // The newest autosave holds the last update.
    let newest = autosaves(&backups).pop().expect("an autosave");
    let loaded = start_on(
        &dir.path().join("other"),
        &["--in-memory", "--load", newest.to_str().expect("utf-8")],
        false,
    );
    let (_, scene) = download(&loaded, "viewer");
    assert_eq!(field(&scene["block-00"].1, "n"), 4);
}

#[test]
fn disk_use_follows_the_scene_not_its_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_on(dir.path(), &["--autosave", "0"], false);
    host(&server, &scene(1));
    let mut writer = connect(&server, "writer", false);
    writer.authenticate(T).expect("authenticate");
    // 20,000 patches to a 300-byte datablock: about 600 KB of history.
    for revision in 1..=20_000u64 {
        let n = i64::try_from(revision).expect("small");
        writer.patch("block-00", &patch_to(n), None).expect("patch");
    }
    let last = writer
        .patch_confirmed("block-00", &patch_to(20_001), None, T)
        .expect("patch");
    assert_eq!(last, 20_002);
    stop(server);
    let used: u64 = std::fs::read_dir(dir.path())
        .expect("data dir")
        .map(|e| e.expect("entry").metadata().expect("metadata").len())
        .sum();
    assert!(used < 256 * 1024, "the data directory holds {used} bytes");
    let server = start_on(dir.path(), &[], false);
    let (_, scene) = download(&server, "viewer");
    assert_eq!(scene["block-00"].0, 20_002);
    assert_eq!(field(&scene["block-00"].1, "n"), 20_001);
}

#[test]
fn a_damaged_data_directory_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_on(dir.path(), &[], false);
    host(&server, &scene(40));
    stop(server);
    let db = dir.path().join("session.db");
    let bytes = std::fs::read(&db).expect("read");
    for (what, damaged) in [
        ("cut in half", bytes[..bytes.len() / 2].to_vec()),
        ("header overwritten", {
            let mut b = bytes.clone();
            b[..16].copy_from_slice(b"not a database!!");
            b
        }),
    ] {
        std::fs::write(&db, &damaged).expect("write");
        let stderr = refused_start(dir.path(), &[]);
        assert!(stderr.contains("session.db"), "{what}: {stderr}");
        assert!(stderr.contains("damaged"), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert_eq!(
            std::fs::read(&db).expect("read"),
            damaged,
            "{what}: changed"
        );
    }
}

#[test]
fn a_damaged_session_file_is_refused_with_its_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_on(&dir.path().join("data"), &[], true);
    host(&server, &scene(40));
    let file = dir.path().join("s.rsession");
    console_save(&mut server, file.to_str().expect("utf-8"));
    stop(server);
    let bytes = std::fs::read(&file).expect("read");
    let bad = dir.path().join("bad.rsession");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    for (what, damaged) in [
        ("truncated", bytes[..bytes.len() - 7].to_vec()),
        ("flipped", flipped),
        ("not a session file", b"hello".to_vec()),
    ] {
        std::fs::write(&bad, &damaged).expect("write");
        let fresh = dir.path().join(format!("fresh-{}", what.replace(' ', "-")));
        let stderr = refused_start(&fresh, &["--load", bad.to_str().expect("utf-8")]);
        assert!(stderr.contains("bad.rsession"), "{what}: {stderr}");
        assert!(
            stderr.contains("offset") || what == "not a session file",
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
}

/// When the disk refuses a write, the server forwards nothing it could not
/// record: it tells everyone why, exits with an error, and a restart finds
/// the session as last recorded. The disk is "full" through a file-size
/// limit (`ulimit -f`, with SIGXFSZ ignored so that writes fail with EFBIG
/// instead of killing the process).
#[test]
fn a_storage_failure_stops_the_server_without_forwarding_unrecorded_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = start_listening(false, |port| {
        let inner = server_on(&data, port, &["--autosave", "0"]);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("trap '' XFSZ; ulimit -f 40960; exec \"$@\"")
            .arg("sh")
            .arg(inner.get_program())
            .args(inner.get_args());
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd
    });
    host(&server, &scene(2));
    let mut writer = connect(&server, "writer", false);
    writer.authenticate(T).expect("authenticate");
    let mut watcher = connect(&server, "watcher", false);
    watcher.authenticate(T).expect("authenticate");
    watcher.download(T, |_, _| {}).expect("download");
    // New 256 KiB datablocks until the 20 MiB limit (40960 blocks of 512
    // bytes) bites.
    let big = Value::Map(vec![
        ("n".into(), 0.into()),
        ("twice".into(), 0.into()),
        ("pad".into(), Value::Binary(vec![7; 256 << 10])),
    ]);
    let mut created = 0;
    let failure = loop {
        let uuid = format!("big-{created:03}");
        match writer.update_confirmed(&block(&uuid, "Image", big.clone()), T) {
            Ok(revision) => {
                assert_eq!(revision, 1);
                created += 1;
            }
            Err(e) => break e,
        }
        assert!(
            created < 100,
            "the file-size limit never stopped the server"
        );
    };
    assert!(created > 0, "not even one datablock fitted");
    eprintln!("{created} datablocks recorded before the limit");
    assert!(
        failure.to_string().contains("storage failed"),
        "{failure}\n{}",
        server.stderr.text()
    );
    let status = server.wait_exit();
    assert!(!status.success(), "{status}");
    let log = server.stderr.text();
    assert!(log.contains("cannot record the session"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // The watcher was sent the acknowledged datablocks and no other.
    let mut forwarded = 0;
    while let Ok(Some(event)) = watcher.next_event(Duration::from_millis(200)) {
        if let ServerMessage::Update { header, .. } = event.message {
            assert!(header.uuid < format!("big-{created:03}"), "{}", header.uuid);
            forwarded += 1;
        }
    }
    assert!(
        forwarded <= created,
        "{forwarded} forwarded, {created} acknowledged"
    );
    // Restarted without the limit: everything acknowledged is there.
    let server = start_on(&data, &[], false);
    let (_, restored) = download(&server, "viewer");
    for i in 0..created {
        assert!(
            restored.contains_key(&format!("big-{i:03}")),
            "big-{i:03} lost"
        );
    }
    assert!(restored.contains_key("block-00"));
}
