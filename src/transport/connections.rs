//! The TCP connections libzmq accepted on the four ports, as its socket
//! monitors report them: caps on those that have not logged in, and a way
//! out when the process runs out of descriptors.
//!
//! libzmq accepts every connection itself, so an idle host can open
//! thousands and use up the server's descriptors before anyone logs in.
//! Each address may hold four connections per user logged in from it plus
//! `max_unauthenticated_per_address`; all addresses together, four per
//! user plus `max_unauthenticated_total`. A connection past a cap is shut
//! down as soon as it is reported (its peer sees it closed). The caps are
//! part of what [`crate::descriptors::needed`] counts, so within them the
//! server does not run out.
//!
//! Should it run out anyway (a burst faster than the caps act), libzmq's
//! listener fails `accept` with EMFILE and, its descriptor still readable,
//! tries again at once, forever: an I/O thread spinning at a full core. On
//! the first such report the transport frees the descriptor it keeps in
//! reserve, accepts and closes what waits on each listener, and takes the
//! reserve back, so the listeners fall quiet until a new connection comes.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

/// Descriptors a logged-in user holds: one connection per channel.
const PER_USER: usize = 4;
/// Least time between two warnings about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The caps, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub per_address: usize,
    pub total: usize,
}

/// The connections and the users logged in, by address.
#[derive(Debug)]
pub struct Connections {
    caps: Caps,
    /// Every connection known to be open: its descriptor, peer address.
    open: HashMap<RawFd, IpAddr>,
    per_address: HashMap<IpAddr, usize>,
    /// Users logged in, by address.
    users: HashMap<IpAddr, usize>,
    users_total: usize,
    /// The listeners' descriptors, for draining them when descriptors run
    /// out.
    listeners: Vec<RawFd>,
    /// A descriptor held only to be given up when the process has no other.
    reserve: Option<File>,
    /// Refused since the last warning, and when that was.
    refused: usize,
    warned: Option<Instant>,
}

/// What to do with a connection just accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Past a cap: shut it down.
    Refuse,
}

impl Connections {
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            open: HashMap::new(),
            per_address: HashMap::new(),
            users: HashMap::new(),
            users_total: 0,
            listeners: Vec::new(),
            reserve: File::open("/dev/null").ok(),
            refused: 0,
            warned: None,
        }
    }

    /// A user logged in from `address` (`delta` 1) or left (-1).
    pub fn users_changed(&mut self, address: IpAddr, delta: isize) {
        let entry = self.users.entry(address).or_default();
        *entry = entry.saturating_add_signed(delta);
        if *entry == 0 {
            self.users.remove(&address);
        }
        self.users_total = self.users_total.saturating_add_signed(delta);
    }

    /// Records a connection; says whether the caps admit it.
    pub fn accepted(&mut self, fd: RawFd, address: IpAddr) -> Verdict {
        // A descriptor number is reused only once libzmq closed the
        // connection that had it: closes libzmq does not report (a
        // connection replaced by another with its identity) end here.
        self.closed(fd);
        self.open.insert(fd, address);
        *self.per_address.entry(address).or_default() += 1;
        if self.admits(address) {
            return Verdict::Keep;
        }
        // Connections closed without a report may still be counted.
        self.forget_closed(|other, a| other != fd && a == address);
        if !self.admits(address) {
            self.closed(fd);
            return Verdict::Refuse;
        }
        Verdict::Keep
    }

    fn admits(&self, address: IpAddr) -> bool {
        let users = self.users.get(&address).copied().unwrap_or(0);
        let here = self.per_address.get(&address).copied().unwrap_or(0);
        here <= self.caps.per_address + PER_USER * users
            && self.open.len() <= self.caps.total + PER_USER * self.users_total
    }

    /// A connection closed.
    pub fn closed(&mut self, fd: RawFd) {
        if let Some(address) = self.open.remove(&fd)
            && let Some(count) = self.per_address.get_mut(&address)
        {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&address);
            }
        }
    }

    /// Drops the records, among those `which` selects (by descriptor and
    /// address), of connections whose descriptor no longer holds that peer.
    fn forget_closed(&mut self, which: impl Fn(RawFd, IpAddr) -> bool) {
        let gone: Vec<RawFd> = self
            .open
            .iter()
            .filter(|(fd, address)| which(**fd, **address) && peer(**fd) != Some(**address))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in gone {
            self.closed(fd);
        }
    }

    pub fn listening(&mut self, fd: RawFd) {
        self.listeners.push(fd);
    }

    /// Counts a refusal; true when it is time to say so in the log.
    pub fn refusal_to_report(&mut self, now: Instant) -> Option<usize> {
        self.refused += 1;
        if self
            .warned
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return None;
        }
        self.warned = Some(now);
        Some(std::mem::take(&mut self.refused))
    }

    /// The process ran out of descriptors: closes what waits on every
    /// listener, with the reserve descriptor given up for the time it
    /// takes. Returns how many connections were refused.
    #[allow(unsafe_code)]
    pub fn out_of_descriptors(&mut self) -> usize {
        drop(self.reserve.take());
        let mut refused = 0;
        for &listener in &self.listeners {
            // SAFETY: the descriptor is the listener libzmq opened when it
            // bound, which stays open until the socket closes, after the
            // transport stops reading events. `accept` only takes a
            // connection from it (it is non-blocking, so it never waits).
            let listener = unsafe { BorrowedFd::borrow_raw(listener) };
            while let Ok(connection) = rustix::net::accept(listener) {
                drop(connection);
                refused += 1;
            }
        }
        self.reserve = File::open("/dev/null").ok();
        refused
    }
}

