//! Server configuration: one struct with defaults, validated before the server
//! binds anything.
//!
//! [`Config::default`] is the only place defaults are written down. A config
//! file ([`file`]) deserializes into the same struct, which is why it derives
//! `Deserialize` with `deny_unknown_fields`: a key the struct does not have
//! is a mistake to report, not to ignore. The command line and the
//! environment (see [`crate::cli`]) are laid over the file's values, and
//! [`render`] prints the result for `--print-config`.

pub mod file;
pub mod render;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default base port; the four channels use base..base+3.
pub const DEFAULT_PORT: u16 = 5555;
/// Default admin password, as in the reference servers' documentation.
pub const DEFAULT_ADMIN_PASSWORD: &str = "admin";
/// Default heartbeat timeout in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// Everything the server needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the four sockets bind to.
    pub bind: IpAddr,
    /// Base port: commands on `port`, subscriber on `port + 1`, publisher on
    /// `port + 2`, heartbeat on `port + 3`.
    pub port: u16,
    /// Password a client must give to authenticate as ADMIN.
    pub admin_password: String,
    /// Password every client must give; `None` makes the server public.
    pub server_password: Option<String>,
    /// A client silent for longer than this is disconnected (milliseconds).
    pub timeout_ms: u64,
    /// How often the server pings each client (milliseconds).
    pub heartbeat_interval_ms: u64,
    /// Verbosity of the log.
    pub log_level: LogLevel,
    /// Also append the log to this file.
    pub log_file: Option<PathBuf>,
    /// Where the session is recorded; `None` for [`default_data_dir`].
    pub data_dir: Option<PathBuf>,
    /// Keep the session in memory only: nothing is recorded or autosaved,
    /// and a restart starts an empty session.
    pub in_memory: bool,
    /// How far each change is flushed before it is forwarded.
    pub durability: Durability,
    /// Start from this session file, replacing the recorded session (which
    /// is first saved to the backup directory).
    pub load: Option<PathBuf>,
    /// Save the session to the backup directory this often, when it
    /// changed; zero turns autosave off.
    pub autosave: Interval,
    /// How many autosaved files to keep; older ones are deleted.
    pub autosave_keep: usize,
    /// Where `save` and autosave write; `None` for `backups` in the data
    /// directory.
    pub backup_dir: Option<PathBuf>,
    /// Any user may create a room (otherwise only admins).
    pub open_rooms: bool,
    /// Rooms stay when their last user leaves (otherwise a room is closed
    /// and its data removed then, unless it is kept open).
    pub keep_rooms: bool,
    /// Start with empty rooms: every recorded scene is first saved to the
    /// backup directory. Acts at every start it is given.
    pub fresh: bool,
    /// Where the HTTP listener for `/metrics` and `/status` listens; `None`
    /// turns it off.
    pub metrics: Option<MetricsAddress>,
    /// Whether the four ports use CURVE (see [`Config::encrypts`]).
    pub encryption: Encryption,
    /// The server's key file; `None` for `server.key` in the data
    /// directory, made on first start.
    pub server_key: Option<PathBuf>,
    /// Admit only the client keys listed in this file (one per line with a
    /// comment); `None` admits any client key.
    pub authorized_keys: Option<PathBuf>,
    /// Resource limits that protect the server from clients.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: DEFAULT_PORT,
            admin_password: DEFAULT_ADMIN_PASSWORD.to_owned(),
            server_password: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            heartbeat_interval_ms: 1000,
            log_level: LogLevel::Info,
            log_file: None,
            data_dir: None,
            in_memory: false,
            durability: Durability::Normal,
            load: None,
            autosave: Interval(Duration::from_secs(15 * 60)),
            autosave_keep: 8,
            backup_dir: None,
            open_rooms: false,
            keep_rooms: false,
            fresh: false,
            metrics: None,
            encryption: Encryption::On,
            server_key: None,
            authorized_keys: None,
            limits: Limits::default(),
        }
    }
}

