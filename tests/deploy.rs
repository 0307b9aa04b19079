//! Running the server the way admins deploy it: the Docker image's
//! entrypoint, the config file and its precedence, `--print-config` and
//! `--health-check`.
//!
//! The test machines have no Docker engine, so the entrypoint runs here
//! directly, with the environment a `docker run -e ...` would give it and
//! the binary under test on PATH under the name the image installs it as.
//! Everything is observed through the processes' output, exit status and
//! the protocol, with the deadline `T`.

mod child;
mod common;
use child::*;
use common::*;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use replication_serve::client::{ClientError, ClientOptions};
use replication_serve::config::Config;
use replication_serve::config::file::ConfigFile;
use replication_serve::protocol::{AuthStatus, ServerMessage};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_replication-serve");
const ENTRYPOINT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/entrypoint.sh");
const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/replication.toml");

/// `docker stop` waits this long before it kills.
const DOCKER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A scratch directory holding `replication-serve`, a link to the binary
/// under test, to put first on PATH, as the image has it in /usr/local/bin.
fn bin_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(BIN, dir.path().join("replication-serve")).expect("symlink");
    dir
}

/// The entrypoint with `args`, in an environment holding only PATH (the
/// binary first) and `env`: no variable of the test run leaks in.
fn entrypoint(bin: &TempDir, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut path = OsString::from(bin.path());
    if let Some(system) = std::env::var_os("PATH") {
        path.push(":");
        path.push(system);
    }
    let mut cmd = Command::new(ENTRYPOINT);
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        .env("XDG_DATA_HOME", fresh_data_home())
        .envs(env.iter().copied());
    cmd
}