/// The peer address of the connection on `fd`, if it is a connected socket.
#[allow(unsafe_code)]
pub fn peer(fd: RawFd) -> Option<IpAddr> {
    // SAFETY: the descriptor is one libzmq reported as a connection it
    // accepted; its thread may have closed it since, and the number may
    // even be reused. `getpeername` only reads the socket's address: on a
    // closed descriptor it fails, and on a reused one it gives that
    // socket's peer, which is what the caller checks against.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let address = rustix::net::getpeername(fd).ok()??;
    SocketAddr::try_from(address)
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// Shuts down the connection on `fd` if it still goes to `address`:
/// libzmq then reads its end and closes it.
#[allow(unsafe_code)]
pub fn shut_down(fd: RawFd, address: IpAddr) {
    if peer(fd) != Some(address) {
        return;
    }
    // SAFETY: as in `peer`; the descriptor was just seen to hold a
    // connection to `address`, and shutting it down does not close it, so
    // libzmq's own close stays the only one.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Caps {
        Caps {
            per_address: 4,
            total: 6,
        }
    }

    // Descriptors that hold no socket: `peer` finds no address for them,
    // so records of them count as closed when a cap is checked again.
    const FAKE: RawFd = 1_000_000;

    #[test]
    fn an_address_holds_its_cap_plus_four_per_user() {
        let mut c = Connections::new(caps());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        c.users_changed(a, 1);
        for fd in 0..8 {
            assert_eq!(c.accepted(FAKE + fd, a), Verdict::Keep, "{fd}");
        }
        // The ninth: the records of fake descriptors are dropped as closed,
        // so it is admitted; a real host's ninth would not be.
        assert_eq!(c.accepted(FAKE + 8, a), Verdict::Keep);
        assert_eq!(c.open.len(), 1, "records of closed descriptors are gone");
    }

    #[test]
    fn the_total_cap_counts_every_address() {
        let mut c = Connections::new(caps());
        for i in 0..7 {
            let a = IpAddr::from([10, 0, 0, i]);
            c.open.insert(FAKE + RawFd::from(i), a);
            *c.per_address.entry(a).or_default() += 1;
        }
        assert!(!c.admits(IpAddr::from([10, 0, 0, 6])), "7 open, 6 allowed");
        c.users_changed(IpAddr::from([10, 0, 0, 1]), 1);
        assert!(
            c.admits(IpAddr::from([10, 0, 0, 9])),
            "a user brings four more"
        );
    }

    #[test]
    fn reused_descriptors_replace_their_record() {
        let mut c = Connections::new(caps());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        c.accepted(FAKE, a);
        c.accepted(FAKE, b);
        assert_eq!(c.per_address.get(&a), None);
        assert_eq!(c.per_address.get(&b), Some(&1));
        c.closed(FAKE);
        assert!(c.open.is_empty() && c.per_address.is_empty());
    }

    #[test]
    fn refusals_are_reported_at_most_every_ten_seconds() {
        let mut c = Connections::new(caps());
        let t = Instant::now();
        assert_eq!(c.refusal_to_report(t), Some(1));
        assert_eq!(c.refusal_to_report(t + Duration::from_secs(1)), None);
        assert_eq!(c.refusal_to_report(t + Duration::from_secs(2)), None);
        assert_eq!(c.refusal_to_report(t + WARN_EVERY), Some(3));
    }
}