/// Bounds on what clients may make the server hold or send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest payload carried in one message; larger payloads travel in
    /// chunks of at most this many bytes.
    pub chunk_bytes: usize,
    /// Largest header frame accepted (checked before decoding).
    pub max_header_bytes: usize,
    /// Largest encoded datablock (after reassembling its chunks).
    pub max_datablock_bytes: usize,
    /// Most bytes of unfinished chunked transfers one client may hold.
    pub max_transfer_bytes_per_client: usize,
    /// Most bytes of unfinished chunked transfers all clients together may
    /// hold, so that memory stays bounded however many clients upload.
    pub max_transfer_bytes_total: usize,
    /// Most messages queued for one client before it is disconnected as too slow.
    pub outbox_max_messages: usize,
    /// Most bytes queued for one client before it is disconnected as too slow.
    pub outbox_max_bytes: usize,
    /// Most bytes of one user's presence metadata (encoded).
    pub max_metadata_bytes: usize,
    /// Most bytes of presence messages one room sends a second, each
    /// message counted once per recipient: beyond it, changes wait and
    /// gather, whatever the clients do.
    pub presence_bytes_per_second: usize,
    /// Most users in one room.
    pub max_users: usize,
    /// Most datablocks in one room.
    pub max_datablocks: usize,
    /// Most bytes of datablocks in one room.
    pub max_room_bytes: usize,
    /// Most rooms on the server, the default room included.
    pub max_rooms: usize,
    /// Most users on the server, in all rooms together.
    pub max_users_total: usize,
    /// Most TCP connections from one address beyond the four of each user
    /// logged in from it: a host cannot hold the server's descriptors
    /// with connections that never log in.
    pub max_unauthenticated_per_address: usize,
    /// Most TCP connections beyond the four of each user logged in, from
    /// all addresses together.
    pub max_unauthenticated_total: usize,
    /// Most datablocks on the server, in all rooms together.
    pub max_datablocks_total: usize,
    /// Most bytes of datablocks on the server, in all rooms together.
    pub max_bytes_total: usize,
    /// Most snapshot messages in flight to a joiner before it acknowledges.
    pub snapshot_window_messages: usize,
    /// Most snapshot bytes in flight to a joiner before it acknowledges.
    pub snapshot_window_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            chunk_bytes: 1 << 20,
            max_header_bytes: 1 << 20,
            max_datablock_bytes: 512 << 20,
            max_transfer_bytes_per_client: 1 << 30,
            max_transfer_bytes_total: 4 << 30,
            outbox_max_messages: 100_000,
            outbox_max_bytes: 1 << 30,
            max_metadata_bytes: 64 << 10,
            presence_bytes_per_second: 2 << 20,
            max_users: 256,
            max_datablocks: 1_000_000,
            max_room_bytes: 16 << 30,
            max_rooms: 64,
            max_users_total: 1024,
            max_unauthenticated_per_address: 32,
            max_unauthenticated_total: 256,
            max_datablocks_total: 4_000_000,
            max_bytes_total: 64 << 30,
            snapshot_window_messages: 4096,
            snapshot_window_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// Largest frame the sockets accept: a header or one chunk, whichever is
    /// larger, plus room for framing. Peers sending more are disconnected by
    /// libzmq before the frame is read.
    pub fn max_frame_bytes(&self) -> usize {
        self.chunk_bytes.max(self.max_header_bytes) + 1024
    }
}

