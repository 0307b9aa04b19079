//! The command line.
//!
//! The reference servers are started as
//! `replication-serve -p 5555 -pwd admin -t 5000 -l INFO -lf server.log`, and
//! existing scripts and add-on launchers pass exactly those tokens. clap only
//! knows one-character short flags, so `-pwd` would read as `-p wd` (a port).
//! [`normalize_args`] therefore rewrites the few legacy multi-letter tokens to
//! their `--long` forms before clap sees the arguments; everything else is
//! plain clap, including the environment-variable fallbacks.

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::path::PathBuf;

use clap::builder::{PossibleValue, StringValueParser, TypedValueParser};
use clap::{Arg, Command, CommandFactory, Parser};

use crate::config::{
    Config, ConfigError, DEFAULT_ADMIN_PASSWORD, DEFAULT_PORT, DEFAULT_TIMEOUT_MS, LogLevel,
};

// Long names shared by the clap definition and the legacy table, so a rename
// cannot leave `-pwd` pointing at an option that no longer exists.
const LONG_ADMIN_PASSWORD: &str = "admin-password";
const LONG_SERVER_PASSWORD: &str = "server-password";
const LONG_LOG_FILE: &str = "log-file";

/// Single-dash spellings of the reference servers that clap cannot parse, and
/// the long option each one stands for. Whether an option takes a value is not
/// repeated here: [`normalize_args`] asks the clap definition, so the rewrite
/// and the parser cannot disagree.
const LEGACY_FLAGS: &[(&str, &str)] = &[
    ("-pwd", LONG_ADMIN_PASSWORD),
    ("-apwd", LONG_ADMIN_PASSWORD),
    ("-spwd", LONG_SERVER_PASSWORD),
    ("-lf", LONG_LOG_FILE),
];

/// Dedicated replication server for collaborative Blender sessions.
///
/// Every option can also come from its environment variable; the command line
/// wins over the environment.
// No `Debug`: the struct holds passwords and has no reason to be printed.
#[derive(Parser)]
#[command(name = "replication-serve", version, about, long_about = None, after_help = legacy_help())]
pub struct Cli {
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
    // Optional so that clap never shows the default in --help; the default is
    // filled in from `Config::default()` by `into_config`.
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
        value_parser = LogLevelParser,
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
}

impl Cli {
    /// Turns the parsed arguments into a validated [`Config`]; everything the
    /// command line does not cover keeps its `Config::default()` value.
    ///
    /// An empty server password means "no password", so that
    /// `REPLICATION_SERVER_PASSWORD=` in a service file makes the server public
    /// instead of requiring clients to send an empty string.
    ///
    /// The heartbeat interval is not on the command line, so it follows the
    /// timeout: at most a quarter of it, which leaves a client several pings
    /// before it is dropped even when `-t` is set far below the default.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        let heartbeat_interval_ms = defaults
            .heartbeat_interval_ms
            .min(self.timeout_ms / 4)
            .max(1);
        let config = Config {
            bind: self.bind,
            port: self.port,
            admin_password: self
                .admin_password
                .unwrap_or_else(|| DEFAULT_ADMIN_PASSWORD.to_owned()),
            server_password: self.server_password.filter(|p| !p.is_empty()),
            timeout_ms: self.timeout_ms,
            heartbeat_interval_ms,
            log_level: self.log_level,
            log_file: self.log_file,
            ..defaults
        };
        config.validate()?;
        Ok(config)
    }
}

/// Why the command line did not produce a configuration.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap rejected the arguments, or printed help or the version. Kept as
    /// the clap error so the binary can call [`clap::Error::exit`], which
    /// prints to the right stream with the right exit code.
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The arguments parsed but the resulting configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
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
            Self::Config(_) => 2,
        }
    }

    /// Prints the message where it belongs and exits with [`Self::exit_code`].
    /// Meant for `main`, before logging is set up.
    pub fn exit(&self) -> ! {
        match self {
            Self::Clap(e) => e.exit(),
            Self::Config(e) => {
                eprintln!("error: {e}");
                std::process::exit(self.exit_code())
            }
        }
    }
}

/// Parses the process's own arguments; see [`parse_from`].
pub fn parse() -> Result<Config, CliError> {
    parse_from(std::env::args_os())
}

/// Parses a command line (program name first) into a validated [`Config`],
/// accepting the reference servers' single-dash spellings.
pub fn parse_from<I, T>(args: I) -> Result<Config, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cli = Cli::try_parse_from(normalize_args(args))?;
    Ok(cli.into_config()?)
}

