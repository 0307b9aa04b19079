//! The open-file limit, under `ulimit -n` in a subprocess: the server raises
//! its soft limit to what its limits need, refuses to start when the hard
//! limit is too low, and a host that opens connections by the thousand
//! without logging in neither uses up its descriptors nor keeps others out.

mod child;
mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use child::{finish, fresh_data_home, server_on, start_listening};
use common::T;
use replication_serve::client::{Client, ClientOptions};
use replication_serve::config::Limits;
use replication_serve::descriptors;
use replication_serve::protocol::AuthStatus;

/// The server binary with `args`, started by a shell that first sets the
/// open-file limits with `ulimit` (`soft` then `hard`, or both).
fn under_ulimit(ulimit: &str, data: &Path, port: u16, args: &[&str]) -> Command {
    let server = server_on(data, port, args);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
        .arg(server.get_program())
        .args(server.get_args())
        .env("XDG_DATA_HOME", fresh_data_home());
    for (key, value) in server.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd
}

/// `Max open files` of a process: (soft, hard).
fn open_files(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn the_soft_limit_is_raised_to_what_the_limits_need() {
    let data = tempfile::tempdir().expect("data dir");
    let server = start_listening(false, |port| {
        under_ulimit("-S -n 1024", data.path(), port, &[])
    });
    let needed = descriptors::needed(&Limits::default());
    assert!(needed > 1024, "the defaults need more than 1024: {needed}");
    let (soft, _) = open_files(&server.pid());
    assert!(soft >= needed, "soft limit {soft}, needed {needed}");
    server.stderr.expect_from(0, "the raise in the log", |l| {
        l.contains("raised the open-file limit")
    });
}

#[test]
fn a_hard_limit_below_the_need_stops_the_start_with_what_to_change() {
    let data = tempfile::tempdir().expect("data dir");
    let run = finish(under_ulimit(
        "-n 512",
        data.path(),
        common::free_base_port(),
        &[],
    ));
    assert!(!run.status.success(), "it started: {}", run.stderr);
    for part in [
        "open files",
        "the hard limit of this process is 512",
        "max_users_total",
    ] {
        assert!(run.stderr.contains(part), "no {part:?} in:\n{}", run.stderr);
    }
}

/// CPU time (user + system) a process has used.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted from the state at 3.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// 1,100 idle connections from one host against a server whose limit is
/// just what its limits need: the server shuts down those beyond the cap
/// at once, its I/O thread does not spin, and a user on another host still
/// logs in. (Before, the flood used up the descriptors, libzmq's I/O
/// thread spun on the listener, and nobody could log in.)
#[test]
fn a_flood_of_idle_connections_is_capped_and_others_still_log_in() {
    let data = tempfile::tempdir().expect("data dir");
    let config = data.path().join("small.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_users_total = 8\nmax_users = 8\nmax_rooms = 2\n",
    )
    .expect("config");
    let limits = Limits {
        max_users_total: 8,
        max_users: 8,
        max_rooms: 2,
        ..Limits::default()
    };
    let needed = descriptors::needed(&limits);
    let config_arg = config.to_string_lossy().into_owned();
    let server = start_listening(false, |port| {
        under_ulimit(
            &format!("-n {needed}"),
            data.path(),
            port,
            &["--config", &config_arg],
        )
    });
    let mut flood = Vec::new();
    for _ in 0..1100 {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], server.port));
        if let Ok(stream) = TcpStream::connect_timeout(&address, Duration::from_millis(500)) {
            flood.push(stream);
        }
    }
    // A user on another host (127.0.0.2: libzmq's "source;destination"
    // form) still gets in and is served.
    let mut options = ClientOptions::new(server.port, "user");
    options.host = "127.0.0.2:0;127.0.0.1".into();
    let mut user = Client::connect(options).expect("connect");
    assert_eq!(user.authenticate(T).expect("auth"), AuthStatus::Lobby);
    // The server closed the connections beyond the cap.
    let deadline = Instant::now() + T;
    let cap = limits.max_unauthenticated_per_address + 4;
    loop {
        let mut open = 0;
        for stream in &mut flood {
            stream.set_nonblocking(true).expect("nonblocking");
            let mut byte = [0u8; 64];
            match stream.read(&mut byte) {
                Ok(0) => {}
                Ok(_) => open += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                Err(_) => {}
            }
        }
        if open <= cap {
            break;
        }
        assert!(Instant::now() < deadline, "{open} of the flood still open");
        user.poll_once(50).expect("poll");
    }
    // Nothing spins: over two seconds the server uses well under a core.
    let before = cpu_time(&server.pid());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        user.poll_once(50).expect("poll");
    }
    let used = cpu_time(&server.pid()) - before;
    assert!(
        used < started.elapsed() / 2,
        "the server used {used:?} of CPU in {:?}",
        started.elapsed()
    );
    user.server_info(T).expect("still served");
}
