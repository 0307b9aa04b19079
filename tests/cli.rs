//! The real binary as a child process: command line, start-up errors, the
//! console on a pipe, and shutting down on `exit`, SIGTERM and SIGINT.
//!
//! Readiness is never guessed with a sleep: a server is up once it has
//! logged its "listening" line on stderr, and every later step waits for an
//! observable effect (a line on stdout or stderr, an answer to a client, the
//! process's exit) with the long deadline `T`.

mod child;
mod common;
use child::*;
use common::*;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use replication_serve::client::{Client, ClientError, ClientOptions, Event};
use replication_serve::protocol::{AuthStatus, ServerMessage};

const BIN: &str = env!("CARGO_BIN_EXE_replication-serve");

/// The command for the binary, with no `REPLICATION_*` variables inherited
/// from the environment of the tests.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REPLICATION_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("XDG_DATA_HOME", fresh_data_home());
    cmd
}

/// Runs the binary to its end (for arguments that must not start a server).
fn run(args: &[&str]) -> Finished {
    finish(command(args))
}

/// How to start a server.
#[derive(Default)]
struct Start<'a> {
    args: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
    /// Pipe stdin for console commands; otherwise stdin is /dev/null.
    console: bool,
}

/// Starts the binary with `--bind 127.0.0.1 -p BASE` and `start.args` on a
/// free base port, and returns once it has logged that it is listening.
fn start(start: Start<'_>) -> Server {
    start_listening(start.console, |port| {
        let port_arg = port.to_string();
        let mut cmd = command(&["--bind", "127.0.0.1", "-p", &port_arg]);
        cmd.args(start.args).envs(start.env.iter().copied());
        cmd
    })
}

fn expect_refused(result: Result<AuthStatus, ClientError>, want: &str) -> String {
    match result {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, want, "{message}");
            message
        }
        other => panic!("expected a {want} refusal, got {other:?}"),
    }
}

fn is_disconnect(event: &Event) -> bool {
    matches!(event.message, ServerMessage::Disconnect { .. })
}

fn disconnect_reason(event: Event) -> String {
    match event.message {
        ServerMessage::Disconnect { reason } => reason,
        other => panic!("not a DISCONNECT: {other:?}"),
    }
}

/// Waits until `path` exists and contains `needle` (the file half of the log
/// is written just after the stderr half).
fn wait_file_contains(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} has no {needle:?} within {T:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// 1. The reference command line, passwords and the environment
// ---------------------------------------------------------------------------

#[test]
fn reference_command_line_starts_and_checks_the_admin_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let log_arg = log.to_str().expect("utf-8 temp path");
    let server = start(Start {
        args: &["-pwd", "secret", "-t", "5000", "-l", "INFO", "-lf", log_arg],
        ..Start::default()
    });

    let mut admin = server.client(|p| ClientOptions::admin(p, "alice", "secret"));
    assert_eq!(admin.authenticate(T).expect("auth"), AuthStatus::Lobby);
    let info = admin.server_info(T).expect("server info");
    assert!(matches!(info, ServerMessage::ServerInfo { .. }), "{info:?}");

    let mut intruder = server.client(|p| ClientOptions::admin(p, "mallory", "admin"));
    expect_refused(intruder.authenticate(T), "WrongAdminPassword");

    let written = wait_file_contains(&log, "listening");
    assert!(
        written
            .lines()
            .any(|l| l.contains("listening") && l.contains(&server.port.to_string())),
        "{written}"
    );
    assert!(!written.contains('\u{1b}'), "no colours in the file");
}

#[test]
fn apwd_sets_the_admin_password() {
    let server = start(Start {
        args: &["-apwd", "boss"],
        ..Start::default()
    });
    let mut admin = server.client(|p| ClientOptions::admin(p, "alice", "boss"));
    assert_eq!(admin.authenticate(T).expect("auth"), AuthStatus::Lobby);
    let mut other = server.client(|p| ClientOptions::admin(p, "eve", "admin"));
    expect_refused(other.authenticate(T), "WrongAdminPassword");
}

#[test]
fn spwd_makes_the_server_private() {
    let server = start(Start {
        args: &["-spwd", "s3"],
        ..Start::default()
    });
    let mut stranger = server.client(|p| ClientOptions::new(p, "stranger"));
    expect_refused(stranger.authenticate(T), "WrongServerPassword");

    let mut friend = server.client(|p| ClientOptions {
        server_password: Some("s3".into()),
        ..ClientOptions::new(p, "friend")
    });
    assert_eq!(friend.authenticate(T).expect("auth"), AuthStatus::Lobby);
}