impl Config {
    /// Heartbeat timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The data directory in use.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// Where session files are saved.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("backups"))
    }

    /// Ping interval as a duration.
    /// Whether the server encrypts: always with `required`, never with
    /// `off`, and with `on` unless it listens on loopback only (nothing
    /// then leaves the machine; docs/hosting.md has the reasoning).
    pub fn encrypts(&self) -> bool {
        match self.encryption {
            Encryption::Off => false,
            Encryption::On => !self.bind.is_loopback(),
            Encryption::Required => true,
        }
    }

    /// Where the server's key pair is kept.
    pub fn server_key_file(&self) -> PathBuf {
        self.server_key
            .clone()
            .unwrap_or_else(|| self.data_dir().join("server.key"))
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The four ports, in channel order: commands, subscriber, publisher,
    /// heartbeat. Fails when `port + 3` does not fit.
    pub fn ports(&self) -> Result<[u16; 4], ConfigError> {
        let last = self
            .port
            .checked_add(3)
            .ok_or(ConfigError::PortRange(self.port))?;
        if self.port == 0 {
            return Err(ConfigError::PortRange(self.port));
        }
        Ok([self.port, self.port + 1, self.port + 2, last])
    }

    /// Checks everything that can be checked before binding, with errors a
    /// person can act on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ports()?;
        if self.timeout_ms < 100 {
            return Err(ConfigError::Invalid {
                key: "timeout_ms",
                reason: format!("{} ms is too short; use at least 100 ms", self.timeout_ms),
            });
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.timeout_ms {
            return Err(ConfigError::Invalid {
                key: "heartbeat_interval_ms",
                reason: format!(
                    "{} ms must be above 0 and below the timeout ({} ms)",
                    self.heartbeat_interval_ms, self.timeout_ms
                ),
            });
        }
        if self.admin_password.is_empty() {
            return Err(ConfigError::Invalid {
                key: "admin_password",
                reason: "must not be empty".into(),
            });
        }
        if self.autosave_keep == 0 {
            return Err(ConfigError::Invalid {
                key: "autosave_keep",
                reason: "must be at least 1 (turn autosave off with autosave = \"0\")".into(),
            });
        }
        if self
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                reason: "must not be empty".into(),
            });
        }
        for (key, path) in [
            ("server_key", &self.server_key),
            ("authorized_keys", &self.authorized_keys),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must not be empty".into(),
                });
            }
        }
        if self.fresh && self.load.is_some() {
            return Err(ConfigError::Invalid {
                key: "fresh",
                reason: "--load already replaces the recorded session (saving it first); give --fresh or --load, not both".into(),
            });
        }
        let l = &self.limits;
        if l.chunk_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "limits.chunk_bytes",
                reason: "must be at least 1024".into(),
            });
        }
        if l.max_header_bytes < 4096 {
            return Err(ConfigError::Invalid {
                key: "limits.max_header_bytes",
                reason: "must be at least 4096".into(),
            });
        }
        if l.outbox_max_bytes < l.max_datablock_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.outbox_max_bytes",
                reason: "must be at least limits.max_datablock_bytes, or no client could receive the largest datablock".into(),
            });
        }
        if l.max_transfer_bytes_per_client < l.max_datablock_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.max_transfer_bytes_per_client",
                reason: "must be at least limits.max_datablock_bytes".into(),
            });
        }
        if l.max_transfer_bytes_total < l.max_transfer_bytes_per_client {
            return Err(ConfigError::Invalid {
                key: "limits.max_transfer_bytes_total",
                reason: "must be at least limits.max_transfer_bytes_per_client".into(),
            });
        }
        if l.snapshot_window_messages == 0 || l.snapshot_window_bytes < l.chunk_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.snapshot_window_bytes",
                reason: "the window must hold at least one message and one chunk".into(),
            });
        }
        if l.max_rooms == 0 || l.max_users_total < l.max_users.min(1) {
            return Err(ConfigError::Invalid {
                key: "limits.max_rooms",
                reason: "the server needs at least its default room and one user".into(),
            });
        }
        if l.max_room_bytes < l.max_datablock_bytes || l.max_bytes_total < l.max_room_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.max_room_bytes",
                reason: "must be at least limits.max_datablock_bytes, and at most limits.max_bytes_total".into(),
            });
        }
        if l.max_unauthenticated_per_address < 4
            || l.max_unauthenticated_total < l.max_unauthenticated_per_address
        {
            return Err(ConfigError::Invalid {
                key: "limits.max_unauthenticated_per_address",
                reason: "must be at least 4 (a client's connections before it logs in), and at most limits.max_unauthenticated_total".into(),
            });
        }
        if l.presence_bytes_per_second < l.max_metadata_bytes {
            return Err(ConfigError::Invalid {
                key: "limits.presence_bytes_per_second",
                reason: "must be at least limits.max_metadata_bytes".into(),
            });
        }
        if l.outbox_max_messages == 0 || l.max_users == 0 || l.max_datablocks == 0 {
            return Err(ConfigError::Invalid {
                key: "limits",
                reason: "outbox_max_messages, max_users and max_datablocks must be above 0".into(),
            });
        }
        Ok(())
    }
}