/// The binary itself with `args` and `env`, without inherited
/// `REPLICATION_*` variables.
fn binary(env: &[(&str, &str)], args: &[&str]) -> Command {
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

/// Starts the entrypoint with the reference variables for a free port
/// (`port=BASE` in the case `upper` asks for) plus `env`, bound to loopback.
fn start_entrypoint(
    bin: &TempDir,
    upper: bool,
    env: &[(&str, &str)],
    args: &[&str],
    console: bool,
) -> Server {
    start_listening(console, |port| {
        let port = port.to_string();
        let name = if upper { "PORT" } else { "port" };
        let mut vars = vec![(name, port.as_str()), ("REPLICATION_BIND", "127.0.0.1")];
        vars.extend_from_slice(env);
        entrypoint(bin, &vars, args)
    })
}

/// `--print-config` output, parsed back.
fn printed_config(finished: &Finished) -> Config {
    assert!(
        finished.status.success(),
        "{:?}; stderr:\n{}",
        finished.status,
        finished.stderr
    );
    ConfigFile::parse(Path::new("printed"), &finished.stdout)
        .unwrap_or_else(|e| panic!("{e}:\n{}", finished.stdout))
        .config()
        .clone()
}

/// The line of `text` that sets `key`.
fn line_of<'a>(text: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

fn assert_failed_with(finished: &Finished, words: &[&str]) {
    assert!(!finished.status.success(), "{:?}", finished.status);
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
    for word in words {
        assert!(
            finished.stderr.contains(word),
            "{word:?} missing from:\n{}",
            finished.stderr
        );
    }
}

fn expect_refused(result: Result<AuthStatus, ClientError>, want: &str) {
    match result {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, want),
        other => panic!("expected a {want} refusal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 1. The image's environment variables
// ---------------------------------------------------------------------------

#[test]
fn reference_variables_configure_the_server() {
    let bin = bin_dir();
    let env = [
        ("port", "6000"),
        ("log_level", "DEBUG"),
        ("password", "secret"),
        ("timeout", "8000"),
        ("server_password", "friends"),
    ];
    let finished = finish(entrypoint(&bin, &env, &["--print-config"]));
    let config = printed_config(&finished);
    assert_eq!(config.port, 6000);
    assert_eq!(config.log_level.to_string(), "DEBUG");
    assert_eq!(config.timeout_ms, 8000);
    assert_eq!(config.server_password.as_deref(), Some("********"));
    assert!(!finished.stdout.contains("secret") && !finished.stdout.contains("friends"));
    // Handed over as the server's own variables, never as options.
    assert!(line_of(&finished.stdout, "port").ends_with("# environment REPLICATION_PORT"));
    assert!(
        line_of(&finished.stdout, "admin_password")
            .ends_with("# environment REPLICATION_ADMIN_PASSWORD")
    );
}

/// What `ps` shows of a process: its command line, from /proc.
fn command_line(pid: &str) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).expect("read /proc/PID/cmdline");
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn passwords_never_reach_the_command_line() {
    let bin = bin_dir();
    let server = start_entrypoint(
        &bin,
        false,
        &[
            ("password", "boss-pw-1"),
            ("server_password", "friends-pw-2"),
        ],
        &[],
        false,
    );
    // The entrypoint became the server: this is the server's own.
    let argv = command_line(&server.pid());
    assert!(
        argv.first()
            .is_some_and(|a| a.ends_with("replication-serve")),
        "{argv:?}"
    );
    for word in [
        "boss-pw-1",
        "friends-pw-2",
        "--admin-password",
        "--server-password",
    ] {
        assert!(!argv.iter().any(|a| a.contains(word)), "{word} in {argv:?}");
    }
    let mut admin = server.client(|p| ClientOptions {
        server_password: Some("friends-pw-2".into()),
        ..ClientOptions::admin(p, "alice", "boss-pw-1")
    });
    assert_eq!(admin.authenticate(T).expect("auth"), AuthStatus::Lobby);
}

#[test]
fn upper_case_variables_work_too() {
    let bin = bin_dir();
    let env = [
        ("PORT", "6000"),
        ("LOG_LEVEL", "warning"),
        ("PASSWORD", "secret"),
        ("TIMEOUT", "8000"),
        ("SERVER_PASSWORD", "friends"),
    ];
    let config = printed_config(&finish(entrypoint(&bin, &env, &["--print-config"])));
    assert_eq!(config.port, 6000);
    assert_eq!(config.log_level.to_string(), "WARNING");
    assert_eq!(config.timeout_ms, 8000);
    assert!(config.server_password.is_some());
}

#[test]
fn documented_docker_run_serves_with_the_given_password() {
    let bin = bin_dir();
    let server = start_entrypoint(
        &bin,
        false,
        &[
            ("log_level", "DEBUG"),
            ("password", "secret"),
            ("timeout", "5000"),
        ],
        &[],
        false,
    );
    let ports = format!(
        "TCP ports {}, {}, {} and {}",
        server.port,
        server.port + 1,
        server.port + 2,
        server.port + 3
    );
    server
        .stderr
        .expect_from(0, "the ports to open", |l| l.contains(&ports));

    let mut admin = server.client(|p| ClientOptions::admin(p, "alice", "secret"));
    assert_eq!(admin.authenticate(T).expect("auth"), AuthStatus::Lobby);
    let mut intruder = server.client(|p| ClientOptions::admin(p, "mallory", "admin"));
    expect_refused(intruder.authenticate(T), "WrongAdminPassword");
}

#[test]
fn upper_case_server_password_makes_the_server_private() {
    let bin = bin_dir();
    let server = start_entrypoint(
        &bin,
        true,
        &[("SERVER_PASSWORD", "friends"), ("PASSWORD", "secret")],
        &[],
        false,
    );
    let mut stranger = server.client(|p| ClientOptions::new(p, "stranger"));
    expect_refused(stranger.authenticate(T), "WrongServerPassword");
    let mut friend = server.client(|p| ClientOptions {
        server_password: Some("friends".into()),
        ..ClientOptions::admin(p, "friend", "secret")
    });
    assert_eq!(friend.authenticate(T).expect("auth"), AuthStatus::Lobby);
}

#[test]
fn a_variable_given_in_both_cases_with_different_values_is_refused() {
    let bin = bin_dir();
    let finished = finish(entrypoint(&bin, &[("port", "6000"), ("PORT", "7000")], &[]));
    assert_failed_with(&finished, &["port and PORT", "different values"]);
    assert_eq!(finished.status.code(), Some(2));

    let finished = finish(entrypoint(
        &bin,
        &[
            ("password", "first-secret"),
            ("REPLICATION_ADMIN_PASSWORD", "second-secret"),
        ],
        &[],
    ));
    assert_failed_with(&finished, &["password and REPLICATION_ADMIN_PASSWORD"]);
    assert!(!finished.stderr.contains("secret"), "{}", finished.stderr);

    let same = [("port", "6000"), ("PORT", "6000")];
    let config = printed_config(&finish(entrypoint(&bin, &same, &["--print-config"])));
    assert_eq!(config.port, 6000);
}

#[test]
fn malformed_values_are_reported_by_name() {
    let bin = bin_dir();
    let finished = finish(entrypoint(&bin, &[("timeout", "abc")], &[]));
    assert_failed_with(&finished, &["abc", "environment variable timeout"]);
    assert_eq!(finished.status.code(), Some(2));

    let finished = finish(entrypoint(&bin, &[("LOG_LEVEL", "LOUD")], &[]));
    assert_failed_with(
        &finished,
        &["LOUD", "DEBUG", "environment variable LOG_LEVEL"],
    );

    let finished = finish(entrypoint(&bin, &[("port", "65534")], &[]));
    assert_failed_with(
        &finished,
        &["65534", "base..base+3", "(set by environment port)"],
    );

    // Once, on one line, under the name that was set.
    let finished = finish(entrypoint(&bin, &[("REPLICATION_TIMEOUT", "abc")], &[]));
    assert_failed_with(
        &finished,
        &["abc", "environment variable REPLICATION_TIMEOUT"],
    );
    for finished in [
        finish(entrypoint(&bin, &[("timeout", "abc")], &[])),
        finish(entrypoint(&bin, &[("port", "65534")], &[])),
    ] {
        assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
        for option in ["--timeout", "--port"] {
            assert!(!finished.stderr.contains(option), "{}", finished.stderr);
        }
    }
}

#[test]
fn arguments_after_the_image_win_and_may_name_the_reference_program() {
    let bin = bin_dir();
    for args in [
        &["-p", "7000", "--print-config"][..],
        &["replication.serve", "-p", "7000", "--print-config"],
        &[
            "python3",
            "-m",
            "replication.server",
            "-p",
            "7000",
            "--print-config",
        ],
    ] {
        let config = printed_config(&finish(entrypoint(&bin, &[("port", "6000")], args)));
        assert_eq!(config.port, 7000, "{args:?}");
    }
}

#[test]
fn another_command_runs_instead_of_the_server() {
    let bin = bin_dir();
    let finished = finish(entrypoint(&bin, &[], &["echo", "a shell instead"]));
    assert!(finished.status.success());
    assert_eq!(finished.stdout, "a shell instead");
}

// ---------------------------------------------------------------------------
// 2. Detached, attached and stopped
// ---------------------------------------------------------------------------

#[test]
fn detached_without_stdin_keeps_serving() {
    let bin = bin_dir();
    let server = start_entrypoint(&bin, false, &[], &[], false);
    server.headless_client("carol");
}

#[test]
fn attached_stdin_is_the_admin_console() {
    let bin = bin_dir();
    let mut server = start_entrypoint(&bin, false, &[], &[], true);

    server.console("help");
    let mut at = 0;
    for command in ["help", "users", "kick", "exit"] {
        at = server
            .stdout
            .expect_from(at, &format!("the help for {command}"), |l| {
                l.trim_start().starts_with(command)
            });
    }
    let mark = server.stdout.len();
    server.console("users");
    server
        .stdout
        .expect_from(mark, "the user list", |l| l == "no users connected");

    server.console("exit");
    let status = server.wait_exit();
    assert!(
        status.success(),
        "{status:?}; stderr:\n{}",
        server.stderr.text()
    );
}

#[test]
fn docker_stop_shuts_down_cleanly_within_the_grace_period() {
    let bin = bin_dir();
    let mut server = start_entrypoint(&bin, true, &[], &[], false);
    let mut client = server.client(|p| ClientOptions::new(p, "dave"));
    assert_eq!(client.authenticate(T).expect("auth"), AuthStatus::Lobby);

    // The entrypoint replaced itself with the server, so the process Docker
    // signals is the server.
    let sent = Instant::now();
    server.signal("TERM");
    let event = client
        .wait_for(T, |e| matches!(e.message, ServerMessage::Disconnect { .. }))
        .expect("a DISCONNECT");
    assert!(
        matches!(&event.message, ServerMessage::Disconnect { reason } if reason == "server shutting down"),
        "{event:?}"
    );
    let status = server.wait_exit();
    assert!(
        status.success(),
        "{status:?}; stderr:\n{}",
        server.stderr.text()
    );
    assert!(
        sent.elapsed() < DOCKER_STOP_GRACE,
        "took {:?}",
        sent.elapsed()
    );
    server
        .stderr
        .expect_from(0, "the server's own SIGTERM line", |l| {
            l.contains("SIGTERM received")
        });
}

// ---------------------------------------------------------------------------
// 3. The health check
// ---------------------------------------------------------------------------

#[test]
fn health_check_answers_for_a_running_server() {
    let bin = bin_dir();
    let server = start_entrypoint(&bin, false, &[("password", "secret")], &[], false);
    let port = server.port.to_string();
    let finished = finish(binary(&[], &["--health-check", "-p", &port]));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(finished.stderr.is_empty(), "{}", finished.stderr);
    assert_eq!(finished.stdout.lines().count(), 1, "{}", finished.stdout);
    assert!(finished.stdout.contains("serving"), "{}", finished.stdout);
    assert!(finished.stdout.contains("WAITING"), "{}", finished.stdout);

    let finished = finish(binary(
        &[],
        &["--health-check", "--host", "localhost", "-p", &port],
    ));
    assert!(finished.status.success(), "{}", finished.stderr);
}

#[test]
fn health_check_fails_when_nothing_listens() {
    let port = free_base_port().to_string();
    let started = Instant::now();
    let finished = finish(binary(&[], &["--health-check", "-p", &port]));
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
    assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
    assert!(
        finished.stderr.contains("not serving") && finished.stderr.contains(&port),
        "{}",
        finished.stderr
    );
    assert!(started.elapsed() < T);
}

#[test]
fn image_health_check_finds_the_port_given_as_an_argument() {
    let bin = bin_dir();
    let state = tempfile::tempdir().expect("tempdir");
    let file = state.path().join("health");
    let file = file.to_str().expect("utf-8 temp path");
    // The environment says one port, the container's arguments another:
    // the server listens on the argument's, and so must the check look.
    let elsewhere = free_base_port().to_string();
    let server = start_listening(false, |port| {
        let port = port.to_string();
        entrypoint(
            &bin,
            &[
                ("port", &elsewhere),
                ("HEALTH_CHECK_FILE", file),
                ("REPLICATION_BIND", "127.0.0.1"),
            ],
            &["-p", &port],
        )
    });
    let env = [("port", elsewhere.as_str()), ("HEALTH_CHECK_FILE", file)];
    let finished = finish(entrypoint(&bin, &env, &["--health-check"]));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished.stdout.contains(&format!("ports {}-", server.port)),
        "{}",
        finished.stdout
    );
}

// ---------------------------------------------------------------------------
// 4. The config file
// ---------------------------------------------------------------------------

fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("replication.toml");
    std::fs::write(&path, text).expect("write the config file");
    path
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        &dir,
        "port = 6000\ntimeout_ms = 8000\nlog_level = \"ERROR\"\n",
    );
    let path = path.to_str().expect("utf-8 temp path");

    let from_file = finish(binary(&[], &["--config", path, "--print-config"]));
    let config = printed_config(&from_file);
    assert_eq!((config.port, config.timeout_ms), (6000, 8000));
    assert!(line_of(&from_file.stdout, "port").ends_with(&format!("# config file {path}")));

    let env = [("REPLICATION_PORT", "7000"), ("REPLICATION_CONFIG", path)];
    let from_env = finish(binary(&env, &["--print-config"]));
    let config = printed_config(&from_env);
    assert_eq!((config.port, config.timeout_ms), (7000, 8000));
    assert!(line_of(&from_env.stdout, "port").ends_with("# environment REPLICATION_PORT"));

    let from_flag = finish(binary(&env, &["-p", "9000", "--print-config"]));
    let config = printed_config(&from_flag);
    assert_eq!((config.port, config.timeout_ms), (9000, 8000));
    assert_eq!(config.log_level.to_string(), "ERROR");
    assert!(line_of(&from_flag.stdout, "port").ends_with("# command line --port"));
}

