//! A room's record, written on a thread of its own, so that the core never
//! waits for the disk (docs/architecture.md, "Big payloads").
//!
//! The core gathers each turn's changes with [`Recorder::record`] and ends
//! the turn with [`Recorder::commit`], which hands them to the recorder's
//! thread as a numbered batch; the core holds back what depends on it
//! until [`Recorder::committed`] reaches that number. Batches are committed
//! in the order they were made; those that queued while the thread wrote
//! the last go together, as one transaction.
//!
//! Committing on the core's thread was cheaper for small changes (no
//! thread hop), but any write to a file can wait in the kernel while
//! another thread flushes a large one to the same disk: room A's 1 KB
//! commits took up to 60 ms on the core while room B's scene was written,
//! and every room waited for them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Change;
use super::db::{Store, StoreError};

/// What the recorder's thread has done, as the core sees it.
#[derive(Debug, Default)]
struct Progress {
    /// The last batch committed (batches are numbered from 1).
    committed: u64,
    /// A batch that could not be recorded: the server stops.
    failure: Option<StoreError>,
    /// How long each batch took to commit, for the metrics.
    timings: Vec<Duration>,
}

#[derive(Debug, Default)]
struct Shared {
    progress: Mutex<Progress>,
    /// Signalled at each batch committed, for [`Recorder::wait`].
    changed: Condvar,
    /// The record is being thrown away ([`Recorder::abandon`]): batches
    /// not begun are skipped, and a failure is nobody's concern.
    abandoned: AtomicBool,
}

/// One batch for the recorder's thread.
struct Batch {
    number: u64,
    changes: Vec<Change>,
}