/// The data directory when none is configured: `$XDG_DATA_HOME/replication-serve`,
/// else `~/.local/share/replication-serve`, else `replication-data` in the
/// working directory. The Docker image sets `/data`.
pub fn default_data_dir() -> PathBuf {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(base) = non_empty("XDG_DATA_HOME") {
        return PathBuf::from(base).join("replication-serve");
    }
    if let Some(home) = non_empty("HOME") {
        return PathBuf::from(home).join(".local/share/replication-serve");
    }
    PathBuf::from("replication-data")
}

/// Where the metrics listener listens: `ADDRESS:PORT`, or a port alone for
/// this machine only (127.0.0.1). Port 0 takes any free port (the log says
/// which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MetricsAddress(pub SocketAddr);

impl FromStr for MetricsAddress {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let invalid = || ConfigError::Invalid {
            key: "metrics",
            reason: format!(
                "{s:?}: write ADDRESS:PORT (127.0.0.1:9100, 0.0.0.0:9100, [::1]:9100) or a port alone for this machine only"
            ),
        };
        if let Ok(port) = text.parse::<u16>() {
            return Ok(Self(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        }
        if let Some(port) = text.strip_prefix("localhost:") {
            let port = port.parse::<u16>().map_err(|_| invalid())?;
            return Ok(Self(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        }
        text.parse::<SocketAddr>().map(Self).map_err(|_| invalid())
    }
}

impl TryFrom<String> for MetricsAddress {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<MetricsAddress> for String {
    fn from(a: MetricsAddress) -> String {
        a.0.to_string()
    }
}

impl std::fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How far a recorded change is flushed before it is forwarded.
/// `--encryption`: off, on (unless the server listens on loopback only),
/// or required (always, loopback too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Encryption {
    Off,
    On,
    Required,
}

impl FromStr for Encryption {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "on" => Ok(Self::On),
            "required" => Ok(Self::Required),
            _ => Err(ConfigError::Invalid {
                key: "encryption",
                reason: format!("{s:?}: use off, on or required"),
            }),
        }
    }
}

impl TryFrom<String> for Encryption {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Required => "required",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Durability {
    /// Written to the operating system before forwarding (survives a crash
    /// of the server), flushed to the disk within 100 ms (a power loss
    /// takes at most that).
    Normal,
    /// Flushed to the disk before forwarding (survives a power loss).
    Strict,
}

impl FromStr for Durability {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(Self::Normal),
            "strict" => Ok(Self::Strict),
            _ => Err(ConfigError::Invalid {
                key: "durability",
                reason: format!("{s:?}: use normal or strict"),
            }),
        }
    }
}

impl TryFrom<String> for Durability {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Strict => "strict",
        })
    }
}

/// A duration written the way people write them: `15m`, `1h 30m`, `90s`;
/// `0` or `off` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Interval(pub Duration);

