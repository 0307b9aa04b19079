//! CURVE keys: the server's long-term key pair, public keys as text (Z85,
//! as libzmq and pyzmq write them) and their fingerprints.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Characters of a key written in Z85 (32 bytes).
pub const KEY_TEXT_LEN: usize = 40;
/// Z85's alphabet (ZeroMQ RFC 32).
const Z85: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
/// RFC 4648's base32 alphabet: no 0/O or 1/I/l to mix up over the phone.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Why a key could not be read, written or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{text:?} is not a CURVE key: a key is 40 characters of Z85 (letters, digits and .-:+=^!/*?&<>()[]{{}}@%$#)"
    )]
    NotAKey { text: String },
    #[error("cannot read the server key {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the server key {} is not a key file: {reason}", .path.display())]
    Format { path: PathBuf, reason: String },
    #[error(
        "the server key {} can be read by other users (mode {mode:o}): whoever reads it can pose as this server; make it private with chmod 600 {}",
        .path.display(), .path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot write the server key {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("libzmq cannot make CURVE keys (was it built without libsodium?): {0}")]
    Curve(zmq::Error),
}

/// A CURVE public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key's 32 bytes, as libzmq takes them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key as 40 characters of Z85.
    pub fn to_text(&self) -> String {
        z85_encode(&self.0)
    }

    /// A short digest a person can read out and compare: the first 80 bits
    /// of the key's SHA-256 in base32, four groups of four
    /// (`K7QW-2MXP-AZ4D-TRNE`). A different key with the same fingerprint
    /// would take about 2^80 tries to find.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0);
        let mut bits: u128 = 0;
        for &byte in digest.iter().take(10) {
            bits = (bits << 8) | u128::from(byte);
        }
        let mut out = String::with_capacity(19);
        for i in 0..16 {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            let index = ((bits >> (75 - 5 * i)) & 31) as usize;
            out.push(char::from(BASE32[index]));
        }
        out
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        z85_decode(text.trim()).map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// The server's long-term key pair. Its `Debug` shows only the public half.
#[derive(Clone)]
pub struct KeyPair {
    public: PublicKey,
    secret: [u8; 32],
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The key file as written: TOML, both halves in Z85.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    public_key: String,
    secret_key: String,
}

/// How [`KeyPair::load_or_create`] found the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Loaded,
    Created,
}