#[test]
fn heartbeat_follows_a_timeout_from_any_source() {
    let config = printed_config(&finish(binary(
        &[("REPLICATION_TIMEOUT", "400")],
        &["--print-config"],
    )));
    assert_eq!(
        (config.timeout_ms, config.heartbeat_interval_ms),
        (400, 100)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(&dir, "heartbeat_interval_ms = 250\n");
    let path = path.to_str().expect("utf-8 temp path");
    let config = printed_config(&finish(binary(
        &[("REPLICATION_TIMEOUT", "400")],
        &["--config", path, "--print-config"],
    )));
    assert_eq!(
        (config.timeout_ms, config.heartbeat_interval_ms),
        (400, 250)
    );
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, words) in [
        ("prot = 5555\n", &["unknown key prot", "line 1"][..]),
        (
            "[limits]\nmax_user = 4\n",
            &["unknown key limits.max_user", "line 2"],
        ),
        ("port = \"high\"\n", &["port:", "line 1"]),
        (
            "[limits]\nchunk_bytes = -1\n",
            &["limits.chunk_bytes:", "line 2"],
        ),
        ("timeout_ms = 50\n", &["invalid timeout_ms", "50 ms"]),
    ] {
        let path = write_config(&dir, text);
        let path = path.to_str().expect("utf-8 temp path");
        let finished = finish(binary(&[], &["--config", path]));
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{text:?}: {}",
            finished.stderr
        );
        assert_failed_with(&finished, words);
        assert!(finished.stderr.contains(path), "{}", finished.stderr);
        assert_eq!(finished.stderr.lines().count(), 1, "{}", finished.stderr);
    }
}