impl Interval {
    pub fn is_off(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Interval {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" || s.eq_ignore_ascii_case("off") {
            return Ok(Self(Duration::ZERO));
        }
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| ConfigError::Invalid {
                key: "autosave",
                reason: format!("{s:?}: {e}; write it like 15m, 1h or 90s, or 0 for off"),
            })
    }
}

impl TryFrom<String> for Interval {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<Interval> for String {
    fn from(i: Interval) -> String {
        if i.is_off() {
            "0".to_owned()
        } else {
            humantime::format_duration(i.0).to_string()
        }
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

/// Log verbosity, spelled as the reference servers spell it.
///
/// Read through [`FromStr`] (case-insensitive, `WARN` for `WARNING`), so a
/// config file accepts exactly what `-l` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE", try_from = "String")]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
}

impl LogLevel {
    /// The matching `tracing` level.
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            Self::Error => tracing::Level::ERROR,
            Self::Warning => tracing::Level::WARN,
            Self::Info => tracing::Level::INFO,
            Self::Debug => tracing::Level::DEBUG,
        }
    }
}

impl FromStr for LogLevel {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "ERROR" => Ok(Self::Error),
            "WARNING" | "WARN" => Ok(Self::Warning),
            "INFO" => Ok(Self::Info),
            "DEBUG" => Ok(Self::Debug),
            _ => Err(ConfigError::LogLevel(s.to_owned())),
        }
    }
}

impl TryFrom<String> for LogLevel {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Error => "ERROR",
            Self::Warning => "WARNING",
            Self::Info => "INFO",
            Self::Debug => "DEBUG",
        })
    }
}

/// A configuration a person has to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("port {0} is out of range: the four ports base..base+3 must lie within 1..=65535")]
    PortRange(u16),
    #[error("invalid log level {0:?}: use ERROR, WARNING, INFO or DEBUG")]
    LogLevel(String),
    #[error("invalid {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl ConfigError {
    /// The configuration key at fault, as a config file spells it
    /// (`port`, `limits.chunk_bytes`), so callers can say where it was set.
    pub fn key(&self) -> &'static str {
        match self {
            Self::PortRange(_) => "port",
            Self::LogLevel(_) => "log_level",
            Self::Invalid { key, .. } => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().ports().unwrap(), [5555, 5556, 5557, 5558]);
    }

    #[test]
    fn base_plus_three_must_fit() {
        let config = Config {
            port: 65533,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::PortRange(65533)));
        let config = Config {
            port: 65532,
            ..Config::default()
        };
        assert!(config.validate().is_ok());
        let config = Config {
            port: 0,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn log_level_is_case_insensitive() {
        assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel::Debug));
        assert_eq!("Warning".parse::<LogLevel>(), Ok(LogLevel::Warning));
        assert!("LOUD".parse::<LogLevel>().is_err());
    }

    #[test]
    fn metrics_address_defaults_to_this_machine() {
        let local = |port: u16| MetricsAddress(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        assert_eq!("9100".parse(), Ok(local(9100)));
        assert_eq!("localhost:9100".parse(), Ok(local(9100)));
        assert_eq!(
            "0.0.0.0:9100"
                .parse::<MetricsAddress>()
                .map(|a| a.0.ip().is_unspecified()),
            Ok(true)
        );
        assert!("[::1]:9100".parse::<MetricsAddress>().is_ok());
        let e = "abc".parse::<MetricsAddress>().unwrap_err();
        assert_eq!(e.key(), "metrics");
        assert!("9100:0.0.0.0".parse::<MetricsAddress>().is_err());
    }

    #[test]
    fn fresh_and_load_do_not_go_together() {
        let config = Config {
            fresh: true,
            load: Some("x.rsession".into()),
            ..Config::default()
        };
        assert_eq!(config.validate().map_err(|e| e.key()), Err("fresh"));
    }

    #[test]
    fn heartbeat_must_be_shorter_than_timeout() {
        let config = Config {
            timeout_ms: 1000,
            heartbeat_interval_ms: 1000,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
