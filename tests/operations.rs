//! Running a server for weeks, against the real binary: starting a new
//! scene (`reset` at the console, `--fresh` at start), seeing who holds
//! what (`locks`, the refusal and ownership log lines), the metrics and
//! status over HTTP, errors a person can cause, the console on a real
//! terminal, and the warning about the default admin password.
//!
//! Every step waits for something observable (a line, an answer, an exit)
//! with the deadline `T`.

mod child;
mod common;
use child::*;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use replication_serve::client::{Client, ClientError, ClientOptions, Event};
use replication_serve::protocol::{AuthStatus, ServerMessage};
use replication_serve::store::file::read_session;
use rmpv::Value;

const BIN: &str = env!("CARGO_BIN_EXE_replication-serve");

/// The binary on a free port, recording in `data_dir`, with `args` and
/// `env`; stdin piped for the console when `console` is set.
fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)], console: bool) -> Server {
    start_listening(console, |port| {
        let mut cmd = server_on(data_dir, port, args);
        cmd.envs(env.iter().copied());
        cmd
    })
}

fn admin(server: &Server, name: &str) -> Client {
    let mut c = server.client(|p| ClientOptions::admin(p, name, "admin"));
    c.authenticate(T).expect("admin auth");
    c
}

/// A user who joined the ACTIVE session and downloaded it.
fn viewer(server: &Server, name: &str) -> Client {
    let mut c = server.client(|p| ClientOptions::new(p, name));
    assert_eq!(c.authenticate(T).expect("auth"), AuthStatus::Running);
    c.download(T, |_, _| {}).expect("download");
    c
}

fn scene() -> Vec<replication_serve::client::Block> {
    vec![
        block("cube", "Object", object("Cube", [0.0; 3])),
        block("lamp", "Light", Value::from("sun")),
    ]
}

fn is_disconnect(event: &Event) -> bool {
    matches!(event.message, ServerMessage::Disconnect { .. })
}