#[test]
fn print_config_masks_passwords_and_binds_nothing() {
    let port = free_base_port();
    let holder = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the port");
    let port_arg = port.to_string();
    let finished = finish(binary(
        &[("REPLICATION_ADMIN_PASSWORD", "hunter2")],
        &[
            "-p",
            &port_arg,
            "-spwd",
            "letmein",
            "--bind",
            "127.0.0.1",
            "--print-config",
        ],
    ));
    drop(holder);
    let config = printed_config(&finished);
    assert!(!finished.stdout.contains("hunter2"), "{}", finished.stdout);
    assert!(!finished.stdout.contains("letmein"), "{}", finished.stdout);
    assert_eq!(config.admin_password, "********");
    assert!(
        line_of(&finished.stdout, "admin_password")
            .ends_with("# environment REPLICATION_ADMIN_PASSWORD")
    );

    let finished = finish(binary(&[], &["--print-config"]));
    assert!(finished.stdout.contains("# server_password is not set"));
    assert!(!finished.stdout.contains("\nserver_password ="));
}

// ---------------------------------------------------------------------------
// 5. The shipped config file matches the code
// ---------------------------------------------------------------------------

/// The shipped file with every `# key = value` line uncommented: the
/// documented defaults as the server would read them.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_config_changes_nothing_and_documents_the_true_defaults() {
    let text = std::fs::read_to_string(SHIPPED_CONFIG).expect("read config/replication.toml");
    let path = Path::new(SHIPPED_CONFIG);

    let as_shipped = ConfigFile::parse(path, &text).expect("the shipped file parses");
    assert_eq!(as_shipped.config(), &Config::default());

    let documented = ConfigFile::parse(path, &uncommented(&text)).expect("uncommented parses");
    assert_eq!(documented.config(), &Config::default());
}

