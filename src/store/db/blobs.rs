//! Large datablock data, kept in files of their own beside the database
//! (`blobs/N.bin`) rather than in its rows.
//!
//! SQLite copies a value bound to a statement and again into the row it
//! builds, then writes it to the WAL and, at the checkpoint, to the
//! database: a 512 MiB datablock cost three copies in memory and two writes
//! to the disk. A file is written once, straight from the datablock's own
//! buffer, and flushed (`fdatasync`) before the transaction whose row names
//! it commits, so that a committed row never names data that a power loss
//! could take. A file is only ever written whole under a new name; files
//! that rows stop naming are removed once that is committed, and files no
//! row names (a transaction that never committed) when the store opens.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Data of at least this many bytes goes into a file of its own.
pub const FILE_MIN_BYTES: usize = 1 << 20;
/// A file is written in pieces of this size, each sent to the disk as soon
/// as it is written.
const PIECE_BYTES: usize = 2 << 20;
/// The folder of the files, in the data directory.
const BLOBS_DIR: &str = "blobs";
const SUFFIX: &str = ".bin";

/// The files of one data directory.
#[derive(Debug)]
pub(super) struct Blobs {
    dir: PathBuf,
    /// The next file's number.
    next: u64,
    /// Files written in the open transaction: removed if it rolls back.
    written: Vec<String>,
    /// Files that rows of the open transaction stopped naming: removed once
    /// it commits.
    obsolete: Vec<String>,
}

impl Blobs {
    /// The files of the data directory `data_dir`. The folder is made now
    /// and never again: a record moved aside while its recorder writes (a
    /// room being closed) must not have its folder made anew where a new
    /// room of the same name may be recording.
    pub(super) fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join(BLOBS_DIR);
        std::fs::create_dir_all(&dir)?;
        let mut next = 0;
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            if let Some(n) = name.to_str().and_then(number) {
                next = next.max(n.saturating_add(1));
            }
        }
        Ok(Self {
            dir,
            next,
            written: Vec::new(),
            obsolete: Vec::new(),
        })
    }

    /// Writes `data` to a new file; returns its name. [`Blobs::sync`]
    /// flushes it.
    pub(super) fn write(&mut self, data: &[u8]) -> std::io::Result<String> {
        let name = format!("{}{SUFFIX}", self.next);
        self.next += 1;
        let path = self.dir.join(&name);
        let mut file = File::options().write(true).create_new(true).open(&path)?;
        self.written.push(name.clone());
        // Each piece goes to the disk as soon as it is written, and the
        // one before it must be on the disk before the next is written: the
        // disk always has a piece to write, and never more than two of
        // ours queued in front of another room's flush.
        let mut offset = 0;
        let mut previous = None;
        for piece in data.chunks(PIECE_BYTES) {
            file.write_all(piece)?;
            writeback(&file, offset, piece.len(), Wait::No);
            if let Some((at, len)) = previous.replace((offset, piece.len())) {
                writeback(&file, at, len, Wait::UntilWritten);
            }
            offset += piece.len();
        }
        Ok(name)
    }

    /// A file's data; `name` comes from a row, so it is checked to be one
    /// of ours before it is opened.
    pub(super) fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        if number(name).is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{name:?} is not the name of a data file"),
            ));
        }
        std::fs::read(self.dir.join(name))
    }

    /// The path of a file, for messages.
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A row of the open transaction no longer names `name`.
    pub(super) fn forget(&mut self, name: String) {
        self.obsolete.push(name);
    }

    /// Before the transaction commits: the new files, and their names, are
    /// flushed to the disk. They are flushed together rather than each as
    /// it is written: their writing to the disk started as they were
    /// written ([`writeback`]), so the flush waits only for the last piece
    /// of each and the files' metadata.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        if self.written.is_empty() {
            return Ok(());
        }
        for name in &self.written {
            File::open(self.dir.join(name))?.sync_data()?;
        }
        File::open(&self.dir)?.sync_all()
    }

    /// The transaction committed: files no row names any more go.
    pub(super) fn committed(&mut self) {
        self.written.clear();
        for name in self.obsolete.drain(..) {
            remove(&self.dir.join(name));
        }
    }

    /// The transaction rolled back: the files it wrote go.
    pub(super) fn rolled_back(&mut self) {
        self.obsolete.clear();
        for name in self.written.drain(..) {
            remove(&self.dir.join(name));
        }
    }

    /// Removes the files no row names (`named`): left by a transaction that
    /// never committed, or by a removal that a crash interrupted.
    pub(super) fn remove_unnamed(&self, named: &HashSet<String>) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in listing.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if number(name).is_some() && !named.contains(name) {
                remove(&entry.path());
            }
        }
    }
}