fn refused_code(result: Result<(), ClientError>) -> String {
    match result {
        Err(ClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The session files in `dir` whose names start with `prefix`.
fn backups(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".rsession"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn uuids_in(path: &Path) -> Vec<String> {
    let (image, _) = read_session(path, 1 << 30).expect("the backup reads back");
    let mut uuids: Vec<String> = image.blocks.into_iter().map(|b| b.uuid).collect();
    uuids.sort();
    uuids
}

// ---------------------------------------------------------------------------
// 1. A new scene: reset at the console, --fresh at start
// ---------------------------------------------------------------------------

#[test]
fn reset_asks_keeps_a_backup_and_starts_a_new_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path(), &[], &[], true);
    let mut host = admin(&server, "host");
    host.upload(&scene(), T).expect("upload");
    let mut bob = viewer(&server, "bob");

    // Anything but yes changes nothing.
    let mark = server.stdout.len();
    server.console("reset");
    server.stdout.expect_from(mark, "the question", |l| {
        l.contains("reset room default?") && l.contains("2 datablocks")
    });
    server.stdout.expect_from(mark, "the question", |l| {
        l.starts_with("Type yes to reset room default")
    });
    server.console("no");
    server
        .stdout
        .expect_from(mark, "the cancellation", |l| l.contains("reset cancelled"));
    assert!(bob.server_info(T).is_ok(), "bob is still connected");

    let mark = server.stdout.len();
    server.console("reset");
    server.console("yes");
    let line = server.stdout.expect_from(mark, "the reset", |l| {
        l.starts_with("room default reset: its scene was saved to ")
    });
    let done = server.stdout.snapshot()[line].clone();
    let event = bob.wait_for(T, is_disconnect).expect("bob is told");
    assert!(
        matches!(&event.message, ServerMessage::Disconnect { reason } if reason.contains("reset")),
        "{event:?}"
    );
    let saved = backups(&dir.path().join("backups"), "before-reset-default-");
    assert_eq!(saved.len(), 1, "{done}");
    assert!(done.contains(&saved[0].display().to_string()), "{done}");
    assert_eq!(uuids_in(&saved[0]), ["cube", "lamp"]);

    // A new scene can be uploaded: the room waits for it.
    let mut ann = server.client(|p| ClientOptions::admin(p, "ann", "admin"));
    assert_eq!(ann.authenticate(T).expect("auth"), AuthStatus::Lobby);
    ann.upload(&[block("sphere", "Object", object("Sphere", [1.0; 3]))], T)
        .expect("a new upload after the reset");
    let mark = server.stdout.len();
    server.console("status");
    server.stdout.expect_from(mark, "the new scene", |l| {
        l.starts_with("room default: state ACTIVE, 1 datablocks")
    });

    // The reset was recorded: a restart comes back with the new scene.
    server.signal("TERM");
    assert!(server.wait_exit().success());
    let mut again = start(dir.path(), &[], &[], true);
    let mark = again.stdout.len();
    again.console("status");
    again
        .stdout
        .expect_from(mark, "the new scene after a restart", |l| {
            l.starts_with("room default: state ACTIVE, 1 datablocks")
        });
}

#[test]
fn fresh_start_keeps_the_recorded_scene_as_a_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = start(dir.path(), &[], &[], false);
    admin(&first, "host").upload(&scene(), T).expect("upload");
    first.signal("TERM");
    assert!(first.wait_exit().success());

    // A restart keeps the scene: a second upload has nowhere to go.
    let mut second = start(dir.path(), &[], &[], false);
    let mut host = second.client(|p| ClientOptions::admin(p, "host", "admin"));
    assert_eq!(host.authenticate(T).expect("auth"), AuthStatus::Running);
    second.signal("TERM");
    assert!(second.wait_exit().success());

    // --fresh, here from the environment as Docker gives it.
    let fresh = start(dir.path(), &[], &[("REPLICATION_FRESH", "1")], false);
    let saved = backups(&dir.path().join("backups"), "before-fresh-default-");
    assert_eq!(saved.len(), 1);
    assert_eq!(uuids_in(&saved[0]), ["cube", "lamp"]);
    fresh
        .stderr
        .expect_from(0, "the fresh start's warning", |l| {
            l.contains("WARN")
                && l.contains("--fresh")
                && l.contains(&saved[0].display().to_string())
        });
    let mut host = fresh.client(|p| ClientOptions::admin(p, "host", "admin"));
    assert_eq!(host.authenticate(T).expect("auth"), AuthStatus::Lobby);
    host.upload(&[block("sphere", "Object", object("Sphere", [1.0; 3]))], T)
        .expect("a new scene");
}

#[test]
fn fresh_with_load_is_refused_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let finished = finish(server_on(
        dir.path(),
        free_base_port(),
        &["--fresh", "--load", "x.rsession"],
    ));
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
    for word in ["--fresh", "--load"] {
        assert!(finished.stderr.contains(word), "{}", finished.stderr);
    }
}

// ---------------------------------------------------------------------------
// 2. Who holds what
// ---------------------------------------------------------------------------

#[test]
fn locks_refusals_and_ownership_changes_are_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path(), &["-l", "DEBUG"], &[], true);
    admin(&server, "host").upload(&scene(), T).expect("upload");
    let mut bob = viewer(&server, "bob");
    let mut carol = viewer(&server, "carol");

    let mark = server.stdout.len();
    server.console("locks");
    server.stdout.expect_from(mark, "no locks yet", |l| {
        l == "no datablock is held by a user"
    });

    bob.lock(&["cube"], T).expect("bob locks the cube");
    server
        .stderr
        .expect_from(0, "the ownership change at DEBUG", |l| {
            l.contains("DEBUG") && l.contains("ownership changed") && l.contains("bob")
        });
    let mark = server.stdout.len();
    server.console("locks");
    let row = server.stdout.expect_from(mark, "bob's lock", |l| {
        l.split_whitespace()
            .take(4)
            .eq(["default", "bob", "cube", "Object"])
    });
    let row = server.stdout.snapshot()[row].clone();
    assert!(row.contains("ago)") && row.contains('T'), "{row}");
    for filter in ["locks bob", "locks default bob", "locks default"] {
        let mark = server.stdout.len();
        server.console(filter);
        server
            .stdout
            .expect_from(mark, filter, |l| l.contains("bob") && l.contains("cube"));
    }
    let mark = server.stdout.len();
    server.console("locks default carol");
    server.stdout.expect_from(mark, "no lock of carol's", |l| {
        l == "no datablock is held by a user"
    });

    // carol is refused, and the log says who, what, and whose it is.
    assert_eq!(refused_code(carol.lock(&["cube"], T)), "NotOwner");
    let line = server.stderr.expect_from(0, "the refusal", |l| {
        l.contains("WARN") && l.contains("refused") && l.contains("NotOwner")
    });
    let line = server.stderr.snapshot()[line].clone();
    for word in ["user=\"carol\"", "datablock=\"cube\"", "owner=\"bob\""] {
        assert!(line.contains(word), "{word} missing from: {line}");
    }
    carol
        .update(&block("cube", "Object", object("Hacked", [9.0; 3])))
        .expect("send");
    server.stderr.expect_from(0, "the refused update", |l| {
        l.contains("refused")
            && l.contains("kind=\"UPDATE\"")
            && l.contains("user=\"carol\"")
            && l.contains("owner=\"bob\"")
    });

    // Leaving releases, at DEBUG too.
    bob.leave().expect("bob leaves");
    server.stderr.expect_from(0, "the release", |l| {
        l.contains("DEBUG") && l.contains("released") && l.contains("bob")
    });
}

