//! The process's open-file limit (`RLIMIT_NOFILE`). Every client holds four
//! TCP connections, each a descriptor, and a common default soft limit is
//! 1024: a room of the documented 256 users would not fit. So at start the
//! server raises its soft limit to what its configured limits need (never
//! above the hard limit, which only root or the service manager can
//! raise), and refuses to start, saying what to change, when even the hard
//! limit is too low.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::Limits;

/// Descriptors of a client that has logged in: its four connections.
pub const PER_USER: u64 = 4;
/// Descriptors of each room's record: the database, its WAL and
/// shared-memory index and the lock file, and the checkpoint thread's own
/// connection to them, with room to spare.
pub const PER_ROOM: u64 = 8;
/// Everything else: standard streams, the log file, libzmq's sockets,
/// listeners and signalling descriptors, the runtime's, a backup being
/// written, and the descriptor kept in reserve for when they run out.
pub const BASE: u64 = 64;

/// What the configured limits need: a descriptor per connection of every
/// user the server admits, per connection that has not logged in yet (up
/// to their cap), and per file of every room.
pub fn needed(limits: &Limits) -> u64 {
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    PER_USER
        .saturating_mul(count(limits.max_users_total))
        .saturating_add(count(limits.max_unauthenticated_total))
        .saturating_add(PER_ROOM.saturating_mul(count(limits.max_rooms)))
        .saturating_add(BASE)
}

/// What an encrypting server needs: its heartbeat port is relayed
/// (`security::front`), which takes two descriptors more per connection
/// there (the client's and the relay's own to the heartbeat socket), and
/// three for a connection that has not logged in, whose libzmq end the
/// transport's caps do not count.
pub fn needed_encrypted(limits: &Limits) -> u64 {
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    needed(limits)
        .saturating_add(2u64.saturating_mul(count(limits.max_users_total)))
        .saturating_add(3u64.saturating_mul(count(limits.max_unauthenticated_total)))
}

/// Why the server cannot hold its configured limits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescriptorError {
    #[error(
        "the configured limits need {needed} open files, but the hard limit of this process is \
         {hard}: raise it (ulimit -Hn as root, LimitNOFILE= in a systemd unit, docker run \
         --ulimit nofile={needed}:{needed}), or lower limits.max_users_total (4 open files per \
         user) or limits.max_rooms"
    )]
    HardLimit { needed: u64, hard: u64 },
    #[error("cannot raise the open-file limit to {needed}: {reason}")]
    Raise { needed: u64, reason: String },
}

/// The limit in force after [`ensure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit now.
    pub soft: u64,
    /// What it was before, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft limit to `needed` if it is lower; fails when the hard
/// limit is lower.
pub fn ensure(needed: u64) -> Result<OpenFiles, DescriptorError> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    // None is "unlimited".
    let soft = current.unwrap_or(u64::MAX);
    let hard = maximum.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(OpenFiles {
            soft,
            raised_from: None,
        });
    }
    if hard < needed {
        return Err(DescriptorError::HardLimit { needed, hard });
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum,
        },
    )
    .map_err(|e| DescriptorError::Raise {
        needed,
        reason: e.to_string(),
    })?;
    Ok(OpenFiles {
        soft: needed,
        raised_from: Some(soft),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_per_user_plus_the_waiting_connections_and_the_rooms() {
        let limits = Limits::default();
        assert_eq!(
            needed(&limits),
            4 * 1024 + limits.max_unauthenticated_total as u64 + 8 * 64 + 64
        );
        let small = Limits {
            max_users_total: 10,
            max_unauthenticated_total: 20,
            max_rooms: 2,
            ..Limits::default()
        };
        assert_eq!(needed(&small), 40 + 20 + 16 + 64);
    }

    #[test]
    fn a_hard_limit_too_low_says_what_to_change() {
        let message = DescriptorError::HardLimit {
            needed: 5000,
            hard: 4096,
        }
        .to_string();
        for part in ["5000 open files", "hard limit", "4096", "max_users_total"] {
            assert!(message.contains(part), "{message}");
        }
    }
}