#[test]
fn admin_password_from_the_environment() {
    let server = start(Start {
        env: &[("REPLICATION_ADMIN_PASSWORD", "envpw")],
        ..Start::default()
    });
    let mut admin = server.client(|p| ClientOptions::admin(p, "alice", "envpw"));
    assert_eq!(admin.authenticate(T).expect("auth"), AuthStatus::Lobby);
    let mut default = server.client(|p| ClientOptions::admin(p, "eve", "admin"));
    expect_refused(default.authenticate(T), "WrongAdminPassword");
}

// ---------------------------------------------------------------------------
// 2. Start-up errors, --help and --version
// ---------------------------------------------------------------------------

/// Runs the server on a base port whose subscriber port (base + 1) is held
/// by a plain TCP listener; returns the blocked port and the finished run.
fn run_with_subscriber_port_taken() -> (u16, Finished) {
    loop {
        let base = free_base_port();
        let Ok(_holder) = std::net::TcpListener::bind(("127.0.0.1", base + 1)) else {
            continue;
        };
        let port_arg = base.to_string();
        let finished = run(&["--bind", "127.0.0.1", "-p", &port_arg]);
        // Another process may have taken base itself meanwhile: only a
        // failure on the port we hold is the case under test.
        let taken = format!("port {} ", base + 1);
        if finished.stderr.contains("already in use") && !finished.stderr.contains(&taken) {
            continue;
        }
        return (base + 1, finished);
    }
}

#[test]
fn port_in_use_fails_with_a_clear_message() {
    let (port, finished) = run_with_subscriber_port_taken();
    assert!(!finished.status.success(), "{:?}", finished.status);
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
    let in_use: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("already in use"))
        .collect();
    assert!(!in_use.is_empty(), "{}", finished.stderr);
    for line in &in_use {
        assert!(line.contains(&format!("port {port} ")), "{line}");
        assert!(line.contains("subscriber"), "{line}");
        assert!(line.contains("-p"), "the hint names the option: {line}");
    }
    assert!(
        !finished.stderr.contains("listening"),
        "{}",
        finished.stderr
    );
}

#[test]
fn port_in_use_is_reported_once() {
    let (port, finished) = run_with_subscriber_port_taken();
    let in_use: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|l| l.contains("already in use"))
        .collect();
    assert_eq!(in_use.len(), 1, "{}", finished.stderr);
    assert!(in_use[0].contains(&port.to_string()), "{}", finished.stderr);
}

#[test]
fn port_without_room_for_four_channels_is_refused() {
    let finished = run(&["--bind", "127.0.0.1", "-p", "65534"]);
    assert!(!finished.status.success(), "{:?}", finished.status);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
    assert!(finished.stderr.contains("65534"), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("1..=65535") && finished.stderr.contains("base..base+3"),
        "{}",
        finished.stderr
    );
    assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
}

#[test]
fn unknown_log_level_names_it_and_the_valid_ones() {
    let finished = run(&["--bind", "127.0.0.1", "-l", "LOUD"]);
    assert!(!finished.status.success(), "{:?}", finished.status);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
    for word in ["LOUD", "ERROR", "WARNING", "INFO", "DEBUG"] {
        assert!(
            finished.stderr.contains(word),
            "{word}: {}",
            finished.stderr
        );
    }
}

#[test]
fn help_goes_to_stdout_and_succeeds() {
    for flag in ["--help", "-h"] {
        let finished = run(&[flag]);
        assert!(finished.status.success(), "{flag}: {:?}", finished.status);
        assert!(finished.stderr.is_empty(), "{flag}: {}", finished.stderr);
        for word in ["Usage", "--port", "--log-level", "-pwd", "-spwd", "-lf"] {
            assert!(
                finished.stdout.contains(word),
                "{flag} lacks {word}: {}",
                finished.stdout
            );
        }
    }
}

