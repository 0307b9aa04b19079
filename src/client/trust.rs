//! How a client knows the server's key: given, or trusted on first use and
//! pinned per host and port in a known-servers file (`HOST:PORT KEY`, one a
//! line, as SSH's `known_hosts`), which the Python client shares.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::{HeartbeatMessage, decode_header, encode};
use crate::security::key::PublicKey;

use super::ClientError;

/// How the client decides which server key to encrypt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// No encryption, for a server that does not encrypt (the server's
    /// SERVER_KEY is not asked).
    Plain,
    /// Encrypt with this key, given by the server's admin; a server that
    /// presents another is refused.
    Key(PublicKey),
    /// Ask the server on first connection and pin its key in this
    /// known-servers file; a changed key is refused.
    FirstUse(PathBuf),
    /// Ask the server and take its answer unchecked: for probes that send
    /// no secret (the health check).
    Unchecked,
}

/// The known-servers file the Python client also uses:
/// `$REPLICATION_KNOWN_SERVERS`, else `known_servers` in the client's
/// configuration folder: `$REPLICATION_CONFIG_DIR`, else a
/// `replication-serve` folder in the system's place for settings
/// (`%APPDATA%` on Windows, `~/Library/Application Support` on macOS,
/// `$XDG_CONFIG_HOME` or `~/.config` elsewhere), as the Python client
/// looks for it.
pub fn default_known_servers() -> PathBuf {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(file) = non_empty("REPLICATION_KNOWN_SERVERS") {
        return PathBuf::from(file);
    }
    if let Some(dir) = non_empty("REPLICATION_CONFIG_DIR") {
        return PathBuf::from(dir).join("known_servers");
    }
    let home = || non_empty("HOME").map(PathBuf::from).unwrap_or_default();
    let app_data = non_empty("APPDATA").filter(|_| cfg!(windows));
    let base = if let Some(dir) = app_data {
        PathBuf::from(dir)
    } else if cfg!(target_os = "macos") {
        home().join("Library").join("Application Support")
    } else {
        non_empty("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".config"))
    };
    base.join("replication-serve").join("known_servers")
}

/// `HOST:PORT` as the file writes it (IPv6 in brackets).
pub fn server_name(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The key pinned for `name` in `file`, if any.
pub fn pinned(file: &Path, name: &str) -> Result<Option<PublicKey>, ClientError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ClientError::KnownServers(format!(
                "{}: {e}",
                file.display()
            )));
        }
    };
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next() != Some(name) {
            continue;
        }
        return words
            .next()
            .unwrap_or_default()
            .parse()
            .map(Some)
            .map_err(|e| {
                ClientError::KnownServers(format!("{} line {}: {e}", file.display(), number + 1))
            });
    }
    Ok(None)
}

/// Pins `key` for `name`, appending a line (the directory is made).
pub fn pin(file: &Path, name: &str, key: PublicKey) -> Result<(), ClientError> {
    let fail = |e: std::io::Error| ClientError::KnownServers(format!("{}: {e}", file.display()));
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut line = String::new();
    let _ = writeln!(line, "{name} {key}");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(fail)
}

