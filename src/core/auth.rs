//! Password checks and the throttle that slows down repeated failed logins.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// Failures allowed before logins from one place are delayed.
const FREE_FAILURES: u32 = 3;
/// Longest lockout after repeated failures.
const MAX_LOCKOUT: Duration = Duration::from_secs(30);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most places remembered at once; beyond this, those not locked are forgotten.
const MAX_ENTRIES: usize = 10_000;

/// Compares a password in constant time (for equal lengths).
pub fn password_matches(expected: &str, given: Option<&str>) -> bool {
    let given = given.unwrap_or_default();
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

#[derive(Debug, Clone, Copy)]
struct Attempts {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// Failed logins per remote address (or routing identity when the address
/// is unknown).
#[derive(Debug, Default)]
pub struct LoginThrottle {
    places: HashMap<String, Attempts>,
}

impl LoginThrottle {
    /// How long `place` must still wait before its next attempt is checked.
    pub fn wait(&self, place: &str, now: Instant) -> Option<Duration> {
        let until = self.places.get(place)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failed attempt; after a few, each failure doubles the wait.
    pub fn failed(&mut self, place: &str, now: Instant) {
        if self.places.len() >= MAX_ENTRIES {
            self.forget(now);
            self.places
                .retain(|_, a| a.locked_until.is_some_and(|t| t > now));
        }
        let entry = self.places.entry(place.to_owned()).or_insert(Attempts {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures >= FREE_FAILURES {
            let exponent = (entry.failures - FREE_FAILURES).min(10);
            let lockout = (Duration::from_millis(500) * 2u32.pow(exponent)).min(MAX_LOCKOUT);
            entry.locked_until = Some(now + lockout);
        }
    }

    /// A successful login clears the record.
    pub fn succeeded(&mut self, place: &str) {
        self.places.remove(place);
    }

    /// Drops records of old failures.
    pub fn forget(&mut self, now: Instant) {
        self.places
            .retain(|_, a| now.duration_since(a.last_failure) < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_compare_exactly() {
        assert!(password_matches("admin", Some("admin")));
        assert!(!password_matches("admin", Some("admin ")));
        assert!(!password_matches("admin", None));
        assert!(password_matches("", None));
    }

    #[test]
    fn repeated_failures_lock_out_with_growing_waits() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        t.failed("1.2.3.4", now);
        t.failed("1.2.3.4", now);
        assert_eq!(t.wait("1.2.3.4", now), None);
        t.failed("1.2.3.4", now);
        let first = t.wait("1.2.3.4", now).unwrap();
        t.failed("1.2.3.4", now);
        let second = t.wait("1.2.3.4", now).unwrap();
        assert!(second > first);
        assert_eq!(t.wait("5.6.7.8", now), None, "other places are unaffected");
        assert_eq!(t.wait("1.2.3.4", now + MAX_LOCKOUT), None);
        t.succeeded("1.2.3.4");
        assert_eq!(t.wait("1.2.3.4", now), None);
    }
}
