//! The command line, and how it combines with the environment and a config
//! file.
//!
//! A setting is taken from the first of these that has it:
//!
//! 1. the command line (`-p 6000`),
//! 2. the environment (`REPLICATION_PORT=6000`),
//! 3. the config file named by `--config` (`port = 6000`),
//! 4. [`Config::default`].
//!
//! clap reads the first two and shows the defaults in `--help`; its
//! `value_source` tells which values the user actually gave, and only those
//! are laid over the file's configuration. The reference servers' spellings
//! (`-pwd`, `-lf`, ...) are rewritten by [`normalize_args`] before clap parses.

mod legacy;
mod secrets;
mod usage;

pub use legacy::normalize_args;
pub use secrets::move_to_environment;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::builder::{PossibleValue, StringValueParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, Command, CommandFactory, FromArgMatches, Parser};

use crate::config::file::{ConfigFile, ConfigFileError};
use crate::config::{
    Config, ConfigError, DEFAULT_PORT, DEFAULT_TIMEOUT_MS, Durability, Encryption, Interval,
    LogLevel, MetricsAddress, render,
};
use legacy::{LONG_ADMIN_PASSWORD, LONG_LOG_FILE, LONG_SERVER_PASSWORD};

/// Dedicated replication server for collaborative Blender sessions.
// No `Debug`: the struct holds passwords and has no reason to be printed.
// `args_override_self`: an option given twice takes the last value, so a
// launcher can put defaults first and let the user's own arguments win
// (the Docker entrypoint turns environment variables into leading options).
#[derive(Parser)]
#[command(
    name = "replication-serve",
    version,
    about,
    long_about = None,
    after_help = after_help(),
    args_override_self = true
)]
pub struct Cli {
    #[command(flatten)]
    settings: Settings,

    /// Read settings from this TOML file (see config/replication.toml); the command line and the environment override it
    #[arg(long = "config", env = "REPLICATION_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the configuration the server would run with, as TOML with passwords masked, and exit
    #[arg(long = "print-config", conflicts_with = "health_check")]
    print_config: bool,

    /// Print the server's public key and its fingerprint (making the key pair when there is none yet), and exit
    #[arg(
        long = "print-public-key",
        conflicts_with_all = ["health_check", "print_config"],
        help_heading = "Encryption"
    )]
    print_public_key: bool,

    /// Ask a running server whether it is serving (all four ports and a SERVER_INFO request), then exit: 0 if it is, 1 if not
    #[arg(long = "health-check", help_heading = "Checking a server")]
    health_check: bool,

    /// With --health-check: the server to ask, by name or address [default: this machine, on the configured port]
    #[arg(
        long = "host",
        value_name = "HOST",
        requires = "health_check",
        help_heading = "Checking a server"
    )]
    host: Option<String>,
}

