//! Password checks and the throttle that slows down guessing.
//!
//! Every secret is throttled on its own, per place: the admin password,
//! the server password and each room's password. A success clears nothing:
//! knowing a password now says nothing about who made the earlier wrong
//! guesses from the same place, so an attacker cannot wipe its record by
//! mixing in logins it is allowed to make. Failures are forgotten only
//! after [`FORGET_AFTER`] without another one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Failures allowed before guesses from one place are delayed.
const FREE_FAILURES: u32 = 3;
/// The first lockout; each further failure doubles it.
const FIRST_LOCKOUT: Duration = Duration::from_millis(500);
/// Longest lockout after repeated failures.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(30);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most records kept at once; beyond this, those not locked are forgotten.
const MAX_ENTRIES: usize = 10_000;

/// A password, kept only as its SHA-256 digest. Comparing digests takes
/// the same time whatever the lengths of the two passwords: comparing the
/// raw strings stops at a length mismatch, which tells a guesser the
/// password's length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    digest: [u8; 32],
}

impl Secret {
    pub fn new(password: &str) -> Self {
        Self {
            digest: Sha256::digest(password.as_bytes()).into(),
        }
    }

    /// Whether `given` is this password (a missing one is the empty one).
    pub fn matches(&self, given: Option<&str>) -> bool {
        let given: [u8; 32] = Sha256::digest(given.unwrap_or_default().as_bytes()).into();
        bool::from(self.digest.ct_eq(&given))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Which password a guess was at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded<'a> {
    Server,
    Admin,
    Room(&'a str),
}

/// Where guesses come from: the peer's address, with an IPv6 address cut
/// to its /64 (one host usually has a whole /64 to pick addresses from);
/// the routing identity when the address is unknown.
pub fn place(peer_address: Option<&str>, identity: &[u8]) -> String {
    match peer_address.map(|a| a.parse::<IpAddr>()) {
        Some(Ok(IpAddr::V6(v6))) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(Ok(IpAddr::V6(v6))) => v6
            .to_ipv4_mapped()
            .map_or_else(String::new, |v4| v4.to_string()),
        Some(Ok(ip)) => ip.to_string(),
        Some(Err(_)) => peer_address.unwrap_or_default().to_owned(),
        None => identity.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Attempts {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// Failed guesses per place and secret.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    records: HashMap<String, Attempts>,
}

fn key(place: &str, secret: Guarded<'_>) -> String {
    match secret {
        Guarded::Server => format!("{place}\0server"),
        Guarded::Admin => format!("{place}\0admin"),
        Guarded::Room(room) => format!("{place}\0room\0{room}"),
    }
}

impl LoginThrottle {
    /// How long `place` must still wait before its next guess at `secret`
    /// is checked.
    pub fn wait(&self, place: &str, secret: Guarded<'_>, now: Instant) -> Option<Duration> {
        let until = self.records.get(&key(place, secret))?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a wrong guess; after a few, each one doubles the wait.
    pub fn failed(&mut self, place: &str, secret: Guarded<'_>, now: Instant) {
        if self.records.len() >= MAX_ENTRIES {
            self.forget(now);
            self.records
                .retain(|_, a| a.locked_until.is_some_and(|t| t > now));
        }
        let entry = self.records.entry(key(place, secret)).or_insert(Attempts {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures >= FREE_FAILURES {
            let exponent = (entry.failures - FREE_FAILURES).min(10);
            let lockout = (FIRST_LOCKOUT * 2u32.pow(exponent)).min(MAX_LOCKOUT);
            entry.locked_until = Some(now + lockout);
        }
    }

    /// Drops records of old failures.
    pub fn forget(&mut self, now: Instant) {
        self.records
            .retain(|_, a| now.duration_since(a.last_failure) < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_compare_exactly() {
        let admin = Secret::new("admin");
        assert!(admin.matches(Some("admin")));
        assert!(!admin.matches(Some("admin ")));
        assert!(!admin.matches(Some("admi")));
        assert!(!admin.matches(None));
        assert!(Secret::new("").matches(None));
        assert!(Secret::new("").matches(Some("")));
    }

    /// What is compared is a digest of a fixed size, whatever the lengths
    /// of the password and the guess: nothing stops early at a length
    /// mismatch.
    #[test]
    fn passwords_are_kept_and_compared_as_fixed_size_digests() {
        let short = Secret::new("a");
        let long = Secret::new(&"x".repeat(100_000));
        assert_eq!(std::mem::size_of_val(&short), 32);
        assert_eq!(short.digest.len(), long.digest.len());
        assert!(long.matches(Some(&"x".repeat(100_000))));
        assert!(!long.matches(Some(&"x".repeat(99_999))));
        assert_eq!(format!("{short:?}"), "Secret(..)");
    }

    #[test]
    fn repeated_failures_lock_out_with_growing_waits() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        let admin = Guarded::Admin;
        t.failed("1.2.3.4", admin, now);
        t.failed("1.2.3.4", admin, now);
        assert_eq!(t.wait("1.2.3.4", admin, now), None);
        t.failed("1.2.3.4", admin, now);
        let first = t.wait("1.2.3.4", admin, now).unwrap();
        t.failed("1.2.3.4", admin, now);
        let second = t.wait("1.2.3.4", admin, now).unwrap();
        assert!(second > first);
        assert_eq!(
            t.wait("5.6.7.8", admin, now),
            None,
            "other places are unaffected"
        );
        assert_eq!(t.wait("1.2.3.4", admin, now + MAX_LOCKOUT), None);
        t.forget(now + FORGET_AFTER);
        t.failed("1.2.3.4", admin, now + FORGET_AFTER);
        assert_eq!(
            t.wait("1.2.3.4", admin, now + FORGET_AFTER),
            None,
            "forgotten after a quiet while"
        );
    }

    #[test]
    fn each_secret_is_counted_on_its_own() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..3 {
            t.failed("1.2.3.4", Guarded::Admin, now);
        }
        assert!(t.wait("1.2.3.4", Guarded::Admin, now).is_some());
        assert_eq!(t.wait("1.2.3.4", Guarded::Server, now), None);
        assert_eq!(t.wait("1.2.3.4", Guarded::Room("a"), now), None);
        for _ in 0..3 {
            t.failed("1.2.3.4", Guarded::Room("a"), now);
        }
        assert!(t.wait("1.2.3.4", Guarded::Room("a"), now).is_some());
        assert_eq!(t.wait("1.2.3.4", Guarded::Room("b"), now), None);
    }

    #[test]
    fn ipv6_places_are_whole_64s() {
        assert_eq!(place(Some("1.2.3.4"), b"x"), "1.2.3.4");
        assert_eq!(
            place(Some("2001:db8:1:2:aaaa::1"), b"x"),
            place(Some("2001:db8:1:2:bbbb::9"), b"x")
        );
        assert_ne!(
            place(Some("2001:db8:1:2::1"), b"x"),
            place(Some("2001:db8:1:3::1"), b"x")
        );
        assert_eq!(place(Some("::ffff:1.2.3.4"), b"x"), "1.2.3.4");
        assert_eq!(place(None, &[1, 171]), "01ab");
    }
}