/// Rewrites the legacy tokens `-pwd`, `-apwd`, `-spwd` and `-lf` (alone, or as
/// `-pwd=VALUE`) to their long forms, leaving every other argument untouched.
///
/// The rewrite follows the arguments the way clap will read them, so that it
/// never changes a value: the token after an option that takes a value is
/// that option's value (`-pwd -spwd` sets the admin password to `-spwd`),
/// and nothing after a bare `--` is looked at. The first element is the
/// program name and is always kept as is.
pub fn normalize_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut cmd = Cli::command();
    // Building adds the automatic --help and --version, so they are known too.
    cmd.build();

    let mut args = args.into_iter().map(Into::into);
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let mut value_expected = false;
    while let Some(arg) = args.next() {
        if value_expected {
            value_expected = false;
            out.push(arg);
        } else if arg == "--" {
            out.push(arg);
            out.extend(args.by_ref());
        } else if let Some((long, attached)) = legacy_target(&arg) {
            let mut rewritten = OsString::from(format!("--{long}"));
            match attached {
                Some(value) => {
                    rewritten.push("=");
                    rewritten.push(value);
                }
                None => value_expected = long_takes_value(&cmd, long),
            }
            out.push(rewritten);
        } else {
            value_expected = expects_separate_value(&cmd, &arg.to_string_lossy());
            out.push(arg);
        }
    }
    out
}

/// The long name for a legacy token, with the value when it is attached
/// (`-pwd=VALUE`); `None` when `arg` is not a legacy token.
fn legacy_target(arg: &OsStr) -> Option<(&'static str, Option<OsString>)> {
    let bytes = arg.as_encoded_bytes();
    LEGACY_FLAGS.iter().find_map(|&(token, long)| {
        let rest = bytes.strip_prefix(token.as_bytes())?;
        if rest.is_empty() {
            return Some((long, None));
        }
        if rest.first() == Some(&b'=') {
            // The value may not be UTF-8 (a log file path); when it cannot be
            // split out on this platform the token is left for clap to reject.
            return split_after(arg, token.len() + 1).map(|value| (long, Some(value)));
        }
        None
    })
}

/// The part of `arg` after its first `prefix_len` ASCII characters.
fn split_after(arg: &OsStr, prefix_len: usize) -> Option<OsString> {
    if let Some(s) = arg.to_str() {
        return s.get(prefix_len..).map(OsString::from);
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        arg.as_bytes()
            .get(prefix_len..)
            .map(|rest| OsStr::from_bytes(rest).to_owned())
    }
    #[cfg(windows)]
    {
        use std::os::windows::ffi::{OsStrExt, OsStringExt};
        let wide: Vec<u16> = arg.encode_wide().skip(prefix_len).collect();
        Some(OsString::from_wide(&wide))
    }
    #[cfg(not(any(unix, windows)))]
    {
        None
    }
}

/// Whether the token after `arg` will be read by clap as `arg`'s value: `arg`
/// is an option that takes a value and has none attached (`--port`, `-p`, or
/// a cluster of short flags ending in one, like `-hp`).
fn expects_separate_value(cmd: &Command, arg: &str) -> bool {
    if let Some(long) = arg.strip_prefix("--") {
        return !long.contains('=') && long_takes_value(cmd, long);
    }
    let Some(shorts) = arg.strip_prefix('-') else {
        return false;
    };
    let mut chars = shorts.chars();
    while let Some(c) = chars.next() {
        let Some(found) = cmd.get_arguments().find(|a| has_short(a, c)) else {
            // clap will reject the unknown flag; nothing to protect.
            return false;
        };
        if found.get_action().takes_values() {
            // clap reads the rest of the cluster as the value, if any.
            return chars.as_str().is_empty();
        }
    }
    false
}

fn long_takes_value(cmd: &Command, long: &str) -> bool {
    cmd.get_arguments()
        .find(|a| has_long(a, long))
        .is_some_and(|a| a.get_action().takes_values())
}

fn has_long(arg: &Arg, long: &str) -> bool {
    arg.get_long() == Some(long) || arg.get_all_aliases().is_some_and(|a| a.contains(&long))
}

fn has_short(arg: &Arg, short: char) -> bool {
    arg.get_short() == Some(short)
        || arg
            .get_all_short_aliases()
            .is_some_and(|a| a.contains(&short))
}

/// The `--help` footer listing the legacy spellings, built from the table
/// that drives the rewrite.
fn legacy_help() -> String {
    let mut help = String::from("The reference servers' spellings are accepted too:\n");
    for (token, long) in LEGACY_FLAGS {
        help.push_str(&format!("  {token:<6} same as --{long}\n"));
    }
    help
}

