//! A child process under test: its output collected line by line and
//! waited on with the deadline `T`, never with a sleep and a hope. Shared by
//! the tests that run the real binary (tests/cli.rs) and the scripts that
//! start it (tests/deploy.rs).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use replication_serve::client::{Client, ClientOptions};
use replication_serve::protocol::{AuthStatus, ServerMessage};

use crate::common::{T, free_base_port};

/// The lines of one output stream of a child, collected by a reader thread.
#[derive(Clone, Default)]
pub struct Lines {
    inner: Arc<(Mutex<LinesState>, Condvar)>,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    closed: bool,
}

impl Lines {
    /// Reads `stream` to its end on a thread of its own. Draining the pipe
    /// also keeps the child from blocking on a full pipe.
    pub fn collect(stream: impl Read + Send + 'static) -> Self {
        let lines = Self::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_owned();
                        sink.update(|s| s.lines.push(line));
                    }
                }
            }
            sink.update(|s| s.closed = true);
        });
        lines
    }

    fn update(&self, f: impl FnOnce(&mut LinesState)) {
        let (lock, cond) = &*self.inner;
        f(&mut lock.lock().unwrap_or_else(PoisonError::into_inner));
        cond.notify_all();
    }

    /// Everything read so far.
    pub fn snapshot(&self) -> Vec<String> {
        let (lock, _) = &*self.inner;
        lock.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .clone()
    }

    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    /// Waits for the stream to end (the child closed it, usually by exiting).
    pub fn wait_closed(&self, deadline: Instant) -> bool {
        let (lock, cond) = &*self.inner;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// The index of the first line at or after `from` that satisfies `pred`,
    /// waiting until it appears, the stream ends, or `T` passes.
    pub fn find_from(&self, from: usize, pred: impl Fn(&str) -> bool) -> Option<usize> {
        let deadline = Instant::now() + T;
        let (lock, cond) = &*self.inner;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(i) = state.lines.iter().skip(from).position(|l| pred(l)) {
                return Some(from + i);
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Like [`Self::find_from`], but panics with everything read so far.
    pub fn expect_from(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> usize {
        self.find_from(from, pred)
            .unwrap_or_else(|| panic!("no line with {what} within {T:?}; got:\n{}", self.text()))
    }

    pub fn len(&self) -> usize {
        let (lock, _) = &*self.inner;
        lock.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .len()
    }
}

/// A running server process (the binary, or a script that becomes it),
/// killed and reaped when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Writes one console line.
    pub fn console(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot write {line:?} to the console: {e}"));
    }

    /// Waits for the process to exit, at most `T`.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {T:?}; stderr:\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    pub fn client(&self, options: impl FnOnce(u16) -> ClientOptions) -> Client {
        Client::connect(options(self.port)).expect("connect")
    }

    /// For a server started without stdin: waits until it has given up its
    /// console, then authenticates `user` and makes one full round trip,
    /// proving that it still serves.
    pub fn headless_client(&self, user: &str) -> Client {
        self.stderr.expect_from(0, "the console closing", |l| {
            l.contains("console input closed")
        });
        let mut client = self.client(|p| ClientOptions::new(p, user));
        assert_eq!(client.authenticate(T).expect("auth"), AuthStatus::Lobby);
        let info = client.server_info(T).expect("server info");
        assert!(
            matches!(
                info,
                ServerMessage::ServerInfo {
                    users_online: 1,
                    ..
                }
            ),
            "{info:?}"
        );
        client
    }
}

/// What a finished run printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end with stdin at EOF (for runs that must not start a
/// server), failing if it is still running after `T`.
pub fn finish(mut cmd: Command) -> Finished {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
    let stdout = Lines::collect(child.stdout.take().expect("stdout"));
    let stderr = Lines::collect(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + T;
    let finished = stdout.wait_closed(deadline) && stderr.wait_closed(deadline);
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what} did not finish within {T:?}; stderr:\n{}",
            stderr.text()
        );
    }
    let status = child.wait().expect("wait");
    Finished {
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}

/// Starts the command `make` builds for a free base port, and returns once
/// the server has logged that it is listening. A port taken by someone else
/// between the check and the bind means a retry on another port. stdout and
/// stderr are collected; stdin is piped when `console` is set, else at EOF.
pub fn start_listening(console: bool, mut make: impl FnMut(u16) -> Command) -> Server {
    loop {
        let port = free_base_port();
        let mut cmd = make(port);
        cmd.stdin(if console {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let stdout = Lines::collect(child.stdout.take().expect("stdout"));
        let stderr = Lines::collect(child.stderr.take().expect("stderr"));
        let mut server = Server {
            stdin: child.stdin.take(),
            child,
            port,
            stdout,
            stderr,
        };
        if server.stderr.find_from(0, is_listening_line).is_some() {
            return server;
        }
        let log = server.stderr.text();
        if log.contains("already in use") {
            continue;
        }
        let status = server.child.try_wait();
        panic!("the server did not start ({status:?}); stderr:\n{log}");
    }
}

pub fn is_listening_line(line: &str) -> bool {
    line.contains("INFO") && line.contains("listening")
}

/// A data directory of its own (under Cargo's temporary directory for
/// tests) for each server a test starts, so servers running in parallel
/// never share one and nothing is written to the user's home.
pub fn fresh_data_home() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("data-home-{}-{n}", std::process::id()))
}

/// The binary on `127.0.0.1:port` with admin password `admin`, recording in
/// `data_dir`, plus `args`; no `REPLICATION_*` variable of the test run
/// leaks in, and the default data home is a fresh one.
pub fn server_on(data_dir: &std::path::Path, port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_replication-serve"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REPLICATION_") {
            cmd.env_remove(key);
        }
    }
    cmd.args([
        "--bind",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-pwd",
        "admin",
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .args(args)
    .env("XDG_DATA_HOME", fresh_data_home());
    cmd
}
