//! A room's password: recorded as an Argon2id hash (a PHC string) so that
//! the data directory never holds it in clear, and checked in memory
//! against a digest once it is known.

use std::cell::OnceCell;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use super::auth::Secret;

/// A room's password.
pub struct RoomPassword {
    /// What the room's record holds: `$argon2id$v=19$m=...$salt$hash`.
    recorded: String,
    /// The password's digest, once it was given at creation or matched the
    /// hash: later checks cost a digest instead of an Argon2 run, which
    /// takes tens of milliseconds on purpose.
    known: OnceCell<Secret>,
}

impl std::fmt::Debug for RoomPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomPassword(..)")
    }
}

impl RoomPassword {
    /// A new password, hashed with a random salt.
    pub fn new(password: &str) -> Self {
        let salt_bytes: [u8; 16] = rand::random();
        // Encoding 16 bytes and hashing with the default parameters cannot
        // fail;
        // a digest of nothing would be worse than a password of nothing,
        // so that case keeps a hash no password matches.
        let recorded = SaltString::encode_b64(&salt_bytes)
            .and_then(|salt| {
                Argon2::default()
                    .hash_password(password.as_bytes(), &salt)
                    .map(|hash| hash.to_string())
            })
            .unwrap_or_default();
        let known = OnceCell::new();
        let _ = known.set(Secret::new(password));
        Self { recorded, known }
    }

    /// The password as a room's record holds it. A record written before
    /// passwords were hashed holds the password itself: it is hashed now,
    /// and `true` says the record should be written again.
    pub fn from_record(text: &str) -> (Self, bool) {
        if PasswordHash::new(text).is_ok() {
            let password = Self {
                recorded: text.to_owned(),
                known: OnceCell::new(),
            };
            (password, false)
        } else {
            (Self::new(text), true)
        }
    }

    /// What to record.
    pub fn recorded(&self) -> &str {
        &self.recorded
    }

    /// Whether `given` is the password (a missing one is the empty one).
    pub fn matches(&self, given: Option<&str>) -> bool {
        let given = given.unwrap_or_default();
        if let Some(known) = self.known.get() {
            return known.matches(Some(given));
        }
        let Ok(hash) = PasswordHash::new(&self.recorded) else {
            return false;
        };
        let right = Argon2::default()
            .verify_password(given.as_bytes(), &hash)
            .is_ok();
        if right {
            let _ = self.known.set(Secret::new(given));
        }
        right
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_a_salted_hash_that_checks_the_password() {
        let password = RoomPassword::new("layout-team");
        assert!(password.recorded().starts_with("$argon2id$"));
        assert!(!password.recorded().contains("layout-team"));
        assert_ne!(
            password.recorded(),
            RoomPassword::new("layout-team").recorded(),
            "salted"
        );
        let (restored, rewrite) = RoomPassword::from_record(password.recorded());
        assert!(!rewrite);
        assert!(!restored.matches(Some("guess")));
        assert!(!restored.matches(None));
        assert!(restored.matches(Some("layout-team")));
        assert!(restored.matches(Some("layout-team")), "from the digest now");
        assert!(!restored.matches(Some("guess")));
    }

    #[test]
    fn a_password_recorded_in_clear_is_hashed() {
        let (password, rewrite) = RoomPassword::from_record("old-style");
        assert!(rewrite);
        assert!(password.recorded().starts_with("$argon2id$"));
        assert!(password.matches(Some("old-style")));
    }
}