/// The server's settings that the command line and the environment can
/// give. Each argument id is the name of the [`Config`] field it sets, which
/// is how [`Origins`] and error messages name it.
#[derive(Args)]
struct Settings {
    /// Base port: the server listens on PORT, PORT+1, PORT+2 and PORT+3
    #[arg(
        short = 'p',
        long = "port",
        env = "REPLICATION_PORT",
        value_name = "PORT",
        default_value_t = DEFAULT_PORT,
        allow_hyphen_values = true
    )]
    port: u16,

    /// Password that grants ADMIN rights (defaults to the reference servers' well-known one: set your own)
    // Optional so that clap never shows the default in --help; the default
    // comes from the config file or `Config::default()`.
    #[arg(
        long = LONG_ADMIN_PASSWORD,
        env = "REPLICATION_ADMIN_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    admin_password: Option<String>,

    /// Password every client must give; without it the server is public
    #[arg(
        long = LONG_SERVER_PASSWORD,
        env = "REPLICATION_SERVER_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    server_password: Option<String>,

    /// Disconnect a client silent for this many milliseconds
    #[arg(
        short = 't',
        long = "timeout",
        env = "REPLICATION_TIMEOUT",
        value_name = "MS",
        default_value_t = DEFAULT_TIMEOUT_MS,
        allow_hyphen_values = true
    )]
    timeout_ms: u64,

    /// Log verbosity (case-insensitive)
    #[arg(
        short = 'l',
        long = "log-level",
        env = "REPLICATION_LOG_LEVEL",
        value_name = "LEVEL",
        value_parser = FromStrParser::<LogLevel>::new(&LOG_LEVEL_NAMES),
        default_value_t = Config::default().log_level,
        allow_hyphen_values = true
    )]
    log_level: LogLevel,

    /// Also append the log to this file (the log always goes to stderr)
    #[arg(
        long = LONG_LOG_FILE,
        env = "REPLICATION_LOG_FILE",
        value_name = "FILE",
        allow_hyphen_values = true
    )]
    log_file: Option<PathBuf>,

    /// Address the four sockets bind to
    #[arg(
        long = "bind",
        env = "REPLICATION_BIND",
        value_name = "ADDR",
        default_value_t = Config::default().bind,
        allow_hyphen_values = true
    )]
    bind: IpAddr,

    /// Record the session in this directory, so that it survives restarts and crashes [default: ~/.local/share/replication-serve]
    #[arg(
        long = "data-dir",
        env = "REPLICATION_DATA_DIR",
        value_name = "DIR",
        help_heading = "Sessions and backups"
    )]
    data_dir: Option<PathBuf>,

    /// Keep the session in memory only: nothing is recorded, a restart starts empty
    #[arg(
        long = "in-memory",
        env = "REPLICATION_IN_MEMORY",
        help_heading = "Sessions and backups",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    in_memory: bool,

    /// normal: a change is forwarded once written to the OS (survives a server crash; a power loss takes at most the last 100 ms). strict: once flushed to the disk (survives a power loss; slower)
    #[arg(
        long = "durability",
        env = "REPLICATION_DURABILITY",
        value_name = "MODE",
        default_value_t = Config::default().durability,
        help_heading = "Sessions and backups"
    )]
    durability: Durability,

    /// Start from this session file (written by `save` or autosave), replacing the recorded session, which is saved as a backup first
    #[arg(
        long = "load",
        env = "REPLICATION_LOAD",
        value_name = "FILE",
        help_heading = "Sessions and backups"
    )]
    load: Option<PathBuf>,

    /// Save the session to the backup directory this often when it changed (15m, 1h, 90s; 0 turns it off)
    #[arg(
        long = "autosave",
        env = "REPLICATION_AUTOSAVE",
        value_name = "INTERVAL",
        default_value_t = Config::default().autosave,
        help_heading = "Sessions and backups"
    )]
    autosave: Interval,

    /// How many autosaved files to keep
    #[arg(
        long = "autosave-keep",
        env = "REPLICATION_AUTOSAVE_KEEP",
        value_name = "COUNT",
        default_value_t = Config::default().autosave_keep,
        help_heading = "Sessions and backups"
    )]
    autosave_keep: usize,

    /// Let any user create a room (by default only admins can)
    #[arg(
        long = "open-rooms",
        env = "REPLICATION_OPEN_ROOMS",
        help_heading = "Rooms",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    open_rooms: bool,

    /// Keep rooms when their last user leaves (by default a room is closed and its data removed then, unless an admin kept it open)
    #[arg(
        long = "keep-rooms",
        env = "REPLICATION_KEEP_ROOMS",
        help_heading = "Rooms",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    keep_rooms: bool,

    /// Start with empty rooms, after saving every recorded scene to the backup directory (at every start it is given)
    #[arg(
        long = "fresh",
        env = "REPLICATION_FRESH",
        help_heading = "Sessions and backups",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    fresh: bool,

    /// Serve Prometheus metrics at /metrics and a JSON status at /status on ADDRESS:PORT (a port alone: this machine only) [default: off]
    #[arg(
        long = "metrics",
        env = "REPLICATION_METRICS",
        value_name = "ADDRESS:PORT",
        help_heading = "Monitoring"
    )]
    metrics: Option<MetricsAddress>,

    /// off: no encryption. on: CURVE on all four ports unless the server listens on loopback only. required: CURVE always, loopback too
    #[arg(
        long = "encryption",
        env = "REPLICATION_ENCRYPTION",
        value_name = "MODE",
        default_value_t = Config::default().encryption,
        value_parser = FromStrParser::<Encryption>::new(&ENCRYPTION_NAMES),
        help_heading = "Encryption"
    )]
    encryption: Encryption,

    /// The server's key pair, made there on first start (readable by its owner only) [default: DATA_DIR/server.key]
    #[arg(
        long = "server-key",
        env = "REPLICATION_SERVER_KEY",
        value_name = "FILE",
        help_heading = "Encryption"
    )]
    server_key: Option<PathBuf>,

    /// Admit only the client public keys listed in FILE, one per line with a comment (read again when it changes, or with the console's reload-keys)
    #[arg(
        long = "authorized-keys",
        env = "REPLICATION_AUTHORIZED_KEYS",
        value_name = "FILE",
        help_heading = "Encryption"
    )]
    authorized_keys: Option<PathBuf>,

    /// Where `save` and autosave write session files [default: DATA_DIR/backups]
    #[arg(
        long = "backup-dir",
        env = "REPLICATION_BACKUP_DIR",
        value_name = "DIR",
        help_heading = "Sessions and backups"
    )]
    backup_dir: Option<PathBuf>,
}

