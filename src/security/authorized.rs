//! `--authorized-keys FILE`: the client public keys the server admits, one
//! per line with a comment, as SSH's `authorized_keys`:
//!
//! ```text
//! # the studio
//! rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7 alice's laptop
//! Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID bob
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::key::PublicKey;

/// Why the list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizedKeysError {
    #[error("cannot read the authorized keys {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} line {line}: {reason}; write one client public key (40 characters of Z85) per line, then a comment",
        .path.display()
    )]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// The admitted keys, each with its comment (who it is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizedKeys {
    keys: HashMap<PublicKey, String>,
}

impl AuthorizedKeys {
    /// Parses the file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthorizedKeysError> {
        let mut keys = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, comment) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(k, c)| (k, c.trim()));
            let error = |reason: String| AuthorizedKeysError::Line {
                path: path.to_owned(),
                line: number + 1,
                reason,
            };
            let key: PublicKey = key.parse().map_err(|e| error(format!("{e}")))?;
            keys.insert(key, comment.to_owned());
        }
        Ok(Self { keys })
    }

    /// Reads and parses the file.
    pub fn read(path: &Path) -> Result<Self, AuthorizedKeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthorizedKeysError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The comment of `key` when it is admitted.
    pub fn admits(&self, key: &PublicKey) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The file as last seen, to notice that it changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    /// The file's modification time and length; `None` when it cannot be
    /// looked at (then a change is noticed once it can).
    pub fn of(path: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::key::KeyPair;

    #[test]
    fn keys_with_comments_blank_lines_and_remarks() {
        let a = KeyPair::generate().unwrap().public();
        let b = KeyPair::generate().unwrap().public();
        let c = KeyPair::generate().unwrap().public();
        let text = format!("# the studio\n\n{a} alice's laptop\n  {b}\tbob  \n");
        let keys = AuthorizedKeys::parse(&text, Path::new("keys")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.admits(&a), Some("alice's laptop"));
        assert_eq!(keys.admits(&b), Some("bob"));
        assert_eq!(keys.admits(&c), None);
    }

    #[test]
    fn a_bad_line_is_named() {
        let a = KeyPair::generate().unwrap().public();
        let text = format!("{a} alice\nnot-a-key bob\n");
        let error = AuthorizedKeys::parse(&text, Path::new("keys"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("keys line 2: "), "{error}");
    }
}