// ---------------------------------------------------------------------------
// 3. Metrics and status over HTTP
// ---------------------------------------------------------------------------

/// GET `path` from `addr`; returns the status line, the headers and the body.
fn get(addr: &str, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(T)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {answer:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

/// Where the server says its metrics listener is: `127.0.0.1:PORT`.
fn metrics_address(server: &Server) -> String {
    let line = server
        .stderr
        .expect_from(0, "the metrics line", |l| l.contains("metrics listening"));
    let line = server.stderr.snapshot()[line].clone();
    let start = line.find("http://").expect("an address") + "http://".len();
    let rest = &line[start..];
    rest[..rest.find("/metrics").expect("the path")].to_owned()
}

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, headers, body) = get(addr, "/metrics");
    assert!(status.contains("200"), "{status}\n{body}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{body}"))
}

/// A sample's value (a counter, gauge or untyped one), by name and labels.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("{name}{labels:?}: {other:?}"),
    }
}

/// How many observations a histogram holds (its +Inf bucket).
fn observations(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    let found = scrape.samples.iter().find(|s| s.metric == name);
    match found.map(|s| &s.value) {
        Some(prometheus_parse::Value::Histogram(buckets)) => buckets
            .iter()
            .filter(|b| b.less_than.is_infinite())
            .map(|b| b.count)
            .sum(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

#[test]
fn metrics_are_prometheus_text_and_status_is_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &["--metrics", "0"], &[], false);
    let addr = metrics_address(&server);
    assert!(
        addr.starts_with("127.0.0.1:"),
        "loopback unless told: {addr}"
    );

    let mut host = admin(&server, "host");
    host.upload(&scene(), T).expect("upload");
    host.update_confirmed(&block("lamp", "Light", Value::from("moon")), T)
        .expect("an update");
    let mut bob = viewer(&server, "bob");
    let mut carol = viewer(&server, "carol");
    bob.lock(&["cube"], T).expect("lock");
    assert_eq!(refused_code(carol.lock(&["cube"], T)), "NotOwner");

    let scrape = scrape(&addr);
    assert_eq!(sample(&scrape, "replication_clients", &[]), 3.0);
    assert_eq!(sample(&scrape, "replication_rooms", &[]), 1.0);
    assert_eq!(sample(&scrape, "replication_datablocks", &[]), 2.0);
    assert!(sample(&scrape, "replication_data_bytes", &[]) > 0.0);
    assert_eq!(
        sample(&scrape, "replication_room_users", &[("room", "default")]),
        3.0
    );
    assert_eq!(sample(&scrape, "replication_locks", &[]), 1.0);
    assert!(sample(&scrape, "replication_updates_total", &[]) >= 1.0);
    assert_eq!(
        sample(
            &scrape,
            "replication_refusals_total",
            &[("code", "not_owner")]
        ),
        1.0
    );
    // The publisher channel only carries clients' messages in; pings go
    // out once a second, maybe not yet.
    for channel in ["commands", "subscriber"] {
        let labels = [("channel", channel)];
        assert!(
            sample(&scrape, "replication_messages_sent_total", &labels) > 0.0,
            "{channel}"
        );
        assert!(
            sample(&scrape, "replication_sent_bytes_total", &labels) > 0.0,
            "{channel}"
        );
    }
    for channel in ["commands", "publisher", "subscriber"] {
        let labels = [("channel", channel)];
        assert!(
            sample(&scrape, "replication_messages_received_total", &labels) > 0.0,
            "{channel}"
        );
        assert!(
            sample(&scrape, "replication_received_bytes_total", &labels) > 0.0,
            "{channel}"
        );
    }
    assert_eq!(
        sample(&scrape, "replication_snapshot_streams_total", &[]),
        2.0
    );
    assert_eq!(
        observations(&scrape, "replication_snapshot_stream_seconds"),
        2.0
    );
    assert!(observations(&scrape, "replication_storage_commit_seconds") >= 1.0);
    assert_eq!(
        sample(&scrape, "replication_slow_consumer_disconnects_total", &[]),
        0.0
    );
    assert_eq!(
        sample(&scrape, "replication_heartbeat_timeouts_total", &[]),
        0.0
    );
    assert!(sample(&scrape, "process_resident_memory_bytes", &[]) > 1e6);

    let (status, headers, body) = get(&addr, "/status");
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains("application/json"), "{headers}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["rooms"][0]["name"], "default");
    assert_eq!(json["rooms"][0]["state"], "ACTIVE");
    assert_eq!(json["rooms"][0]["datablocks"], 2);
    let users: Vec<&str> = json["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(users, ["host", "bob", "carol"]);
    let locks = json["locks"].as_array().expect("locks");
    assert_eq!(locks.len(), 1, "{body}");
    assert_eq!(locks[0]["user"], "bob");
    assert_eq!(locks[0]["datablock"], "cube");
    assert!(
        locks[0]["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{body}"
    );
    assert!(json["uptime_seconds"].is_u64());

    let (status, _, _) = get(&addr, "/nothing");
    assert!(status.contains("404"), "{status}");

    // A scraper's open connection does not hold the server's exit.
    let mut idle = TcpStream::connect(&addr).expect("connect");
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    let mut server = server;
    server.signal("TERM");
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}: {}", server.stderr.text());
}

#[test]
fn heartbeat_timeouts_are_counted_and_metrics_are_off_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = start(dir.path(), &[], &[], false);
    let mut probe = admin(&plain, "probe");
    probe.server_info(T).expect("serving");
    assert!(
        !plain.stderr.text().contains("metrics listening"),
        "{}",
        plain.stderr.text()
    );
    drop(plain);

    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &["--metrics", "0", "-t", "1000"], &[], false);
    let addr = metrics_address(&server);
    // A client that stops answering the server's pings.
    let silent = admin(&server, "silent");
    server.stderr.expect_from(0, "the timeout", |l| {
        l.contains("client disconnected") && l.contains("timed out")
    });
    drop(silent);
    let scrape = scrape(&addr);
    assert_eq!(
        sample(&scrape, "replication_heartbeat_timeouts_total", &[]),
        1.0
    );
    assert_eq!(sample(&scrape, "replication_clients", &[]), 0.0);
}