/// Parses `-l` with [`LogLevel`]'s own `FromStr`, so the command line accepts
/// exactly what a config file does, while still listing the levels in
/// `--help`.
#[derive(Clone)]
struct LogLevelParser;

/// The levels shown in `--help`; a test checks each parses back to itself.
const LOG_LEVEL_NAMES: [&str; 4] = ["ERROR", "WARNING", "INFO", "DEBUG"];

impl TypedValueParser for LogLevelParser {
    type Value = LogLevel;

    fn parse_ref(
        &self,
        cmd: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<LogLevel, clap::Error> {
        StringValueParser::new()
            .try_map(|s| s.parse::<LogLevel>())
            .parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(LOG_LEVEL_NAMES.iter().map(|&name| {
            let value = PossibleValue::new(name);
            if name == "WARNING" {
                value.alias("WARN")
            } else {
                value
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("replication-serve")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn config(list: &[&str]) -> Config {
        match parse_from(args(list)) {
            Ok(config) => config,
            Err(e) => panic!("{list:?} should parse: {e}"),
        }
    }

    fn error(list: &[&str]) -> CliError {
        match parse_from(args(list)) {
            Ok(_) => panic!("{list:?} should be rejected"),
            Err(e) => e,
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn legacy_targets_exist_and_take_values() {
        let mut cmd = Cli::command();
        cmd.build();
        for (token, long) in LEGACY_FLAGS {
            assert!(long_takes_value(&cmd, long), "{token} -> --{long}");
        }
    }

    #[test]
    fn reference_command_line() {
        let c = config(&[
            "-p",
            "5555",
            "-pwd",
            "admin",
            "-t",
            "5000",
            "-l",
            "INFO",
            "-lf",
            "server.log",
        ]);
        assert_eq!(c.port, 5555);
        assert_eq!(c.admin_password, "admin");
        assert_eq!(c.server_password, None);
        assert_eq!(c.timeout_ms, 5000);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.log_file, Some(PathBuf::from("server.log")));
    }

    #[test]
    fn admin_and_server_password_spellings() {
        let c = config(&["-apwd", "boss", "-spwd", "letmein"]);
        assert_eq!(c.admin_password, "boss");
        assert_eq!(c.server_password.as_deref(), Some("letmein"));
    }

    #[test]
    fn attached_legacy_values() {
        let c = config(&["-pwd=x", "-spwd=y=z", "-lf=a.log"]);
        assert_eq!(c.admin_password, "x");
        assert_eq!(c.server_password.as_deref(), Some("y=z"));
        assert_eq!(c.log_file, Some(PathBuf::from("a.log")));
    }

    #[test]
    fn long_forms() {
        let c = config(&[
            "--port",
            "6000",
            "--admin-password",
            "a",
            "--server-password=s",
            "--timeout",
            "800",
            "--log-level",
            "ERROR",
            "--log-file",
            "x.log",
            "--bind",
            "127.0.0.1",
        ]);
        assert_eq!(c.port, 6000);
        assert_eq!(c.admin_password, "a");
        assert_eq!(c.server_password.as_deref(), Some("s"));
        assert_eq!(c.timeout_ms, 800);
        assert!(c.heartbeat_interval_ms < c.timeout_ms);
        assert_eq!(c.log_level, LogLevel::Error);
        assert_eq!(c.log_file, Some(PathBuf::from("x.log")));
        assert_eq!(c.bind, IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn log_level_is_case_insensitive() {
        assert_eq!(config(&["-l", "debug"]).log_level, LogLevel::Debug);
        assert_eq!(config(&["-l", "Warning"]).log_level, LogLevel::Warning);
        assert_eq!(config(&["-lWARN"]).log_level, LogLevel::Warning);
    }

    #[test]
    fn help_levels_parse_back_to_themselves() {
        for name in LOG_LEVEL_NAMES {
            assert_eq!(
                name.parse::<LogLevel>().map(|l| l.to_string()),
                Ok(name.to_owned())
            );
        }
    }

    #[test]
    fn invalid_level_names_the_value_and_the_choices() {
        let message = error(&["-l", "LOUD"]).to_string();
        assert!(message.contains("LOUD"), "{message}");
        assert!(message.contains("WARNING"), "{message}");
    }

    #[test]
    fn values_that_look_like_legacy_flags_are_kept() {
        assert_eq!(config(&["--admin-password", "-lf"]).admin_password, "-lf");
        let c = config(&["-pwd", "-spwd"]);
        assert_eq!(c.admin_password, "-spwd");
        assert_eq!(c.server_password, None);
        assert_eq!(
            normalize_args(args(&["-pwd", "-spwd", "-lf", "-pwd"])),
            args(&["--admin-password", "-spwd", "--log-file", "-pwd"])
        );
        // A value-taking short at the end of a cluster takes the next token.
        assert_eq!(normalize_args(args(&["-hp", "-lf"])), args(&["-hp", "-lf"]));
        // An attached value leaves the next token free.
        assert_eq!(
            normalize_args(args(&["-p5555", "-lf", "x"])),
            args(&["-p5555", "--log-file", "x"])
        );
    }

    #[test]
    fn nothing_after_double_dash_is_rewritten() {
        assert_eq!(
            normalize_args(args(&["-pwd", "a", "--", "-lf", "-pwd=x"])),
            args(&["--admin-password", "a", "--", "-lf", "-pwd=x"])
        );
        // `--` as a value is a value, as clap reads it, not a separator.
        assert_eq!(
            normalize_args(args(&["-pwd", "--", "-lf", "x"])),
            args(&["--admin-password", "--", "--log-file", "x"])
        );
    }

    #[test]
    fn program_name_and_similar_tokens_are_untouched() {
        let list = ["-pwd", "-pwdx", "--pwd", "-lfoo"];
        let mut input = args(&list);
        input[0] = OsString::from("-lf");
        let out = normalize_args(input);
        assert_eq!(out[0], "-lf");
        assert_eq!(out[1], "--admin-password");
        assert_eq!(&out[2..], &args(&list)[2..]);
        assert!(normalize_args(Vec::<OsString>::new()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_arguments_survive() {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let path = OsString::from_vec(b"log-\xff.txt".to_vec());
        let mut attached = OsString::from("-lf=");
        attached.push(&path);
        let out = normalize_args([
            OsString::from("prog"),
            attached,
            OsString::from("-lf"),
            path.clone(),
        ]);
        let mut expected = OsString::from("--log-file=");
        expected.push(&path);
        assert_eq!(
            out,
            [
                OsString::from("prog"),
                expected,
                OsString::from("--log-file"),
                path.clone()
            ]
        );
        let attached_form = &out[..2];
        let separate_form = [&out[0], &out[2], &out[3]];
        for form in [
            attached_form.to_vec(),
            separate_form.map(Clone::clone).to_vec(),
        ] {
            let c = match parse_from(form) {
                Ok(c) => c,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(
                c.log_file.as_deref().map(|p| p.as_os_str().as_bytes()),
                Some(path.as_bytes())
            );
        }
    }

    #[test]
    fn every_option_has_its_env_var() {
        let expected = [
            ("port", "REPLICATION_PORT", false),
            ("admin_password", "REPLICATION_ADMIN_PASSWORD", true),
            ("server_password", "REPLICATION_SERVER_PASSWORD", true),
            ("timeout_ms", "REPLICATION_TIMEOUT", false),
            ("log_level", "REPLICATION_LOG_LEVEL", false),
            ("log_file", "REPLICATION_LOG_FILE", false),
            ("bind", "REPLICATION_BIND", false),
        ];
        let cmd = Cli::command();
        for (id, env, hidden) in expected {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id);
            let Some(arg) = arg else {
                panic!("no argument {id}")
            };
            assert_eq!(arg.get_env(), Some(OsStr::new(env)), "{id}");
            assert_eq!(arg.is_hide_env_values_set(), hidden, "{id}");
        }
    }

    #[test]
    fn port_must_leave_room_for_four_channels() {
        match error(&["-p", "65533"]) {
            CliError::Config(e) => {
                assert_eq!(e, ConfigError::PortRange(65533));
                assert!(!e.to_string().contains('\n'));
            }
            CliError::Clap(e) => panic!("expected a port range error, got {e}"),
        }
        assert!(matches!(
            error(&["-p", "0"]),
            CliError::Config(ConfigError::PortRange(0))
        ));
        assert!(matches!(error(&["-p", "70000"]), CliError::Clap(_)));
    }

    #[test]
    fn no_arguments_give_the_defaults() {
        // Only meaningful when the REPLICATION_* variables are unset, which
        // they are in a clean test environment.
        if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("REPLICATION_")) {
            return;
        }
        assert_eq!(config(&[]), Config::default());
    }

    #[test]
    fn help_and_version_are_not_failures() {
        for flag in ["--help", "-h", "--version", "-V"] {
            let e = error(&[flag]);
            assert!(e.is_help_or_version(), "{flag}");
            assert_eq!(e.exit_code(), 0, "{flag}");
        }
        let e = error(&["--bogus"]);
        assert!(!e.is_help_or_version());
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn help_hides_password_values() {
        let help = Cli::command().render_help().to_string();
        assert!(!help.contains("[default: admin]"), "{help}");
        assert!(help.contains("-pwd"), "{help}");
    }
}