#[test]
fn version_goes_to_stdout_and_succeeds() {
    for flag in ["--version", "-V"] {
        let finished = run(&[flag]);
        assert!(finished.status.success(), "{flag}: {:?}", finished.status);
        assert!(finished.stderr.is_empty(), "{flag}: {}", finished.stderr);
        assert_eq!(
            finished.stdout.trim(),
            format!("replication-serve {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

// ---------------------------------------------------------------------------
// 3. The console on a pipe
// ---------------------------------------------------------------------------

#[test]
fn console_on_a_pipe() {
    let mut server = start(Start {
        console: true,
        ..Start::default()
    });

    server.console("help");
    let mut at = 0;
    for command in ["help", "users", "kick", "status", "exit"] {
        at = server
            .stdout
            .expect_from(at, &format!("the help for {command}"), |l| {
                l.trim_start().starts_with(command)
            });
    }

    let mark = server.stdout.len();
    server.console("status");
    server.stdout.expect_from(mark, "the status", |l| {
        l.starts_with("room default: state WAITING,")
    });

    let mut bob = server.client(|p| ClientOptions::new(p, "bob"));
    assert_eq!(bob.authenticate(T).expect("bob auth"), AuthStatus::Lobby);
    let mark = server.stdout.len();
    server.console("users");
    let line = server
        .stdout
        .expect_from(mark, "bob in the user list", |l| {
            l.split_whitespace().take(2).eq(["default", "bob"])
        });
    let row = &server.stdout.snapshot()[line];
    assert!(row.contains("user"), "{row}");

    let mark = server.stdout.len();
    server.console("kick bob");
    server
        .stdout
        .expect_from(mark, "the kick confirmation", |l| {
            l == "kicked bob from room default"
        });
    let event = bob
        .wait_for(T, is_disconnect)
        .expect("bob is told he was kicked");
    let reason = disconnect_reason(event);
    assert!(reason.contains("kicked"), "{reason}");

    let mark = server.stdout.len();
    server.console("users");
    server
        .stdout
        .expect_from(mark, "an empty user list", |l| l == "no users connected");

    let mark = server.stdout.len();
    server.console("bogus");
    server
        .stdout
        .expect_from(mark, "an unknown-command hint", |l| {
            l.contains("unknown command 'bogus'") && l.contains("help")
        });

    server.console("exit");
    let status = server.wait_exit();
    assert!(
        status.success(),
        "{status:?}; stderr:\n{}",
        server.stderr.text()
    );
    server
        .stderr
        .expect_from(0, "the stop line", |l| l.contains("server stopped"));
}

// ---------------------------------------------------------------------------
// 4. and 5. Headless (stdin at EOF) and signals
// ---------------------------------------------------------------------------

/// A headless server (stdin is /dev/null) that has given up its console,
/// with an authenticated client that has had a full round trip.
fn headless_with_client() -> (Server, Client) {
    let server = start(Start::default());
    let client = server.headless_client("carol");
    (server, client)
}

/// Signals the server and checks it disconnects `client` and exits with 0.
fn stops_cleanly_on(signal: &str, log_name: &str) {
    let (mut server, mut client) = headless_with_client();
    let sent = Instant::now();
    server.signal(signal);
    let event = client
        .wait_for(T, is_disconnect)
        .unwrap_or_else(|e| panic!("no DISCONNECT after {signal}: {e}"));
    assert_eq!(disconnect_reason(event), "server shutting down");
    let status = server.wait_exit();
    assert!(
        status.success(),
        "{signal}: {status:?}; stderr:\n{}",
        server.stderr.text()
    );
    assert!(
        sent.elapsed() < T,
        "{signal}: took {:?} to stop",
        sent.elapsed()
    );
    server.stderr.expect_from(0, "the signal log line", |l| {
        l.contains(&format!("{log_name} received"))
    });
}

#[test]
fn headless_server_keeps_serving_and_stops_on_sigterm() {
    stops_cleanly_on("TERM", "SIGTERM");
}

#[test]
fn sigint_also_stops_cleanly() {
    stops_cleanly_on("INT", "SIGINT");
}

/// A supervisor that waits for the "listening" line and then stops the
/// server (`docker stop` soon after start, a script's readiness check) must
/// get a clean shutdown, not death by the signal's default action.
#[test]
fn sigterm_right_after_the_listening_line_stops_cleanly() {
    for _ in 0..20 {
        let mut server = start(Start::default());
        server.signal("TERM");
        let status = server.wait_exit();
        assert!(
            status.success(),
            "{status:?}; stderr:\n{}",
            server.stderr.text()
        );
    }
}