// ---------------------------------------------------------------------------
// 4. Errors a person can cause: once, one line, naming what they typed
// ---------------------------------------------------------------------------

/// The binary with `args` and `env`, no inherited REPLICATION_* variable.
fn binary(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REPLICATION_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .env("XDG_DATA_HOME", fresh_data_home())
        .envs(env.iter().copied());
    cmd
}

/// The run failed with exactly one line, which contains every word and
/// says `cause` once.
fn one_line(finished: &Finished, words: &[&str], cause: &str) {
    assert!(!finished.status.success(), "{:?}", finished.status);
    assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
    for word in words {
        assert!(
            finished.stderr.contains(word),
            "{word}: {}",
            finished.stderr
        );
    }
    assert_eq!(
        finished.stderr.matches(cause).count(),
        1,
        "{}",
        finished.stderr
    );
}

#[test]
fn errors_print_once_on_one_line_naming_what_was_typed() {
    let finished = finish(binary(&["--print-config"], &[("REPLICATION_PORT", "abc")]));
    assert_eq!(finished.status.code(), Some(2));
    one_line(&finished, &["REPLICATION_PORT", "abc"], "invalid digit");
    assert!(!finished.stderr.contains("--port"), "{}", finished.stderr);

    let port = free_base_port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 temp path");
    let finished = finish(binary(
        &[
            "--bind",
            "127.0.0.1",
            "-p",
            &port,
            "--data-dir",
            data,
            "--load",
            "/no/such/scene.rsession",
        ],
        &[],
    ));
    one_line(
        &finished,
        &["/no/such/scene.rsession", "--load"],
        "No such file or directory",
    );

    // A data directory under a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let under = file.join("data");
    let under = under.to_str().expect("utf-8 temp path");
    let finished = finish(binary(
        &["--bind", "127.0.0.1", "-p", &port],
        &[("REPLICATION_DATA_DIR", under)],
    ));
    one_line(
        &finished,
        &[under, "environment REPLICATION_DATA_DIR"],
        "Not a directory",
    );

    // The metrics port is taken.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let taken = holder.local_addr().expect("address").to_string();
    let finished = finish(binary(
        &[
            "--bind",
            "127.0.0.1",
            "-p",
            &port,
            "--in-memory",
            "--metrics",
            &taken,
        ],
        &[],
    ));
    one_line(&finished, &[&taken, "--metrics"], "in use");
}