#[test]
fn shipped_config_lists_every_option() {
    let text = std::fs::read_to_string(SHIPPED_CONFIG).expect("read config/replication.toml");
    // Every field, optional ones included, as the struct serializes them.
    let full = Config {
        server_password: Some(String::new()),
        log_file: Some(PathBuf::new()),
        data_dir: Some(PathBuf::new()),
        load: Some(PathBuf::new()),
        backup_dir: Some(PathBuf::new()),
        metrics: "9100".parse().ok(),
        ..Config::default()
    };
    let table = toml::Table::try_from(&full).expect("Config serializes");
    let mut keys = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(inner) => keys.extend(inner.keys().cloned()),
            _ => keys.push(key.clone()),
        }
    }
    assert!(keys.len() > 15, "{keys:?}");
    for key in keys {
        assert!(
            text.lines()
                .any(|l| l.starts_with('#') && l.contains(&format!("{key} = "))),
            "config/replication.toml does not document {key}"
        );
    }
    // And the shipped file works as the server's --config.
    let finished = finish(binary(&[], &["--config", SHIPPED_CONFIG, "--print-config"]));
    let masked = Config {
        admin_password: "********".into(),
        ..Config::default()
    };
    assert_eq!(printed_config(&finished), masked);
}

// ---------------------------------------------------------------------------
// 6. The start-up scripts answer --help without building or running anything
// ---------------------------------------------------------------------------

#[test]
fn scripts_explain_themselves() {
    for (script, words) in [
        ("scripts/start-server.sh", &["Usage", "-pwd", "port="][..]),
        (
            "scripts/run-dockerfile.sh",
            &["Usage", "--password", "docker"],
        ),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let mut cmd = Command::new(&path);
        cmd.arg("--help");
        let finished = finish(cmd);
        assert!(finished.status.success(), "{script}: {}", finished.stderr);
        for word in words {
            assert!(finished.stdout.contains(word), "{script} lacks {word}");
        }
    }
}