/// A room's record: the thread that owns its [`Store`] and writes to it.
pub struct Recorder {
    /// Changes of this turn, not handed to the thread yet.
    pending: Vec<Change>,
    /// The last batch handed to the thread.
    submitted: u64,
    shared: Arc<Shared>,
    batches: Option<mpsc::Sender<Batch>>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("dir", &self.dir)
            .field("submitted", &self.submitted)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Takes over `store`; `wake` is notified each time a batch is
    /// committed in the background.
    pub fn spawn(store: Store, wake: Arc<Notify>) -> Result<Self, StoreError> {
        let dir = store.dir().to_owned();
        let shared = Arc::new(Shared::default());
        let (batches, queue) = mpsc::channel::<Batch>();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("recorder".into())
                .spawn(move || write_batches(store, &shared, &queue, &wake))
                .map_err(|source| StoreError::Directory {
                    dir: dir.clone(),
                    source,
                })?
        };
        Ok(Self {
            pending: Vec::new(),
            submitted: 0,
            shared,
            batches: Some(batches),
            thread: Some(thread),
            dir,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Adds changes to this turn's.
    pub fn record(&mut self, changes: impl IntoIterator<Item = Change>) {
        self.pending.extend(changes);
    }

    /// Ends the turn: hands its changes to the thread as the next batch;
    /// returns its number (None when the turn recorded nothing).
    pub fn commit(&mut self) -> Result<Option<u64>, StoreError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let changes = std::mem::take(&mut self.pending);
        self.submitted += 1;
        let number = self.submitted;
        let sent = self
            .batches
            .as_ref()
            .is_some_and(|b| b.send(Batch { number, changes }).is_ok());
        if !sent {
            return Err(self.stopped());
        }
        Ok(Some(number))
    }

    /// The last batch committed (0: none yet).
    pub fn committed(&self) -> u64 {
        lock(&self.shared.progress).committed
    }

    /// The last batch handed to the thread.
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Whether a batch is still being written.
    pub fn busy(&self) -> bool {
        self.committed() < self.submitted
    }

    /// The error of a batch that could not be recorded, once.
    pub fn take_failure(&self) -> Option<StoreError> {
        lock(&self.shared.progress).failure.take()
    }

    /// How long the batches committed since the last call took.
    pub fn take_timings(&self) -> Vec<Duration> {
        std::mem::take(&mut lock(&self.shared.progress).timings)
    }

    /// Commits everything recorded so far, waiting for the thread: for
    /// start-up and shutdown, where nothing else runs.
    pub fn commit_and_wait(&mut self) -> Result<(), StoreError> {
        self.commit()?;
        self.wait();
        match self.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until every batch handed to the thread is committed (or the
    /// thread stopped).
    pub fn wait(&self) {
        let mut progress = lock(&self.shared.progress);
        while progress.committed < self.submitted && progress.failure.is_none() {
            if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                break;
            }
            progress = self
                .shared
                .changed
                .wait_timeout(progress, Duration::from_millis(100))
                .map_or_else(|e| e.into_inner().0, |(guard, _)| guard);
        }
    }

    /// Stops recording for good, for a room whose record is being removed:
    /// the batches the thread has not begun are skipped, and the one it is
    /// writing may end in an error that nobody is told of. Returns the
    /// thread, so that the caller may wait for it somewhere other than the
    /// core: it ends once that batch does, which for a large upload may
    /// take seconds.
    pub fn abandon(mut self) -> Option<JoinHandle<()>> {
        self.shared.abandoned.store(true, Ordering::Release);
        self.batches.take();
        self.thread.take()
    }

    fn stopped(&self) -> StoreError {
        StoreError::Directory {
            dir: self.dir.clone(),
            source: std::io::Error::other("the recorder's thread has stopped"),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The thread writes what it was given, then ends.
        self.batches.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The recorder's thread: each batch as one transaction, in order.
fn write_batches(mut store: Store, shared: &Shared, queue: &mpsc::Receiver<Batch>, wake: &Notify) {
    for batch in queue {
        if shared.abandoned.load(Ordering::Acquire) {
            return;
        }
        let Batch {
            mut number,
            mut changes,
        } = batch;
        // Batches that came while the last was written go together: one
        // transaction and one flush for all of them, so that a large upload
        // (a batch per turn) is written as one stream, not synced in
        // pieces.
        while let Ok(next) = queue.try_recv() {
            number = next.number;
            changes.extend(next.changes);
        }
        let started = Instant::now();
        let result = store.record(&changes).and_then(|()| store.commit());
        let took = started.elapsed();
        // The batch's data is freed here, off the core's thread, when the
        // room no longer holds it.
        drop(changes);
        let failed = result.is_err();
        if failed && shared.abandoned.load(Ordering::Acquire) {
            // The record is being removed under the thread: its errors
            // (files or a database no longer there) mean nothing.
            return;
        }
        {
            let mut progress = lock(&shared.progress);
            match result {
                Ok(()) => {
                    progress.committed = number;
                    progress.timings.push(took);
                }
                // What waited for this batch never goes out.
                Err(e) => progress.failure = Some(e),
            }
        }
        shared.changed.notify_all();
        wake.notify_one();
        if failed {
            // Nothing after a failed batch may be recorded: the server
            // stops on the last change it recorded.
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::protocol::SessionState;
    use crate::store::StoredBlock;

    fn put(uuid: &str, data: &'static [u8]) -> Change {
        Change::Put(StoredBlock {
            uuid: uuid.to_owned(),
            type_id: "Object".to_owned(),
            owner: "COMMON".to_owned(),
            deps: Vec::new(),
            revision: 1,
            data: bytes::Bytes::from_static(data),
        })
    }

    #[test]
    fn batches_are_committed_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), Durability::Normal).unwrap();
        let wake = Arc::new(Notify::new());
        let mut recorder = Recorder::spawn(store, wake).unwrap();
        assert_eq!(recorder.commit().unwrap(), None, "nothing recorded");
        recorder.record([Change::State(SessionState::SrvSync), put("a", b"\x01")]);
        assert_eq!(recorder.commit().unwrap(), Some(1));
        recorder.record([put("b", b"\x02")]);
        assert_eq!(recorder.commit().unwrap(), Some(2));
        recorder.record([Change::State(SessionState::Active)]);
        recorder.commit_and_wait().unwrap();
        assert_eq!(recorder.committed(), 3);
        assert!(!recorder.busy());
        assert!(!recorder.take_timings().is_empty(), "each commit is timed");
        drop(recorder);
        let (_store, recovered) = Store::open(dir.path(), Durability::Normal).unwrap();
        let uuids: Vec<String> = recovered
            .image
            .unwrap()
            .blocks
            .into_iter()
            .map(|b| b.uuid)
            .collect();
        assert_eq!(uuids, ["a", "b"]);
    }

    #[test]
    fn an_abandoned_recorder_ends_and_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let room = dir.path().join("room");
        let (store, _) = Store::open(&room, Durability::Normal).unwrap();
        let mut recorder = Recorder::spawn(store, Arc::new(Notify::new())).unwrap();
        recorder.record([put("a", b"\x01")]);
        recorder.commit_and_wait().unwrap();
        // The room is closed while batches are still queued for it (one
        // with data for a file of its own): the recorder is abandoned, its
        // directory moved aside and removed.
        for uuid in ["b", "c", "d"] {
            recorder.record([put(uuid, b"\x02")]);
            recorder.commit().unwrap();
        }
        recorder.record([Change::Put(StoredBlock {
            uuid: "e".to_owned(),
            type_id: "Image".to_owned(),
            owner: "COMMON".to_owned(),
            deps: Vec::new(),
            revision: 1,
            data: bytes::Bytes::from(vec![3; crate::store::db::FILE_MIN_BYTES]),
        })]);
        recorder.commit().unwrap();
        let shared = recorder.shared.clone();
        let thread = recorder.abandon().expect("the thread");
        std::fs::rename(&room, dir.path().join("aside")).unwrap();
        std::fs::remove_dir_all(dir.path().join("aside")).unwrap();
        thread.join().expect("it ends");
        let progress = lock(&shared.progress);
        assert!(progress.failure.is_none(), "{:?}", progress.failure);
        assert!(!room.exists(), "nothing made again where the room was");
    }
}
