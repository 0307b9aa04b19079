//! What is wrong with the storage under a directory when writing fails:
//! no space, an exhausted quota, a read-only filesystem or a missing
//! permission. Each is said in words a person can act on, and none of them
//! is damage: the files are intact and load once the condition is fixed,
//! so the advice for damage (start from a backup) would throw work away.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{StatVfsMountFlags, statvfs};

/// Room to leave beyond what the files need, for the journal, a checkpoint
/// and the shared-memory index of the database.
const HEADROOM: u64 = 1 << 20;
/// Most bytes the probe writes to see whether the device takes a write.
const PROBE_BYTES: u64 = 64 << 10;

/// A condition of the storage that stops the server from writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The device is full: `available` bytes are free, about `needed` are
    /// wanted.
    NoSpace { available: u64, needed: u64 },
    /// The user's disk quota on the device is used up.
    Quota { needed: u64 },
    /// The filesystem is mounted read-only.
    ReadOnly,
    /// The server's user may not write `path`.
    Permission { path: PathBuf },
}

/// A condition, with the directory it is about: the message names both
/// what is wrong and what to do.
#[derive(Debug)]
pub struct Diagnosis {
    pub dir: PathBuf,
    pub condition: Condition,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        match &self.condition {
            Condition::NoSpace { available, needed } if needed > available => write!(
                f,
                "no space left on the device holding {dir}: free {} ({available} bytes are \
                 free, about {needed} are needed)",
                bytes(needed - available),
            ),
            Condition::NoSpace { available, .. } => write!(
                f,
                "no space left on the device holding {dir}: free some space (it refused a write \
                 with {available} bytes free: it may be out of inodes, or the rest is reserved)"
            ),
            Condition::Quota { needed } => write!(
                f,
                "the disk quota of this server's user on the device holding {dir} is used up: \
                 free {} of that user's files there, or raise the quota",
                bytes(*needed)
            ),
            Condition::ReadOnly => write!(
                f,
                "the device holding {dir} is mounted read-only: remount it read-write, or give \
                 the server another --data-dir"
            ),
            Condition::Permission { path } => write!(
                f,
                "this server's user (uid {}) may not write {}: give it write access to {dir} \
                 (chown or chmod), or give the server another --data-dir",
                rustix::process::getuid().as_raw(),
                path.display()
            ),
        }
    }
}

/// "1,234,567 bytes (1.2 MiB)".
fn bytes(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!(
        "{grouped} bytes ({:.1} MiB)",
        n as f64 / f64::from(1u32 << 20)
    )
}

/// How much room the database `file` (with its journal) needs to be opened
/// and written: twice its size (opening may compact it, which rewrites
/// it) plus the journal and some headroom.
pub fn room_for(file: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    size(file)
        .saturating_mul(2)
        .saturating_add(size(Path::new(&wal)))
        .saturating_add(HEADROOM)
}

/// The condition an I/O error shows, when it shows one.
pub fn of_io_error(error: &io::Error, path: &Path, needed: u64, dir: &Path) -> Option<Condition> {
    match error.kind() {
        io::ErrorKind::StorageFull => Some(Condition::NoSpace {
            available: available(dir).unwrap_or(0),
            needed,
        }),
        io::ErrorKind::QuotaExceeded => Some(Condition::Quota { needed }),
        io::ErrorKind::ReadOnlyFilesystem => Some(Condition::ReadOnly),
        io::ErrorKind::PermissionDenied => Some(Condition::Permission {
            path: path.to_owned(),
        }),
        _ => None,
    }
}

/// Finds out why writing under `dir` fails, when a library (SQLite) gave
/// no reason a person can act on: asks the filesystem how much is free and
/// whether it is read-only, then writes a small file there to see what
/// the system says. `None` when nothing is wrong that way.
pub fn probe(dir: &Path, needed: u64) -> Option<Condition> {
    if let Ok(stats) = statvfs(dir)
        && stats.f_flag.contains(StatVfsMountFlags::RDONLY)
    {
        return Some(Condition::ReadOnly);
    }
    let path = dir.join(format!(".write-probe-{}", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut file| {
        file.write_all(&vec![0; PROBE_BYTES.min(needed) as usize])?;
        file.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    if let Err(e) = written {
        return of_io_error(&e, dir, needed, dir);
    }
    match available(dir) {
        Some(free) if free < needed => Some(Condition::NoSpace {
            available: free,
            needed,
        }),
        _ => None,
    }
}

/// Bytes an unprivileged user may still write on the device holding `dir`.
fn available(dir: &Path) -> Option<u64> {
    let stats = statvfs(dir).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_condition_says_what_to_do() {
        let dir = PathBuf::from("/srv/data");
        let said = |condition| {
            Diagnosis {
                dir: dir.clone(),
                condition,
            }
            .to_string()
        };
        let full = said(Condition::NoSpace {
            available: 1000,
            needed: 1_049_576,
        });
        assert!(
            full.starts_with(
                "no space left on the device holding /srv/data: free 1,048,576 bytes (1.0 MiB)"
            ),
            "{full}"
        );
        assert!(said(Condition::ReadOnly).contains("read-only: remount it read-write"));
        let denied = said(Condition::Permission {
            path: dir.join("lock"),
        });
        assert!(denied.contains("may not write /srv/data/lock"), "{denied}");
        assert!(said(Condition::Quota { needed: 5 }).contains("quota"));
        for text in [full, denied] {
            assert!(!text.contains("damaged"), "{text}");
        }
    }

    #[test]
    fn io_errors_name_their_condition() {
        let dir = Path::new("/");
        let of = |kind| of_io_error(&io::Error::from(kind), dir, 10, dir);
        assert!(matches!(
            of(io::ErrorKind::StorageFull),
            Some(Condition::NoSpace { needed: 10, .. })
        ));
        assert_eq!(
            of(io::ErrorKind::QuotaExceeded),
            Some(Condition::Quota { needed: 10 })
        );
        assert_eq!(
            of(io::ErrorKind::ReadOnlyFilesystem),
            Some(Condition::ReadOnly)
        );
        assert!(matches!(
            of(io::ErrorKind::PermissionDenied),
            Some(Condition::Permission { .. })
        ));
        assert_eq!(of(io::ErrorKind::InvalidData), None);
    }

    #[test]
    fn a_writable_directory_with_room_has_no_condition() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(probe(dir.path(), 4096), None);
        assert!(
            std::fs::read_dir(dir.path())
                .expect("list")
                .next()
                .is_none(),
            "the probe leaves nothing behind"
        );
    }
}
