//! The configuration file: TOML whose keys are [`Config`]'s field names, with
//! the limits in a `[limits]` table. `config/replication.toml` lists them all.
//!
//! A file need not set every key: what it leaves out keeps its default. What
//! it does set is remembered, because one default depends on another value
//! (the heartbeat interval follows the timeout unless the file fixes it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::Config;

/// A configuration file, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    path: PathBuf,
    config: Config,
    /// Every key the file sets, dotted: `port`, `limits.chunk_bytes`.
    keys: BTreeSet<String>,
}

/// Why a configuration file could not be used. Each is one line that names
/// the file, and the line and key when there is one.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigFileError {
    #[error("cannot read config file {}: {error}", path.display())]
    Read { path: PathBuf, error: String },
    #[error("config file {}, line {line}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        /// The dotted key at fault, when the error is about one.
        key: Option<String>,
        message: String,
    },
}

impl ConfigFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError::Read {
            path: path.to_owned(),
            error: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigFileError> {
        let invalid = |error: toml::de::Error| {
            let offset = error.span().map_or(0, |span| span.start);
            let key = key_at(text, offset);
            ConfigFileError::Invalid {
                path: path.to_owned(),
                line: line_number(text, offset),
                message: describe(error.message(), key.as_deref()),
                key,
            }
        };
        let config: Config = toml::from_str(text).map_err(invalid)?;
        // Parsing again as a plain table cannot fail once the typed parse
        // succeeded; it tells which keys were written.
        let table: toml::Table = toml::from_str(text).map_err(invalid)?;
        let mut keys = BTreeSet::new();
        for (key, value) in &table {
            if let toml::Value::Table(inner) = value {
                keys.extend(inner.keys().map(|k| format!("{key}.{k}")));
            }
            keys.insert(key.clone());
        }
        Ok(Self {
            path: path.to_owned(),
            config,
            keys,
        })
    }

    /// Where the file was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration the file describes, defaults filled in.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the file sets `key` (dotted for the limits:
    /// `limits.chunk_bytes`).
    pub fn sets(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// 1-based line of the byte `offset`.
fn line_number(text: &str, offset: usize) -> usize {
    text.bytes().take(offset).filter(|&b| b == b'\n').count() + 1
}

/// The dotted key written on the line holding `offset`: the key before `=`,
/// inside the table opened last above it, or the table name on a `[table]`
/// line. `None` when the line holds no key.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.lines().next().unwrap_or("");
    let line = line.trim();
    if let Some(table) = table_name(line) {
        return Some(table.to_owned());
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let table = text
        .get(..start)?
        .lines()
        .rev()
        .find_map(|l| table_name(l.trim()));
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

/// `limits` for a `[limits]` line.
fn table_name(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('[')?.split(']').next()?;
    (!inner.starts_with('[')).then(|| inner.trim())
}

/// Turns the TOML library's message into one about the user's key:
/// "unknown field `x`" becomes "unknown key limits.x", and type errors are
/// prefixed with the key they concern.
fn describe(message: &str, key: Option<&str>) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected = rest.split_once(", ").map_or("", |(_, e)| e);
        let key = key.unwrap_or_else(|| rest.split('`').next().unwrap_or(rest));
        return if expected.is_empty() {
            format!("unknown key {key}")
        } else {
            format!("unknown key {key}; {}", expected.replace('`', ""))
        };
    }
    let message = message
        .replace("expected u16", "expected a whole number from 0 to 65535")
        .replace("expected u64", "expected a whole number of 0 or more")
        .replace("expected usize", "expected a whole number of 0 or more");
    match key {
        Some(key) => format!("{key}: {message}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfigFileError> {
        ConfigFile::parse(Path::new("test.toml"), text)
    }

    fn error(text: &str) -> (usize, Option<String>, String) {
        match parse(text) {
            Err(ConfigFileError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("{text:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let file = parse("# nothing\n").unwrap();
        assert_eq!(file.config(), &Config::default());
        assert!(!file.sets("port"));
    }

    #[test]
    fn values_and_the_keys_they_set() {
        let file =
            parse("port = 6000\nlog_level = \"debug\"\n\n[limits]\nmax_users = 8\n").unwrap();
        assert_eq!(file.config().port, 6000);
        assert_eq!(file.config().log_level, crate::config::LogLevel::Debug);
        assert_eq!(file.config().limits.max_users, 8);
        assert!(file.sets("port") && file.sets("limits.max_users"));
        assert!(!file.sets("timeout_ms") && !file.sets("limits.chunk_bytes"));
    }

    #[test]
    fn unknown_keys_are_named_with_their_table() {
        let (line, key, message) = error("port = 1\nprot = 5555\n");
        assert_eq!((line, key.as_deref()), (2, Some("prot")));
        assert!(
            message.starts_with("unknown key prot; expected one of"),
            "{message}"
        );
        assert!(message.contains("port"), "{message}");

        let (line, key, message) = error("[limits]\n\nbogus = 1\n");
        assert_eq!((line, key.as_deref()), (3, Some("limits.bogus")));
        assert!(
            message.starts_with("unknown key limits.bogus;"),
            "{message}"
        );

        let (_, key, _) = error("[limitz]\n");
        assert_eq!(key.as_deref(), Some("limitz"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let (line, key, message) = error("\nport = \"abc\"\n");
        assert_eq!((line, key.as_deref()), (2, Some("port")));
        assert!(message.starts_with("port: invalid type"), "{message}");

        let (_, _, message) = error("port = 70000\n");
        assert!(message.contains("0 to 65535"), "{message}");

        let (_, key, message) = error("[limits]\nchunk_bytes = -1\n");
        assert_eq!(key.as_deref(), Some("limits.chunk_bytes"));
        assert!(message.starts_with("limits.chunk_bytes: "), "{message}");

        let (_, key, message) = error("log_level = \"LOUD\"\n");
        assert_eq!(key.as_deref(), Some("log_level"));
        assert!(
            message.contains("LOUD") && message.contains("WARNING"),
            "{message}"
        );
    }

    #[test]
    fn every_message_is_one_line_naming_the_file() {
        for text in [
            "prot = 1",
            "port = ",
            "port = 1\nport = 2",
            "bind = \"1.2.3\"",
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(
                message.starts_with("config file test.toml, line "),
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let message = ConfigFile::load(Path::new("no/such/file.toml"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("no/such/file.toml"), "{message}");
    }
}