/// A stand-in `docker` in `dir` that logs its arguments to `docker.log`
/// (and, for `run`, the passwords it finds in its environment); returns
/// the PATH to run with it first.
fn fake_docker(dir: &Path) -> OsString {
    let log = dir.join("docker.log");
    let fake = dir.join("docker");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"$*\" >> '{log}'\n\
             if [ \"$1\" = run ]; then printf 'env password=%s server_password=%s\\n' \"$password\" \"$server_password\" >> '{log}'; fi\n\
             if [ \"$1\" = container ]; then exit 1; fi\n\
             exit 0\n",
            log = log.display()
        ),
    )
    .expect("write the stand-in docker");
    let mut permissions = std::fs::metadata(&fake).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&fake, permissions).expect("chmod");
    let mut path = OsString::from(dir);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

/// run-dockerfile.sh against a stand-in `docker` that records what it is
/// asked: the image is built from the repository, and run with the four
/// ports published, the documented variables, the data volume, and the
/// passwords in docker's environment rather than on its command line.
#[test]
fn run_dockerfile_builds_and_runs_the_documented_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("docker.log");
    let path = fake_docker(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-dockerfile.sh");
    let mut cmd = Command::new(script);
    cmd.args([
        "-p", "6000", "-pwd", "boss", "-spwd", "friends", "-l", "DEBUG", "-d",
    ])
    .env("PATH", path);
    let finished = finish(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(finished.stdout.contains("docker attach replication-serve"));

    let calls = std::fs::read_to_string(&log).expect("the stand-in docker was called");
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        calls.contains(&format!("build -t replication-serve {root}\n")),
        "{calls}"
    );
    let run = calls
        .lines()
        .find(|l| l.starts_with("run "))
        .unwrap_or_else(|| panic!("no docker run in:\n{calls}"));
    for part in [
        "-p 6000-6003:6000-6003",
        "-e port=6000",
        "-e timeout=5000",
        "-e log_level=DEBUG",
        "-v replication-data:/data",
        "-e password ",
        "-e server_password ",
        "-d -i -t",
    ] {
        assert!(run.contains(part), "{part:?} missing from: {run}");
    }
    assert!(run.ends_with(" replication-serve"), "{run}");
    assert!(!run.contains("boss") && !run.contains("friends"), "{run}");
    assert!(
        calls.contains("env password=boss server_password=friends\n"),
        "{calls}"
    );
}

/// Every value is checked before the build (which takes minutes): docker
/// is never called for a mistake.
#[test]
fn run_dockerfile_checks_its_values_before_building() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-dockerfile.sh");
    for (args, words) in [
        (&["-t", "abc"][..], &["--timeout abc", "milliseconds"][..]),
        (&["-t", "50"], &["--timeout 50", "at least 100"]),
        (&["-l", "LOUD"], &["--log-level LOUD", "DEBUG"]),
        (&["-p", "70000"], &["--port 70000"]),
        (&["--name", "my server"], &["--name my server"]),
        (&["--image", "Bad:Name!"], &["--image Bad:Name!"]),
        (&["--fresh", "-d"], &["--fresh with --detach", "reset"]),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fake_docker(dir.path());
        let mut cmd = Command::new(&script);
        cmd.args(args).env("PATH", path);
        let finished = finish(cmd);
        assert_eq!(
            finished.status.code(),
            Some(2),
            "{args:?}: {}",
            finished.stderr
        );
        assert_eq!(
            finished.stderr.lines().count(),
            1,
            "{args:?}: {}",
            finished.stderr
        );
        for word in words {
            assert!(
                finished.stderr.contains(word),
                "{args:?}: {}",
                finished.stderr
            );
        }
        assert!(
            !dir.path().join("docker.log").exists(),
            "{args:?}: docker was called"
        );
    }

    // --fresh in the foreground asks the server to start fresh.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fake_docker(dir.path());
    let mut cmd = Command::new(&script);
    cmd.args(["--fresh", "--no-build"]).env("PATH", path);
    let finished = finish(cmd);
    assert!(finished.status.success(), "{}", finished.stderr);
    let calls = std::fs::read_to_string(dir.path().join("docker.log")).expect("docker was called");
    let run = calls
        .lines()
        .find(|l| l.starts_with("run "))
        .expect("a docker run");
    assert!(
        run.contains("-e REPLICATION_FRESH=1") && run.contains("--rm"),
        "{run}"
    );
}
