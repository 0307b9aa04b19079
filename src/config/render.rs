//! The effective configuration written out as a config file, for
//! `--print-config`: what the server would run with, passwords masked.

use super::Config;

/// What a password is shown as.
pub const MASK: &str = "********";

/// `config` as TOML that [`super::file::ConfigFile`] reads back, with the
/// passwords replaced by [`MASK`]. Each `key = value` line whose dotted key
/// has a note gets it as a trailing comment (where the value came from).
/// Keys that are not set (no server password, no log file) are listed in a
/// comment, since TOML has no way to write "none".
pub fn to_toml(
    config: &Config,
    note: impl Fn(&str) -> Option<String>,
) -> Result<String, toml::ser::Error> {
    let masked = Config {
        admin_password: MASK.to_owned(),
        server_password: config.server_password.as_ref().map(|_| MASK.to_owned()),
        ..config.clone()
    };
    let body = toml::to_string(&masked)?;

    let mut out = String::new();
    if config.server_password.is_none() {
        out.push_str("# server_password is not set: anyone who can reach the ports may join\n");
    }
    if config.log_file.is_none() {
        out.push_str("# log_file is not set: the log goes to stderr only\n");
    }
    if config.data_dir.is_none() && !config.in_memory {
        out.push_str(&format!(
            "# data_dir is not set: the session is recorded in {}\n",
            config.data_dir().display()
        ));
    }
    if config.metrics.is_none() {
        out.push_str("# metrics is not set: no HTTP listener for /metrics and /status\n");
    }
    if config.server_key.is_none() && config.encrypts() {
        out.push_str(&format!(
            "# server_key is not set: the server's key pair is kept in {}\n",
            config.server_key_file().display()
        ));
    }
    out.push_str(if config.encrypts() {
        "# the server encrypts: CURVE on all four ports\n"
    } else {
        "# the server does not encrypt: passwords and the scene travel in clear\n"
    });
    if config.encrypts() && config.authorized_keys.is_none() {
        out.push_str(
            "# authorized_keys is not set: any client key is admitted (every session is still encrypted)\n",
        );
    }
    if config.backup_dir.is_none() {
        out.push_str(&format!(
            "# backup_dir is not set: session files are saved in {}\n",
            config.backup_dir().display()
        ));
    }
    let mut table = String::new();
    for line in body.lines() {
        out.push_str(line);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = format!("{name}.");
        } else if let Some((key, _)) = line.split_once(" = ")
            && let Some(note) = note(&format!("{table}{key}"))
        {
            out.push_str("  # ");
            out.push_str(&note);
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::ConfigFile;
    use std::path::Path;

    #[test]
    fn masks_passwords_and_reads_back() {
        let config = Config {
            admin_password: "boss".into(),
            server_password: Some("friends".into()),
            port: 6000,
            ..Config::default()
        };
        let text = to_toml(&config, |_| None).unwrap();
        assert!(
            !text.contains("boss") && !text.contains("friends"),
            "{text}"
        );
        assert!(text.contains("admin_password = \"********\""), "{text}");
        assert!(text.contains("server_password = \"********\""), "{text}");
        assert!(!text.contains("server_password is not set"), "{text}");

        let back = ConfigFile::parse(Path::new("printed"), &text).unwrap();
        assert_eq!(
            back.config(),
            &Config {
                admin_password: MASK.into(),
                server_password: Some(MASK.into()),
                ..config
            }
        );
    }

    #[test]
    fn notes_follow_their_keys_and_unset_keys_are_listed() {
        let text = to_toml(&Config::default(), |key| match key {
            "port" => Some("command line".into()),
            "limits.max_users" => Some("config file".into()),
            _ => None,
        })
        .unwrap();
        assert!(text.contains("\nport = 5555  # command line\n"), "{text}");
        assert!(
            text.contains("\nmax_users = 256  # config file\n"),
            "{text}"
        );
        assert!(text.contains("\ntimeout_ms = 5000\n"), "{text}");
        assert!(text.contains("# server_password is not set"), "{text}");
        assert!(text.contains("# log_file is not set"), "{text}");
        assert!(text.contains("# authorized_keys is not set"), "{text}");
        let back = ConfigFile::parse(Path::new("printed"), &text).unwrap();
        assert_eq!(back.config().admin_password, MASK);
    }
}