#[test]
fn save_into_a_missing_folder_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path(), &[], &[], true);
    admin(&server, "host").upload(&scene(), T).expect("upload");
    let missing = dir.path().join("no").join("such");
    let target = missing.join("x.rsession");
    let mark = server.stdout.len();
    server.console(&format!("save {}", target.display()));
    server.stdout.expect_from(mark, "the refusal", |l| {
        l.starts_with("cannot save:") && l.contains("does not exist")
    });
    assert!(!dir.path().join("no").exists(), "no folder was created");

    let mark = server.stdout.len();
    let here = dir.path().join("x.rsession");
    server.console(&format!("save {}", here.display()));
    server
        .stdout
        .expect_from(mark, "the save", |l| l.starts_with("saved 2 datablocks"));
    assert_eq!(uuids_in(&here), ["cube", "lamp"]);
}

// ---------------------------------------------------------------------------
// 5. The console on a terminal and on a pipe
// ---------------------------------------------------------------------------

/// Everything a terminal showed, as it comes (a prompt has no line end).
#[derive(Clone, Default)]
struct Screen {
    inner: std::sync::Arc<(std::sync::Mutex<String>, std::sync::Condvar)>,
}

impl Screen {
    fn collect(mut from: std::fs::File) -> Self {
        let screen = Self::default();
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with an error (EIO) once the server has exited.
            while let Ok(n @ 1..) = from.read(&mut buf) {
                let (lock, cond) = &*sink.inner;
                let mut text = lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                cond.notify_all();
            }
        });
        screen
    }

    fn text(&self) -> String {
        let (lock, _) = &*self.inner;
        lock.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until `needle` shows at or after byte `from`; returns where it
    /// ends, or None after `T`.
    fn find(&self, from: usize, needle: &str) -> Option<usize> {
        let deadline = Instant::now() + T;
        let (lock, cond) = &*self.inner;
        let mut text = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(at) = text.get(from..).and_then(|rest| rest.find(needle)) {
                return Some(from + at + needle.len());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            text = cond
                .wait_timeout(text, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn expect(&self, from: usize, needle: &str) -> usize {
        self.find(from, needle)
            .unwrap_or_else(|| panic!("{needle:?} not shown within {T:?}:\n{}", self.text()))
    }
}

/// The prompt, as rustyline draws it.
const PROMPT: &str = "\u{1b}[K> ";

/// The server on a pseudo-terminal, as in a terminal window: its stdin,
/// stdout and stderr are the terminal, `screen` is what it shows.
struct OnTerminal {
    child: std::process::Child,
    keyboard: std::fs::File,
    screen: Screen,
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OnTerminal {
    fn start(data_dir: &Path) -> Self {
        loop {
            let size = nix::pty::Winsize {
                ws_row: 40,
                ws_col: 200,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(Some(&size), None).expect("a pseudo-terminal");
            let port = free_base_port();
            let mut cmd = server_on(data_dir, port, &[]);
            let slave = std::fs::File::from(pty.slave);
            cmd.stdin(Stdio::from(slave.try_clone().expect("dup")))
                .stdout(Stdio::from(slave.try_clone().expect("dup")))
                .stderr(Stdio::from(slave))
                .env("TERM", "xterm");
            let child = cmd.spawn().expect("spawn the server");
            // The child holds the terminal's other side now (the command
            // is dropped with its copies); what it shows is read here.
            drop(cmd);
            let master = std::fs::File::from(pty.master);
            let keyboard = master.try_clone().expect("dup");
            let term = Self {
                child,
                keyboard,
                screen: Screen::collect(master),
            };
            if term.screen.find(0, "listening").is_some() {
                return term;
            }
            if term.screen.text().contains("already in use") {
                continue;
            }
            panic!("the server did not start:\n{}", term.screen.text());
        }
    }

    /// Waits for the prompt after byte `from`, then types `keys`; returns
    /// where the prompt ended.
    fn at_prompt_type(&mut self, from: usize, keys: &str) -> usize {
        let at = self.screen.expect(from, PROMPT);
        self.keyboard
            .write_all(keys.as_bytes())
            .and_then(|()| self.keyboard.flush())
            .expect("type on the terminal");
        at
    }
}

#[test]
fn ctrl_d_on_a_terminal_gets_a_hint_and_the_console_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut term = OnTerminal::start(dir.path());
    let at = term.screen.expect(0, "type 'help'");
    let at = term.at_prompt_type(at, "\u{4}");
    let at = term.screen.expect(at, "type exit to stop the server");
    let at = term.at_prompt_type(at, "status\r");
    let at = term.screen.expect(at, "room default: state WAITING");
    assert!(!term.screen.text().contains("console input closed"));

    // A question is answered on the terminal too.
    let at = term.at_prompt_type(at, "reset\r");
    let at = term.screen.expect(at, "reset room default? It is WAITING");
    let at = term.screen.expect(at, "Type yes to reset room default: ");
    term.keyboard.write_all(b"no\r").expect("answer");
    let at = term.screen.expect(at, "reset cancelled");

    term.at_prompt_type(at, "exit\r");
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(status) = term.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no exit:\n{}",
            term.screen.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}:\n{}", term.screen.text());
}

#[test]
fn end_of_input_on_a_pipe_still_means_no_console() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path(), &[], &[], true);
    drop(server.stdin.take());
    server.headless_client("carol");
}

// ---------------------------------------------------------------------------
// 6. The well-known admin password on a public address
// ---------------------------------------------------------------------------

fn warns_of_the_default_password(line: &str) -> bool {
    line.contains("WARN") && line.contains("well-known default")
}

#[test]
fn the_default_admin_password_on_a_public_address_is_warned_of() {
    let public = start_listening(false, |port| {
        binary(
            &["--bind", "0.0.0.0", "-p", &port.to_string(), "--in-memory"],
            &[],
        )
    });
    public
        .stderr
        .expect_from(0, "the warning", warns_of_the_default_password);
    drop(public);

    // Not on loopback, nor with a password of one's own.
    for args in [
        &["--bind", "127.0.0.1", "--in-memory"][..],
        &["--bind", "0.0.0.0", "--in-memory", "-pwd", "s3cret"],
    ] {
        let mut quiet = start_listening(true, |port| {
            let mut cmd = binary(args, &[]);
            cmd.args(["-p", &port.to_string()]);
            cmd
        });
        let mark = quiet.stdout.len();
        quiet.console("status");
        quiet
            .stdout
            .expect_from(mark, "the status", |l| l.starts_with("room default"));
        assert!(
            !quiet
                .stderr
                .snapshot()
                .iter()
                .any(|l| warns_of_the_default_password(l)),
            "{args:?}: {}",
            quiet.stderr.text()
        );
    }
}
