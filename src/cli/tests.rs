//! Unit tests of the command line. Environment variables are process-wide,
//! so what depends on them is tested on the real binary (tests/cli.rs,
//! tests/deploy.rs); here the command line and the config file.

use std::io::Write;

use super::*;

fn args(list: &[&str]) -> Vec<OsString> {
    std::iter::once("replication-serve")
        .chain(list.iter().copied())
        .map(OsString::from)
        .collect()
}

fn action(list: &[&str]) -> Action {
    match parse_from(args(list)) {
        Ok(action) => action,
        Err(e) => panic!("{list:?} should parse: {e}"),
    }
}

fn config(list: &[&str]) -> Config {
    match action(list) {
        Action::Serve(config, _) => *config,
        _ => panic!("{list:?} should run the server"),
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
    for (name, aliases) in LOG_LEVEL_NAMES {
        assert_eq!(
            name.parse::<LogLevel>().map(|l| l.to_string()),
            Ok(name.to_owned())
        );
        for alias in aliases {
            assert_eq!(
                alias.parse::<LogLevel>().map(|l| l.to_string()),
                Ok(name.to_owned())
            );
        }
    }
}

#[test]
fn help_encryption_modes_parse_back_to_themselves() {
    for (name, _) in ENCRYPTION_NAMES {
        assert_eq!(
            name.parse::<Encryption>().map(|e| e.to_string()),
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
fn every_option_has_its_env_var() {
    let expected = [
        ("port", "REPLICATION_PORT", false),
        ("admin_password", "REPLICATION_ADMIN_PASSWORD", true),
        ("server_password", "REPLICATION_SERVER_PASSWORD", true),
        ("timeout_ms", "REPLICATION_TIMEOUT", false),
        ("log_level", "REPLICATION_LOG_LEVEL", false),
        ("log_file", "REPLICATION_LOG_FILE", false),
        ("bind", "REPLICATION_BIND", false),
        ("config", "REPLICATION_CONFIG", false),
        ("fresh", "REPLICATION_FRESH", false),
        ("metrics", "REPLICATION_METRICS", false),
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
        CliError::Config { error, origin } => {
            assert_eq!(error, ConfigError::PortRange(65533));
            assert_eq!(origin, Origin::CommandLine("--port".into()));
        }
        other => panic!("expected a port range error, got {other}"),
    }
    let message = error(&["-p", "65533"]).to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(
        message.ends_with("(set by command line --port)"),
        "{message}"
    );
    assert!(matches!(
        error(&["-p", "0"]),
        CliError::Config {
            error: ConfigError::PortRange(0),
            ..
        }
    ));
    assert!(matches!(error(&["-p", "70000"]), CliError::Usage(_)));
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

/// A config file holding `text`, kept until the returned guard drops.
fn config_file(text: &str) -> (tempfile::NamedTempFile, String) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes())
        .expect("write the config file");
    let path = file.path().to_str().expect("utf-8 temp path").to_owned();
    (file, path)
}

#[test]
fn file_values_apply_and_the_command_line_wins() {
    let (_file, path) = config_file(
        "port = 6000\nadmin_password = \"from-file\"\nlog_level = \"debug\"\n[limits]\nmax_users = 9\n",
    );
    let c = config(&["--config", &path]);
    assert_eq!(c.port, 6000);
    assert_eq!(c.admin_password, "from-file");
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.limits.max_users, 9);
    assert_eq!(c.timeout_ms, DEFAULT_TIMEOUT_MS);

    let c = config(&["--config", &path, "-p", "7000", "-pwd", "flag"]);
    assert_eq!(c.port, 7000);
    assert_eq!(c.admin_password, "flag");
    assert_eq!(c.log_level, LogLevel::Debug);
}

#[test]
fn heartbeat_follows_the_timeout_unless_the_file_sets_it() {
    let (_file, path) = config_file("timeout_ms = 800\n");
    assert_eq!(config(&["--config", &path]).heartbeat_interval_ms, 200);
    assert_eq!(
        config(&["--config", &path, "-t", "400"]).heartbeat_interval_ms,
        100
    );
    assert_eq!(config(&["-t", "20000"]).heartbeat_interval_ms, 1000);

    let (_file, path) = config_file("heartbeat_interval_ms = 300\n");
    let c = config(&["--config", &path, "-t", "800"]);
    assert_eq!((c.timeout_ms, c.heartbeat_interval_ms), (800, 300));
    let message = error(&["--config", &path, "-t", "200"]).to_string();
    assert!(message.contains("heartbeat_interval_ms"), "{message}");
    assert!(
        message.contains(&format!("(set by config file {path})")),
        "{message}"
    );
}

#[test]
fn invalid_values_say_where_they_were_set() {
    let (_file, path) = config_file("timeout_ms = 50\n");
    let message = error(&["--config", &path]).to_string();
    assert!(
        message.starts_with("invalid timeout_ms: 50 ms"),
        "{message}"
    );
    assert!(
        message.ends_with(&format!("(set by config file {path})")),
        "{message}"
    );

    let message = error(&["-t", "50"]).to_string();
    assert!(
        message.ends_with("(set by command line --timeout)"),
        "{message}"
    );
    assert_eq!(error(&["-t", "50"]).exit_code(), 2);
}

#[test]
fn file_mistakes_name_the_file_and_key() {
    let (_file, path) = config_file("[limits]\nmax_user = 3\n");
    let e = error(&["--config", &path]);
    assert_eq!(e.exit_code(), 2);
    let message = e.to_string();
    assert!(
        message.contains(&path) && message.contains("line 2"),
        "{message}"
    );
    assert!(message.contains("unknown key limits.max_user"), "{message}");

    let message = error(&["--config", "/no/such/replication.toml"]).to_string();
    assert!(message.contains("/no/such/replication.toml"), "{message}");
}

#[test]
fn empty_values_mean_none() {
    assert_eq!(config(&["-spwd", ""]).server_password, None);
    let (_file, path) = config_file("server_password = \"\"\nlog_file = \"\"\n");
    let c = config(&["--config", &path]);
    assert_eq!((c.server_password, c.log_file), (None, None));
}

#[test]
fn fresh_and_metrics_options() {
    let c = config(&["--fresh", "--metrics", "9100"]);
    assert!(c.fresh);
    assert_eq!(
        c.metrics.map(|m| m.0.to_string()),
        Some("127.0.0.1:9100".into())
    );
    let (_file, path) = config_file("metrics = \"0.0.0.0:9200\"\nfresh = true\n");
    let c = config(&["--config", &path]);
    assert!(c.fresh);
    assert_eq!(
        c.metrics.map(|m| m.0.to_string()),
        Some("0.0.0.0:9200".into())
    );

    let message = error(&["--metrics", "nowhere"]).to_string();
    assert!(message.contains("'--metrics <ADDRESS:PORT>'"), "{message}");
    assert!(message.contains("ADDRESS:PORT"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    let message = error(&["--fresh", "--load", "x.rsession"]).to_string();
    assert!(message.starts_with("invalid fresh"), "{message}");
    assert!(
        message.ends_with("(set by command line --fresh)"),
        "{message}"
    );
}

#[test]
fn clap_errors_are_one_line() {
    for list in [&["-p", "abc"][..], &["--bogus"], &["-l", "LOUD"], &["-t"]] {
        let e = error(list);
        assert_eq!(e.exit_code(), 2, "{list:?}");
        let message = e.to_string();
        assert_eq!(message.lines().count(), 1, "{list:?}: {message}");
        assert!(message.contains("--help"), "{list:?}: {message}");
    }
    // Given on the command line, the option is named, not a variable.
    let message = error(&["-p", "abc"]).to_string();
    assert!(message.contains("'--port <PORT>'"), "{message}");
}

#[test]
fn a_repeated_option_takes_the_last_value() {
    assert_eq!(config(&["-p", "6000", "--port", "7000"]).port, 7000);
    assert_eq!(config(&["-pwd", "a", "-pwd", "b"]).admin_password, "b");
}

#[test]
fn print_config_masks_passwords_and_notes_origins() {
    let (_file, path) = config_file("timeout_ms = 8000\n");
    let Action::PrintConfig(text) = action(&[
        "--config",
        &path,
        "-p",
        "6000",
        "-pwd",
        "boss",
        "-spwd",
        "friends",
        "--print-config",
    ]) else {
        panic!("expected the configuration text")
    };
    assert!(
        !text.contains("boss") && !text.contains("friends"),
        "{text}"
    );
    assert!(text.contains("admin_password = \"********\"  # command line --admin-password"));
    assert!(
        text.contains("\nport = 6000  # command line --port\n"),
        "{text}"
    );
    assert!(text.contains(&format!("\ntimeout_ms = 8000  # config file {path}\n")));
    assert!(text.contains("\nheartbeat_interval_ms = 1000\n"), "{text}");
    let Action::PrintConfig(text) = action(&["-t", "400", "--print-config"]) else {
        panic!("expected the configuration text")
    };
    assert!(
        text.contains("\nheartbeat_interval_ms = 100  # follows timeout_ms\n"),
        "{text}"
    );
    let back = ConfigFile::parse(std::path::Path::new("printed"), &text).expect("TOML");
    assert_eq!(back.config().timeout_ms, 400);
}

#[test]
fn health_check_targets_this_machine_or_the_given_host() {
    let target = |list: &[&str]| match action(list) {
        Action::HealthCheck(target) => target,
        _ => panic!("{list:?} should be a health check"),
    };
    assert_eq!(
        target(&["--health-check", "-p", "6000"]),
        HealthTarget {
            host: "127.0.0.1".into(),
            ports: [6000, 6001, 6002, 6003]
        }
    );
    assert_eq!(target(&["--health-check", "--bind", "::"]).host, "::1");
    assert_eq!(
        target(&["--health-check", "--bind", "10.1.2.3"]).host,
        "10.1.2.3"
    );
    assert_eq!(
        target(&["--health-check", "--host", "example.org"]).host,
        "example.org"
    );
    assert!(matches!(
        error(&["--host", "example.org"]),
        CliError::Usage(_)
    ));
    assert!(matches!(
        error(&["--health-check", "--print-config"]),
        CliError::Usage(_)
    ));
}

#[test]
fn session_storage_options() {
    let c = config(&[
        "--data-dir",
        "/srv/rs",
        "--durability",
        "STRICT",
        "--load",
        "backup.rsession",
        "--autosave",
        "1h 30m",
        "--autosave-keep",
        "3",
        "--backup-dir",
        "/mnt/backups",
    ]);
    assert_eq!(c.data_dir, Some(PathBuf::from("/srv/rs")));
    assert_eq!(c.durability, crate::config::Durability::Strict);
    assert_eq!(c.load, Some(PathBuf::from("backup.rsession")));
    assert_eq!(c.autosave.0, std::time::Duration::from_secs(90 * 60));
    assert_eq!(c.autosave_keep, 3);
    assert_eq!(c.backup_dir(), PathBuf::from("/mnt/backups"));
    assert!(!c.in_memory);

    let c = config(&["--in-memory", "--autosave", "off"]);
    assert!(c.in_memory);
    assert!(c.autosave.is_off());
    // Backups default to the data directory.
    let c = config(&["--data-dir", "d"]);
    assert_eq!(c.backup_dir(), PathBuf::from("d/backups"));
}

#[test]
fn bad_session_storage_values_are_explained() {
    for (list, words) in [
        (&["--durability", "fast"][..], "normal or strict"),
        (&["--autosave", "soon"][..], "15m"),
        (&["--autosave-keep", "0"][..], "autosave_keep"),
        (&["--autosave-keep", "-1"][..], "-1"),
    ] {
        let message = error(list).to_string();
        assert!(message.contains(words), "{list:?}: {message}");
    }
}

#[test]
fn the_storage_settings_come_from_the_config_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "data_dir = \"/var/lib/rs\"\ndurability = \"strict\"\nautosave = \"5m\"\nautosave_keep = 2"
    )
    .unwrap();
    let path = file.path().to_str().unwrap();
    let c = config(&["--config", path]);
    assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/rs")));
    assert_eq!(c.durability, crate::config::Durability::Strict);
    assert_eq!(c.autosave.0, std::time::Duration::from_secs(300));
    assert_eq!(c.autosave_keep, 2);
    // The command line wins.
    let c = config(&["--config", path, "--durability", "normal"]);
    assert_eq!(c.durability, crate::config::Durability::Normal);
    let printed = match action(&["--config", path, "--print-config"]) {
        Action::PrintConfig(text) => text,
        _ => panic!("--print-config prints"),
    };
    assert!(printed.contains("durability = \"strict\""), "{printed}");
    assert!(printed.contains("autosave = \"5m\""), "{printed}");
}