impl KeyPair {
    /// A new random key pair (libzmq's, from libsodium).
    pub fn generate() -> Result<Self, KeyError> {
        let pair = zmq::CurveKeyPair::new().map_err(KeyError::Curve)?;
        Ok(Self {
            public: PublicKey(pair.public_key),
            secret: pair.secret_key,
        })
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret half, for libzmq's `ZMQ_CURVE_SECRETKEY`.
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// Reads the key file at `path`, or creates one there (readable by its
    /// owner only) when there is none.
    pub fn load_or_create(path: &Path) -> Result<(Self, Origin), KeyError> {
        match fs::symlink_metadata(path) {
            Ok(_) => Self::load(path).map(|pair| (pair, Origin::Loaded)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair = Self::generate()?;
                pair.write_new(path)?;
                Ok((pair, Origin::Created))
            }
            Err(source) => Err(KeyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Reads a key file. Refused when other users may read it, as SSH
    /// refuses such private keys, or when its two halves do not match.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let mode = fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read)?;
        let format = |reason: String| KeyError::Format {
            path: path.to_owned(),
            reason,
        };
        let file: KeyFile = toml::from_str(&text).map_err(|e| format(e.message().to_owned()))?;
        let secret = z85_decode(&file.secret_key)
            .map_err(|_| format("secret_key is not 40 characters of Z85".to_owned()))?;
        let stated = z85_decode(&file.public_key)
            .map_err(|_| format("public_key is not 40 characters of Z85".to_owned()))?;
        let public = public_of(&secret)?;
        if public.0 != stated {
            return Err(format(
                "public_key is not the public half of secret_key".to_owned(),
            ));
        }
        Ok(Self { public, secret })
    }

    /// Writes the pair to a new file at `path`, mode 600, through a
    /// temporary file renamed into place so that a crash leaves no half
    /// key.
    fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let write = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(write)?;
        }
        let text = format!(
            "# replication-serve's server key. Keep it secret: whoever holds it can pose\n\
             # as this server. Clients know the server by its public key.\n{}",
            toml::to_string(&KeyFile {
                public_key: self.public.to_text(),
                secret_key: z85_encode(&self.secret),
            })
            .map_err(|e| write(std::io::Error::other(e)))?
        );
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(write)?;
        file.write_all(text.as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        fs::rename(&temporary, path).map_err(write)
    }
}

// libzmq's (zmq.h); zmq-sys declares it but does not export it.
#[allow(unsafe_code)]
unsafe extern "C" {
    fn zmq_curve_public(
        z85_public_key: *mut std::ffi::c_char,
        z85_secret_key: *const std::ffi::c_char,
    ) -> std::ffi::c_int;
}

/// The public key of a secret key (libzmq's `zmq_curve_public`).
#[allow(unsafe_code)]
fn public_of(secret: &[u8; 32]) -> Result<PublicKey, KeyError> {
    let secret_text = std::ffi::CString::new(z85_encode(secret))
        .map_err(|_| KeyError::Curve(zmq::Error::EINVAL))?;
    let mut public_text = [0u8; KEY_TEXT_LEN + 1];
    // SAFETY: libzmq reads the 40 characters and the NUL of a live CString
    // and writes 41 bytes (40 and a NUL) into a live buffer of that size.
    let rc = unsafe { zmq_curve_public(public_text.as_mut_ptr().cast(), secret_text.as_ptr()) };
    if rc != 0 {
        return Err(KeyError::Curve(zmq::Error::EINVAL));
    }
    let text = std::str::from_utf8(&public_text[..KEY_TEXT_LEN])
        .map_err(|_| KeyError::Curve(zmq::Error::EINVAL))?;
    z85_decode(text).map(PublicKey)
}

/// Z85-encodes 32 bytes into 40 characters.
fn z85_encode(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(KEY_TEXT_LEN);
    for chunk in bytes.chunks_exact(4) {
        let mut value = chunk.iter().fold(0u32, |v, &b| (v << 8) | u32::from(b));
        let mut digits = [0u8; 5];
        for digit in digits.iter_mut().rev() {
            *digit = Z85[(value % 85) as usize];
            value /= 85;
        }
        out.extend(digits.iter().map(|&d| char::from(d)));
    }
    out
}

/// Decodes 40 characters of Z85 into 32 bytes; anything else is refused.
fn z85_decode(text: &str) -> Result<[u8; 32], KeyError> {
    let not_a_key = || KeyError::NotAKey {
        text: text.chars().take(64).collect(),
    };
    if text.len() != KEY_TEXT_LEN {
        return Err(not_a_key());
    }
    let mut out = [0u8; 32];
    for (chunk, bytes) in text.as_bytes().chunks_exact(5).zip(out.chunks_exact_mut(4)) {
        let mut value: u64 = 0;
        for &c in chunk {
            let digit = Z85.iter().position(|&z| z == c).ok_or_else(not_a_key)?;
            value = value * 85 + digit as u64;
        }
        let value = u32::try_from(value).map_err(|_| not_a_key())?;
        bytes.copy_from_slice(&value.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of ZeroMQ RFC 32.
    #[test]
    fn z85_matches_the_rfc_and_libzmq() {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&[0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]);
        assert!(z85_encode(&bytes).starts_with("HelloWorld"));
        let pair = zmq::CurveKeyPair::new().unwrap();
        let text = zmq::z85_encode(&pair.public_key).unwrap();
        assert_eq!(z85_encode(&pair.public_key), text);
        assert_eq!(z85_decode(&text).unwrap(), pair.public_key);
    }

    #[test]
    fn bad_keys_are_refused() {
        for text in [
            "",
            "short",
            &"a".repeat(39),
            &"~".repeat(40),
            &"#".repeat(40),
        ] {
            assert!(text.parse::<PublicKey>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn fingerprints_are_four_groups_of_base32() {
        let key = PublicKey([7; 32]);
        let fingerprint = key.fingerprint();
        assert_eq!(fingerprint.len(), 19);
        assert!(
            fingerprint
                .split('-')
                .all(|g| g.len() == 4 && g.bytes().all(|b| BASE32.contains(&b))),
            "{fingerprint}"
        );
        assert_ne!(fingerprint, PublicKey([8; 32]).fingerprint());
    }

    #[test]
    fn a_key_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/server.key");
        let (made, origin) = KeyPair::load_or_create(&path).unwrap();
        assert_eq!(origin, Origin::Created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (read, origin) = KeyPair::load_or_create(&path).unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(read.public(), made.public());
        assert_eq!(read.secret_bytes(), made.secret_bytes());
        assert!(!format!("{read:?}").contains(&z85_encode(read.secret_bytes())));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyPair::load(&path),
            Err(KeyError::Exposed { .. })
        ));
    }

    #[test]
    fn a_key_file_whose_halves_differ_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let text = format!(
            "public_key = \"{}\"\nsecret_key = \"{}\"\n",
            a.public(),
            z85_encode(b.secret_bytes())
        );
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let error = KeyPair::load(&path).unwrap_err().to_string();
        assert!(error.contains("not the public half"), "{error}");
    }
}