/// How long to wait for SERVER_KEY's answer before asking again.
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// What the server said about its key (SERVER_KEY on the heartbeat port,
/// asked without encryption): its key, or `None` when it does not encrypt.
pub fn ask_server_key(
    context: &zmq::Context,
    host: &str,
    heartbeat_port: u16,
    timeout: Duration,
) -> Result<Option<PublicKey>, ClientError> {
    let socket = context.socket(zmq::DEALER)?;
    socket.set_linger(0)?;
    socket.connect(&format!("tcp://{host}:{heartbeat_port}"))?;
    let request = encode(&HeartbeatMessage::ServerKey {
        id: Some(1),
        encryption: None,
        public_key: None,
        fingerprint: None,
    });
    let deadline = Instant::now() + timeout;
    let mut next_ask = Instant::now();
    loop {
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(ClientError::Timeout(timeout));
        }
        if now >= next_ask {
            // Asked again every second: a request sent while the server was
            // starting, or on a connection cut before it was read, is lost,
            // and asking twice costs nothing.
            match socket.send(&request[..], zmq::DONTWAIT) {
                Ok(()) | Err(zmq::Error::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
            next_ask = now + ASK_AGAIN;
        }
        let wait = left.min(next_ask.saturating_duration_since(now));
        if socket.poll(
            zmq::POLLIN,
            i64::try_from(wait.as_millis()).unwrap_or(i64::MAX).max(1),
        )? == 0
        {
            continue;
        }
        let frames = socket.recv_multipart(0)?;
        let Some(header) = frames.first() else {
            continue;
        };
        // A plain server's heartbeat socket may send other things first.
        let Ok(HeartbeatMessage::ServerKey {
            encryption,
            public_key,
            ..
        }) = decode_header::<HeartbeatMessage>(header, 64 * 1024)
        else {
            continue;
        };
        return match (encryption.as_deref(), public_key) {
            (Some("curve"), Some(key)) => key.parse().map(Some).map_err(|e| ClientError::Refused {
                code: "invalid_message".into(),
                message: format!("the server's SERVER_KEY: {e}"),
            }),
            (Some("none"), _) => Ok(None),
            (other, _) => Err(ClientError::Refused {
                code: "invalid_message".into(),
                message: format!("the server's SERVER_KEY names no known encryption: {other:?}"),
            }),
        };
    }
}

/// The key to encrypt with (`None`: plain), after checking what the server
/// presents against what `trust` expects.
pub fn decide(
    trust: &ServerTrust,
    context: &zmq::Context,
    host: &str,
    heartbeat_port: u16,
    timeout: Duration,
) -> Result<Option<PublicKey>, ClientError> {
    let name = server_name(host, heartbeat_port.saturating_sub(3));
    match trust {
        ServerTrust::Plain => Ok(None),
        ServerTrust::Unchecked => ask_server_key(context, host, heartbeat_port, timeout),
        ServerTrust::Key(expected) => {
            match ask_server_key(context, host, heartbeat_port, timeout)? {
                Some(presented) if presented == *expected => Ok(Some(presented)),
                Some(presented) => Err(ClientError::WrongServerKey(format!(
                    "the server at {name} presents the key with fingerprint {}, not the one given (fingerprint {}): check the key with the server's admin (the server prints it at start, and its console's key shows it)",
                    presented.fingerprint(),
                    expected.fingerprint()
                ))),
                None => Err(ClientError::WrongServerKey(format!(
                    "the server at {name} says it does not encrypt, but a key was given for it (fingerprint {}): someone may be posing as the server; check with its admin",
                    expected.fingerprint()
                ))),
            }
        }
        ServerTrust::FirstUse(file) => {
            let known = pinned(file, &name)?;
            let presented = ask_server_key(context, host, heartbeat_port, timeout)?;
            match (known, presented) {
                (Some(known), Some(presented)) if known == presented => Ok(Some(known)),
                (Some(known), presented) => Err(ClientError::ChangedServerKey(
                    changed_key_message(&name, known, presented, file),
                )),
                (None, Some(presented)) => {
                    pin(file, &name, presented)?;
                    Ok(Some(presented))
                }
                (None, None) => Ok(None),
            }
        }
    }
}

/// What a client says when a pinned server presents another key (the
/// Python client says the same).
pub fn changed_key_message(
    name: &str,
    known: PublicKey,
    presented: Option<PublicKey>,
    file: &Path,
) -> String {
    let what = match presented {
        Some(key) => format!(
            "presents a different key (fingerprint {}) than the one this computer trusted on its first connection (fingerprint {})",
            key.fingerprint(),
            known.fingerprint()
        ),
        None => format!(
            "no longer encrypts, though it did on this computer's first connection (fingerprint {})",
            known.fingerprint()
        ),
    };
    format!(
        "the server at {name} {what}. Someone may be intercepting the connection, or the server's admin made a new key (a new data directory, a reinstalled server). Ask the admin for the fingerprint the server printed at start (or its console's `key`); if they match, accept the new key by deleting the line for {name} from {}, then connect again.",
        file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::key::KeyPair;

    #[test]
    fn pins_are_per_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conf/known_servers");
        let a = KeyPair::generate().unwrap().public();
        let b = KeyPair::generate().unwrap().public();
        assert_eq!(pinned(&file, "example.org:5555").unwrap(), None);
        pin(&file, "example.org:5555", a).unwrap();
        pin(&file, &server_name("::1", 6000), b).unwrap();
        assert_eq!(pinned(&file, "example.org:5555").unwrap(), Some(a));
        assert_eq!(pinned(&file, "example.org:5556").unwrap(), None);
        assert_eq!(pinned(&file, "[::1]:6000").unwrap(), Some(b));
    }

    #[test]
    fn a_damaged_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_servers");
        std::fs::write(&file, "# mine\nhost:1 nonsense\n").unwrap();
        let error = pinned(&file, "host:1").unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
    }
}