pub enum Action {
    /// Run the server with this configuration; the sources say where the
    /// settings that can fail at start-up were given.
    Serve(Box<Config>, Sources),
    /// Print this text (the effective configuration) and exit.
    PrintConfig(String),
    /// Ask the server at this address whether it is serving.
    HealthCheck(HealthTarget),
    /// Print the server's public key (made if need be) from this file, and
    /// exit.
    PrintPublicKey(PathBuf),
}

/// Where `--health-check` looks for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTarget {
    /// Host name or address, without brackets for IPv6.
    pub host: String,
    /// The four ports: commands, subscriber, publisher, heartbeat.
    pub ports: [u16; 4],
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// The heartbeat interval, when nothing sets it: `min(1000, timeout_ms / 4)`.
    FollowsTimeout,
    File(PathBuf),
    /// An environment variable, by name.
    Environment(String),
    /// A command-line option, by its long name.
    CommandLine(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::FollowsTimeout => f.write_str("follows timeout_ms"),
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Environment(name) => write!(f, "environment {name}"),
            Self::CommandLine(option) => write!(f, "command line {option}"),
        }
    }
}

/// Where the settings that can still fail once the server starts (a file to
/// load, a directory, a port) were given, so that such an error names what
/// the person typed: `(set by environment REPLICATION_LOAD)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    origins: BTreeMap<&'static str, Origin>,
}

/// The keys [`Sources`] keeps.
const START_KEYS: [&str; 10] = [
    "server_key",
    "authorized_keys",
    "port",
    "bind",
    "data_dir",
    "backup_dir",
    "load",
    "log_file",
    "metrics",
    "fresh",
];

impl Sources {
    /// ` (set by ...)` for `key`, or nothing when it has its default.
    pub fn note(&self, key: &str) -> String {
        self.origins.get(key).map(set_by).unwrap_or_default()
    }
}

/// Why the command line did not produce an action.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap rejected the arguments, or printed help or the version. Kept as
    /// the clap error so the binary can call [`clap::Error::exit`], which
    /// prints to the right stream with the right exit code.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// clap rejected the arguments; its message, as one line that names the
    /// option or environment variable at fault.
    #[error("{0}")]
    Usage(String),
    /// The config file cannot be read or has a mistake.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// The settings parsed but do not make a usable configuration.
    #[error("{error}{}", set_by(.origin))]
    Config { error: ConfigError, origin: Origin },
    /// The configuration could not be written as TOML.
    #[error("cannot print the configuration: {0}")]
    Print(#[from] toml::ser::Error),
}

fn set_by(origin: &Origin) -> String {
    match origin {
        Origin::Default => String::new(),
        origin => format!(" (set by {origin})"),
    }
}

impl CliError {
    /// True for `--help` and `--version`: the "error" is the requested
    /// output, which goes to stdout, and the process should exit with 0.
    pub fn is_help_or_version(&self) -> bool {
        matches!(self, Self::Clap(e) if !e.use_stderr())
    }

    /// The exit status for this outcome: 0 for help/version, 2 (usage error,
    /// as clap uses) otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Clap(e) => e.exit_code(),
            Self::Usage(_) | Self::File(_) | Self::Config { .. } | Self::Print(_) => 2,
        }
    }

    /// Prints the message where it belongs and exits with [`Self::exit_code`].
    /// Meant for `main`, before logging is set up.
    pub fn exit(&self) -> ! {
        match self {
            Self::Clap(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(self.exit_code())
            }
        }
    }
}

/// Parses the process's own arguments; see [`parse_from`].
pub fn parse() -> Result<Action, CliError> {
    parse_from(std::env::args_os())
}

