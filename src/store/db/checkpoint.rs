//! The thread that checkpoints the WAL into the database, off the core's
//! commit path.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::Connection;

use super::{
    BUSY_TIMEOUT, SYNC_INTERVAL, StoreError, WAL_LIMIT, open_error, sync_pragma, wal_path,
};
use crate::config::Durability;

/// The thread that checkpoints the WAL (and so flushes it to the disk).
pub(super) struct Syncer {
    pub(super) dirty: Arc<AtomicBool>,
    /// Dropping it stops the thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub(super) fn spawn(file: &Path, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(file).map_err(|e| open_error(file, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .and_then(|()| {
                conn.execute_batch(&format!("PRAGMA synchronous={}", sync_pragma(durability)))
            })
            .map_err(|e| open_error(file, e))?;
        let dirty = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let wal = wal_path(file);
        let flag = dirty.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SYNC_INTERVAL)
                {
                    if flag.swap(false, Ordering::AcqRel) {
                        checkpoint(&conn, &wal);
                    }
                }
                // A last flush of whatever was committed.
                checkpoint(&conn, &wal);
            })
            .map_err(|source| StoreError::Directory {
                dir: file.parent().unwrap_or(file).to_owned(),
                source,
            })?;
        Ok(Self {
            dirty,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies the WAL into the database without blocking the writer; truncates
/// it with a blocking checkpoint when it has grown past [`WAL_LIMIT`].
fn checkpoint(conn: &Connection, wal: &Path) {
    let mode = match std::fs::metadata(wal) {
        Ok(m) if m.len() > WAL_LIMIT => "TRUNCATE",
        _ => "PASSIVE",
    };
    if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
        tracing::warn!("checkpoint of the session database failed: {e}");
    }
}
