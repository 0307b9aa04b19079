//! Encryption and client authentication with ZeroMQ's CURVE.
//!
//! - [`key`]: the server's long-term key pair (made on first start in the
//!   data directory, or `--server-key FILE`), public keys in Z85 and their
//!   fingerprints.
//! - [`authorized`]: `--authorized-keys FILE`, the client keys admitted.
//! - [`service`]: the thread answering libzmq's authentication requests
//!   (ZAP) and the key service.
//! - [`front`]: the heartbeat port of an encrypting server, where plain
//!   connections reach the key service and CURVE ones the heartbeat socket.
//!
//! [`prepare`] decides from the configuration whether the server encrypts
//! and reads what that needs, before anything is bound.

pub mod authorized;
pub mod front;
pub mod key;
pub mod service;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use crate::config::{Config, Encryption};
use authorized::{AuthorizedKeys, AuthorizedKeysError};
use key::{KeyError, KeyPair, PublicKey};

/// Why encryption could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    AuthorizedKeys(#[from] AuthorizedKeysError),
    #[error(
        "--authorized-keys needs encryption, and this server does not encrypt ({0}): drop --authorized-keys or give --encryption required"
    )]
    KeysWithoutEncryption(&'static str),
    #[error("libzmq was built without CURVE, which --encryption {0} needs")]
    NoCurve(Encryption),
}

/// What an encrypting server needs before it binds.
#[derive(Debug, Clone)]
pub struct Encrypting {
    pub pair: KeyPair,
    /// Where the key file is, and whether it was made at this start.
    pub key_file: PathBuf,
    pub created: bool,
    /// The admitted client keys and their file, with `--authorized-keys`.
    pub authorized: Option<(PathBuf, AuthorizedKeys)>,
}

/// Reads (or makes) the server key and the admitted keys when the
/// configuration says the server encrypts; `None` when it does not.
pub fn prepare(config: &Config) -> Result<Option<Encrypting>, SecurityError> {
    if !config.encrypts() {
        if config.authorized_keys.is_some() {
            return Err(SecurityError::KeysWithoutEncryption(
                if config.encryption == Encryption::Off {
                    "--encryption off"
                } else {
                    "it listens on loopback only, where --encryption on does not encrypt"
                },
            ));
        }
        return Ok(None);
    }
    if zmq::has("curve") != Some(true) {
        return Err(SecurityError::NoCurve(config.encryption));
    }
    let key_file = config.server_key_file();
    let (pair, origin) = KeyPair::load_or_create(&key_file)?;
    let authorized = config
        .authorized_keys
        .as_ref()
        .map(|path| AuthorizedKeys::read(path).map(|keys| (path.clone(), keys)))
        .transpose()?;
    Ok(Some(Encrypting {
        pair,
        key_file,
        created: origin == key::Origin::Created,
        authorized,
    }))
}

/// What the console's `key` and `reload-keys` ask about.
#[derive(Debug, Clone, Default)]
pub struct Security {
    public: Option<PublicKey>,
    key_file: Option<PathBuf>,
    authorized_keys: Option<PathBuf>,
    reloads: Option<mpsc::SyncSender<service::Reload>>,
}

impl Security {
    pub fn new(
        encrypting: Option<&Encrypting>,
        reloads: mpsc::SyncSender<service::Reload>,
    ) -> Self {
        Self {
            public: encrypting.map(|e| e.pair.public()),
            key_file: encrypting.map(|e| e.key_file.clone()),
            authorized_keys: encrypting.and_then(|e| e.authorized.as_ref().map(|(p, _)| p.clone())),
            reloads: Some(reloads),
        }
    }

    /// The server's public key, when it encrypts.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.public
    }

    /// What the console's `key` prints.
    pub fn describe(&self) -> String {
        match (self.public, &self.key_file) {
            (Some(key), Some(file)) => {
                let mut out = format!(
                    "encryption: CURVE on all four ports\n\
                     public key:  {key}\n\
                     fingerprint: {}\n\
                     key file:    {}\n",
                    key.fingerprint(),
                    file.display()
                );
                match &self.authorized_keys {
                    Some(path) => out.push_str(&format!(
                        "clients:     only the keys in {} (reload-keys reads it again)\n",
                        path.display()
                    )),
                    None => out.push_str("clients:     any client key\n"),
                }
                out
            }
            _ => "encryption: off (this server has no key; see --encryption)\n".to_owned(),
        }
    }

    /// Reads the authorized keys again; what to print.
    pub fn reload(&self) -> String {
        if self.authorized_keys.is_none() {
            return "the server admits every client key: start it with --authorized-keys FILE to admit only listed ones\n".to_owned();
        }
        let Some(reloads) = &self.reloads else {
            return "the server is not running\n".to_owned();
        };
        let (reply, answer) = mpsc::sync_channel(1);
        if reloads.try_send(reply).is_err() {
            return "the security thread is busy or stopped; try again\n".to_owned();
        }
        match answer.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(count)) => format!("{count} authorized keys in force\n"),
            Ok(Err(e)) => format!("{e}\n"),
            Err(_) => "no answer from the security thread; try again\n".to_owned(),
        }
    }
}