/// Parses a command line (program name first), with the process's
/// environment and the `--config` file, into a validated [`Action`].
pub fn parse_from<I, T>(args: I) -> Result<Action, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let command = Cli::command();
    let args = normalize_args(args);
    let matches = match command.clone().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(e) if !e.use_stderr() => return Err(CliError::Clap(e)),
        Err(e) => return Err(CliError::Usage(usage::one_line(&e, &command, &args))),
    };
    let cli = Cli::from_arg_matches(&matches)?;
    let file = cli.config.as_deref().map(ConfigFile::load).transpose()?;
    let mut origins = Origins {
        given: BTreeMap::new(),
        file: file.as_ref(),
    };
    let base = file
        .as_ref()
        .map_or_else(Config::default, |f| f.config().clone());
    let config = cli.settings.lay_over(
        base,
        &Given {
            command: &command,
            matches: &matches,
        },
        &mut origins,
    );
    let invalid = |error: ConfigError| CliError::Config {
        origin: origins.of(error.key()),
        error,
    };
    config.validate().map_err(invalid)?;

    if cli.print_config {
        let mut text = format!(
            "# replication-serve {}: the configuration it would run with.\n\
             # Command line > environment > config file > defaults; passwords are masked.\n",
            env!("CARGO_PKG_VERSION")
        );
        text.push_str(&render::to_toml(&config, |key| origins.note(key))?);
        return Ok(Action::PrintConfig(text));
    }
    if cli.print_public_key {
        return Ok(Action::PrintPublicKey(config.server_key_file()));
    }
    if cli.health_check {
        let ports = config.ports().map_err(invalid)?;
        let host = cli
            .host
            .unwrap_or_else(|| reachable(config.bind).to_string());
        return Ok(Action::HealthCheck(HealthTarget { host, ports }));
    }
    let sources = Sources {
        origins: START_KEYS
            .into_iter()
            .filter_map(|key| match origins.of(key) {
                Origin::Default => None,
                origin => Some((key, origin)),
            })
            .collect(),
    };
    Ok(Action::Serve(Box::new(config), sources))
}

/// The address to reach a server bound to `bind` from this machine: a
/// wildcard bind is reached on loopback.
fn reachable(bind: IpAddr) -> IpAddr {
    match bind {
        IpAddr::V4(a) if a.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(a) if a.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        other => other,
    }
}

/// What clap saw: which arguments the user gave, and where.
struct Given<'a> {
    command: &'a Command,
    matches: &'a ArgMatches,
}

impl Given<'_> {
    /// Where the user gave argument `id`; `None` when clap used its default.
    fn origin(&self, id: &str) -> Option<Origin> {
        let arg = self.command.get_arguments().find(|a| a.get_id() == id)?;
        match self.matches.value_source(id)? {
            ValueSource::CommandLine => Some(Origin::CommandLine(format!("--{}", arg.get_long()?))),
            ValueSource::EnvVariable => Some(Origin::Environment(
                arg.get_env()?.to_string_lossy().into_owned(),
            )),
            _ => None,
        }
    }
}

/// Where each value of the effective configuration came from.
struct Origins<'a> {
    /// Settings given on the command line or in the environment.
    given: BTreeMap<&'static str, Origin>,
    file: Option<&'a ConfigFile>,
}

impl Origins<'_> {
    /// Records that `key` was given by the user, if it was.
    fn record(&mut self, key: &'static str, given: &Given) -> bool {
        match given.origin(key) {
            Some(origin) => {
                self.given.insert(key, origin);
                true
            }
            None => false,
        }
    }

    fn file_sets(&self, key: &str) -> bool {
        self.file.is_some_and(|f| f.sets(key))
    }

    /// The origin of the value at dotted `key`.
    fn of(&self, key: &str) -> Origin {
        if let Some(origin) = self.given.get(key) {
            return origin.clone();
        }
        match self.file {
            Some(file) if file.sets(key) => Origin::File(file.path().to_owned()),
            _ => Origin::Default,
        }
    }

    /// The `--print-config` comment for `key`: its origin, unless default.
    fn note(&self, key: &str) -> Option<String> {
        match self.of(key) {
            Origin::Default => None,
            origin => Some(origin.to_string()),
        }
    }
}