/// Whether [`writeback`] waits for the range to be on the disk.
#[derive(Clone, Copy)]
enum Wait {
    No,
    UntilWritten,
}

/// Has the kernel write `len` bytes of `file` from `offset` to the disk
/// now, and with [`Wait::UntilWritten`] waits until they are.
///
/// The kernel writes dirty pages back on its own only once they are 30 s
/// old or a tenth of the memory is dirty, so without this a file waited in
/// memory, the disk idle, until the commit flushed it: the disk then took
/// the whole transaction's data while the recorder waited, instead of
/// writing while the next datablocks arrived, and the flush put up to a
/// gigabyte in the disk's queue ahead of every other room's. A refusal
/// only loses the head start (the flush before the commit still writes
/// everything), so it is not an error.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn writeback(file: &File, offset: usize, len: usize, wait: Wait) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let flags = match wait {
        Wait::No => libc::SYNC_FILE_RANGE_WRITE,
        Wait::UntilWritten => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    // SAFETY: sync_file_range reads no memory of ours; it takes the
    // descriptor of a file this function borrows open, and plain integers.
    let done = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if done != 0 {
        tracing::debug!(
            "cannot have a data file written to the disk early: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn writeback(_file: &File, _offset: usize, _len: usize, _wait: Wait) {}

/// The number of a file name of ours (`N.bin`, N in decimal).
fn number(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), "cannot remove a data file no longer needed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_are_read() {
        assert_eq!(number("12.bin"), Some(12));
        for bad in [
            "../1.bin",
            "1.bin/..",
            ".bin",
            "a.bin",
            "1",
            "/etc/passwd",
            "-1.bin",
        ] {
            assert_eq!(number(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        assert!(blobs.read("../session.db").is_err());
    }

    #[test]
    fn a_rollback_removes_what_it_wrote_and_a_commit_what_it_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut blobs = Blobs::open(dir.path()).unwrap();
        let first = blobs.write(b"one").unwrap();
        blobs.sync().unwrap();
        blobs.committed();
        let second = blobs.write(b"two").unwrap();
        blobs.rolled_back();
        assert_eq!(blobs.read(&first).unwrap(), b"one");
        assert!(blobs.read(&second).is_err(), "rolled back");
        let third = blobs.write(b"three").unwrap();
        blobs.forget(first.clone());
        blobs.committed();
        assert!(blobs.read(&first).is_err(), "replaced and committed");
        // Numbers go on after those found when opening again.
        let mut again = Blobs::open(dir.path()).unwrap();
        let fourth = again.write(b"four").unwrap();
        assert_ne!(fourth, third);
        again.remove_unnamed(&HashSet::from([third.clone()]));
        assert_eq!(again.read(&third).unwrap(), b"three");
        assert!(again.read(&fourth).is_err(), "named by no row");
    }

    #[test]
    fn data_written_in_pieces_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut blobs = Blobs::open(dir.path()).unwrap();
        // Two whole pieces and a part of one, each byte told from its
        // neighbours, so a piece out of place or written twice shows.
        let data: Vec<u8> = (0..2 * PIECE_BYTES + 12_345)
            .map(|i| (i % 251) as u8 ^ (i / PIECE_BYTES) as u8)
            .collect();
        let name = blobs.write(&data).unwrap();
        blobs.sync().unwrap();
        blobs.committed();
        assert!(blobs.read(&name).unwrap() == data);
    }
}