impl Settings {
    /// Lays the values the user gave (command line or environment) over
    /// `config`, which holds the file's values or the defaults.
    fn lay_over(self, mut config: Config, given: &Given, origins: &mut Origins) -> Config {
        if origins.record("port", given) {
            config.port = self.port;
        }
        if origins.record("bind", given) {
            config.bind = self.bind;
        }
        if origins.record("timeout_ms", given) {
            config.timeout_ms = self.timeout_ms;
        }
        if origins.record("log_level", given) {
            config.log_level = self.log_level;
        }
        // An optional argument has a value exactly when it was given.
        if let Some(password) = self.admin_password {
            origins.record("admin_password", given);
            config.admin_password = password;
        }
        if let Some(password) = self.server_password {
            origins.record("server_password", given);
            config.server_password = Some(password);
        }
        if origins.record("in_memory", given) {
            config.in_memory = self.in_memory;
        }
        if origins.record("open_rooms", given) {
            config.open_rooms = self.open_rooms;
        }
        if origins.record("keep_rooms", given) {
            config.keep_rooms = self.keep_rooms;
        }
        if origins.record("fresh", given) {
            config.fresh = self.fresh;
        }
        if let Some(address) = self.metrics {
            origins.record("metrics", given);
            config.metrics = Some(address);
        }
        if origins.record("durability", given) {
            config.durability = self.durability;
        }
        if origins.record("autosave", given) {
            config.autosave = self.autosave;
        }
        if origins.record("autosave_keep", given) {
            config.autosave_keep = self.autosave_keep;
        }
        if let Some(path) = self.data_dir {
            origins.record("data_dir", given);
            config.data_dir = Some(path);
        }
        if let Some(path) = self.load {
            origins.record("load", given);
            config.load = Some(path);
        }
        if let Some(path) = self.backup_dir {
            origins.record("backup_dir", given);
            config.backup_dir = Some(path);
        }
        if origins.record("encryption", given) {
            config.encryption = self.encryption;
        }
        if let Some(path) = self.server_key {
            origins.record("server_key", given);
            config.server_key = Some(path);
        }
        if let Some(path) = self.authorized_keys {
            origins.record("authorized_keys", given);
            config.authorized_keys = Some(path);
        }
        if let Some(path) = self.log_file {
            origins.record("log_file", given);
            config.log_file = Some(path);
        }
        // Empty means "none", so that `REPLICATION_SERVER_PASSWORD=` in a
        // service file makes the server public instead of requiring clients
        // to send an empty string.
        config.server_password = config.server_password.filter(|p| !p.is_empty());
        config.log_file = config.log_file.filter(|p| !p.as_os_str().is_empty());
        config.data_dir = config.data_dir.filter(|p| !p.as_os_str().is_empty());
        config.load = config.load.filter(|p| !p.as_os_str().is_empty());
        config.backup_dir = config.backup_dir.filter(|p| !p.as_os_str().is_empty());
        config.server_key = config.server_key.filter(|p| !p.as_os_str().is_empty());
        config.authorized_keys = config.authorized_keys.filter(|p| !p.as_os_str().is_empty());
        // Unless the file fixes it, the heartbeat follows the timeout: at
        // most a quarter of it, which leaves a client several pings before
        // it is dropped even when the timeout is set far below the default.
        if !origins.file_sets("heartbeat_interval_ms") {
            let default = Config::default().heartbeat_interval_ms;
            config.heartbeat_interval_ms = default.min(config.timeout_ms / 4).max(1);
            if config.heartbeat_interval_ms != default {
                origins
                    .given
                    .insert("heartbeat_interval_ms", Origin::FollowsTimeout);
            }
        }
        config
    }
}

/// The `--help` footer: precedence, and the legacy spellings.
fn after_help() -> String {
    let mut help = String::from(
        "Each setting comes from the command line, else its environment variable, \
         else the --config file, else the default shown above.\n\n",
    );
    help.push_str(&legacy::help());
    help
}

/// Parses a value with its type's own `FromStr`, so that the command line
/// accepts exactly what a config file does, while `--help` lists `shown`
/// (each with its aliases).
#[derive(Clone)]
struct FromStrParser<T> {
    shown: &'static [(&'static str, &'static [&'static str])],
    parses: std::marker::PhantomData<fn() -> T>,
}

impl<T> FromStrParser<T> {
    const fn new(shown: &'static [(&'static str, &'static [&'static str])]) -> Self {
        Self {
            shown,
            parses: std::marker::PhantomData,
        }
    }
}

impl<T> TypedValueParser for FromStrParser<T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Value = T;

    fn parse_ref(&self, cmd: &Command, arg: Option<&Arg>, value: &OsStr) -> Result<T, clap::Error> {
        StringValueParser::new()
            .try_map(|s| s.parse::<T>())
            .parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.shown.iter().map(|&(name, aliases)| {
            PossibleValue::new(name).aliases(aliases.iter().copied())
        })))
    }
}

/// The encryption modes shown in `--help`.
const ENCRYPTION_NAMES: [(&str, &[&str]); 3] = [("off", &[]), ("on", &[]), ("required", &[])];

/// The levels shown in `--help`; a test checks each parses back to itself.
const LOG_LEVEL_NAMES: [(&str, &[&str]); 4] = [
    ("ERROR", &[]),
    ("WARNING", &["WARN"]),
    ("INFO", &[]),
    ("DEBUG", &[]),
];

#[cfg(test)]
mod tests;
