//! The data directory: `session.db`, a SQLite database in WAL mode that
//! records the session as it changes, and `lock`, which keeps a second
//! server away from it.
//!
//! Tables:
//! - `meta`: the session's state (`WAITING`, `SRV_SYNC` or `ACTIVE`).
//! - `datablocks`: each datablock's last full data, with its revision; data
//!   of a megabyte or more is in a file of its own under `blobs/`, which
//!   the row names in `file` ([`blobs`]).
//! - `patches`: patches applied since that full data, one row each. The
//!   room replaces them with a new full row once they add up to more than
//!   the data itself, so the database follows the size of the scene, not
//!   its history.
//!
//! Commits write the WAL to the operating system; how far they are flushed
//! to the disk depends on the [`Durability`]. A thread of its own
//! checkpoints the WAL into the database every [`SYNC_INTERVAL`], which also
//! flushes it, so the core never waits for a checkpoint.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode as SqliteCode, OptionalExtension, params};

use super::condition::{self, Diagnosis};
use super::{Change, SessionImage, StoredBlock};
use crate::config::Durability;
use crate::protocol::SessionState;
use crate::protocol::codec::{decode_value, encode_value};

/// The database's file name in the data directory.
pub const DB_FILE: &str = "session.db";
/// The lock file's name in the data directory.
const LOCK_FILE: &str = "lock";
/// `PRAGMA application_id`: marks the database as ours ("RPLS").
const APPLICATION_ID: i64 = 0x5250_4c53;
/// `PRAGMA user_version`: the schema's version. Version 1 had no `file`
/// column; it is added when such a database is opened.
const SCHEMA_VERSION: i64 = 2;
/// How often committed changes are checkpointed and flushed to the disk in
/// the default durability: the most a power loss can take.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// A WAL larger than this is truncated by a blocking checkpoint.
const WAL_LIMIT: u64 = 64 << 20;
/// How long a statement waits for the checkpoint thread before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS datablocks (
    uuid TEXT PRIMARY KEY NOT NULL,
    seq INTEGER NOT NULL,
    type_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    deps BLOB NOT NULL,
    revision INTEGER NOT NULL,
    data BLOB NOT NULL,
    file TEXT
);
CREATE TABLE IF NOT EXISTS patches (
    uuid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    deps BLOB,
    patch BLOB NOT NULL,
    PRIMARY KEY (uuid, revision)
) WITHOUT ROWID;
";

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use the data directory {}: {source}", .dir.display())]
    Directory {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the data directory {} is in use by another replication-serve; stop it, or give this server another --data-dir",
        .dir.display()
    )]
    Locked { dir: PathBuf },
    #[error(
        "{} is damaged: {detail}. Nothing was changed. Move the data directory away and start from a backup with --load FILE",
        .file.display()
    )]
    Damaged { file: PathBuf, detail: String },
    #[error(
        "{} is not a replication-serve session database (or is of a newer version: {detail}); use another --data-dir",
        .file.display()
    )]
    Foreign { file: PathBuf, detail: String },
    #[error("cannot record the session in {}: {source}", .file.display())]
    Write {
        file: PathBuf,
        source: rusqlite::Error,
    },
    /// The device is full, read-only, over quota or not writable by us:
    /// nothing is damaged, and the session loads once that is fixed.
    #[error("{0}")]
    Storage(Diagnosis),
    #[error(
        "cannot read or write {}: {detail}; this is an error of the device or the system, \
         not damage found in the file: check the system log (dmesg), then start again",
        .file.display()
    )]
    Io { file: PathBuf, detail: String },
}

/// What the data directory held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The scene of an ACTIVE session, in creation order; `None` when the
    /// session had no scene yet.
    pub image: Option<SessionImage>,
    /// Datablocks of an unfinished initial upload, discarded.
    pub discarded_upload: usize,
    /// Patch records folded into their datablocks while opening.
    pub compacted_patches: usize,
}

/// The open data directory.
pub struct Store {
    conn: Connection,
    file: PathBuf,
    /// Held for as long as the store is open.
    _lock: File,
    in_transaction: bool,
    /// Large data, in files beside the database.
    blobs: Blobs,
    /// The next datablock's creation sequence number.
    next_seq: i64,
    syncer: Option<Syncer>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("file", &self.file).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the data directory and reads the session
    /// it holds. A damaged database is an error; nothing is changed then.
    pub fn open(dir: &Path, durability: Durability) -> Result<(Self, Recovered), StoreError> {
        let file = dir.join(DB_FILE);
        let needed = condition::room_for(&file);
        let io = |path: &Path, source: std::io::Error| match condition::of_io_error(
            &source, path, needed, dir,
        ) {
            Some(condition) => StoreError::Storage(Diagnosis {
                dir: dir.to_owned(),
                condition,
            }),
            None => StoreError::Directory {
                dir: dir.to_owned(),
                source,
            },
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path, e)),
        }
        let conn = Connection::open(&file).map_err(|e| open_error(&file, e))?;
        let blobs = Blobs::open(dir).map_err(|e| io(dir, e))?;
        let mut store = Self {
            conn,
            file,
            _lock: lock,
            in_transaction: false,
            blobs,
            next_seq: 0,
            syncer: None,
        };
        store.prepare(durability)?;
        let recovered = store.recover()?;
        store.remove_unnamed_files()?;
        store.syncer = Some(Syncer::spawn(&store.file, durability)?);
        Ok((store, recovered))
    }

    /// The database file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Settings, identity and schema.
    fn prepare(&mut self, durability: Durability) -> Result<(), StoreError> {
        let file = self.file.clone();
        let err = |e| open_error(&file, e);
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(storage_or(&file, || StoreError::Io {
                file: file.clone(),
                detail: format!("cannot switch to WAL journaling (got {mode})"),
            }));
        }
        self.conn
            .execute_batch(&format!(
                "PRAGMA synchronous={}; PRAGMA wal_autocheckpoint=0;",
                sync_pragma(durability)
            ))
            .map_err(err)?;
        let app: i64 = self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(err)?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let tables: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(err)?;
        if tables > 0 && (app != APPLICATION_ID || !(1..=SCHEMA_VERSION).contains(&version)) {
            return Err(StoreError::Foreign {
                file,
                detail: format!(
                    "application id {app:#x}, schema version {version}; this server writes {APPLICATION_ID:#x}, version {SCHEMA_VERSION}"
                ),
            });
        }
        self.check_integrity()?;
        let upgrade = if tables > 0 && version == 1 {
            "ALTER TABLE datablocks ADD COLUMN file TEXT;"
        } else {
            ""
        };
        self.conn
            .execute_batch(&format!(
                "BEGIN; {SCHEMA} {upgrade} PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| self.write_error(e))?;
        self.next_seq = self
            .conn
            .query_row(
                "SELECT coalesce(max(seq), -1) + 1 FROM datablocks",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.read_error(e))?;
        Ok(())
    }

    /// A setting recorded with [`Change::Setting`].
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [format!("setting.{key}")],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.read_error(e))
    }

    /// The data directory this store is in.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(&self.file)
    }

    /// Whether changes were recorded that are not committed yet.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Records changes in the open transaction (opening one if needed).
    pub fn record(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        if !self.in_transaction {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| self.write_error(e))?;
            self.in_transaction = true;
        }
        for change in changes {
            self.apply(change)?;
        }
        Ok(())
    }

    fn apply(&mut self, change: &Change) -> Result<(), StoreError> {
        self.release_files(change)?;
        let file = match change {
            Change::Put(b) if b.data.len() >= FILE_MIN_BYTES => Some(
                self.blobs
                    .write(&b.data)
                    .map_err(|e| self.file_error(&self.blobs.path("new"), e))?,
            ),
            _ => None,
        };
        self.apply_row(change, file.as_deref())
            .map_err(|e| self.write_error(e))
    }

    /// Notes the files that `change` stops a row from naming.
    fn release_files(&mut self, change: &Change) -> Result<(), StoreError> {
        let named: Vec<String> = match change {
            Change::Put(StoredBlock { uuid, .. }) | Change::Delete { uuid } => self
                .conn
                .prepare_cached("SELECT file FROM datablocks WHERE uuid = ?1 AND file IS NOT NULL")
                .and_then(|mut stmt| {
                    stmt.query_map([uuid], |r| r.get(0))
                        .and_then(Iterator::collect)
                }),
            Change::Clear => self
                .conn
                .prepare_cached("SELECT file FROM datablocks WHERE file IS NOT NULL")
                .and_then(|mut stmt| stmt.query_map([], |r| r.get(0)).and_then(Iterator::collect)),
            _ => Ok(Vec::new()),
        }
        .map_err(|e| self.write_error(e))?;
        for name in named {
            self.blobs.forget(name);
        }
        Ok(())
    }

    /// Removes the data files no row names.
    fn remove_unnamed_files(&self) -> Result<(), StoreError> {
        let named: HashSet<String> = self
            .conn
            .prepare("SELECT file FROM datablocks WHERE file IS NOT NULL")
            .and_then(|mut stmt| stmt.query_map([], |r| r.get(0)).and_then(Iterator::collect))
            .map_err(|e| self.read_error(e))?;
        self.blobs.remove_unnamed(&named);
        Ok(())
    }

    fn file_error(&self, path: &Path, source: std::io::Error) -> StoreError {
        let dir = self.dir().to_owned();
        match condition::of_io_error(&source, path, condition::room_for(&self.file), &dir) {
            Some(condition) => StoreError::Storage(Diagnosis { dir, condition }),
            None => StoreError::Io {
                file: path.to_owned(),
                detail: source.to_string(),
            },
        }
    }

    fn apply_row(&mut self, change: &Change, file: Option<&str>) -> rusqlite::Result<()> {
        let c = &self.conn;
        match change {
            Change::State(state) => {
                c.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('state', ?1)")?
                    .execute([state.to_string()])?;
            }
            Change::Clear => {
                c.prepare_cached("DELETE FROM datablocks")?.execute([])?;
                c.prepare_cached("DELETE FROM patches")?.execute([])?;
            }
            Change::Put(b) => {
                c.prepare_cached(
                    "INSERT INTO datablocks (uuid, seq, type_id, owner, deps, revision, data, file)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (uuid) DO UPDATE SET type_id = excluded.type_id,
                        owner = excluded.owner, deps = excluded.deps,
                        revision = excluded.revision, data = excluded.data,
                        file = excluded.file",
                )?
                .execute(params![
                    b.uuid,
                    self.next_seq,
                    b.type_id,
                    b.owner,
                    encode_deps(&b.deps),
                    revision_i64(b.revision),
                    if file.is_some() { &[][..] } else { &b.data[..] },
                    file
                ])?;
                self.next_seq += 1;
                c.prepare_cached("DELETE FROM patches WHERE uuid = ?1")?
                    .execute([&b.uuid])?;
            }
            Change::Patch {
                uuid,
                revision,
                deps,
                patch,
            } => {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO patches (uuid, revision, deps, patch) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    uuid,
                    revision_i64(*revision),
                    deps.as_deref().map(encode_deps),
                    &patch[..]
                ])?;
            }
            Change::Delete { uuid } => {
                c.prepare_cached("DELETE FROM datablocks WHERE uuid = ?1")?
                    .execute([uuid])?;
                c.prepare_cached("DELETE FROM patches WHERE uuid = ?1")?
                    .execute([uuid])?;
            }
            Change::Setting { key, value } => {
                let key = format!("setting.{key}");
                match value {
                    Some(value) => c
                        .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
                        .execute([&key, value])?,
                    None => c
                        .prepare_cached("DELETE FROM meta WHERE key = ?1")?
                        .execute([&key])?,
                };
            }
            Change::Owner { uuids, owner } => {
                let mut stmt =
                    c.prepare_cached("UPDATE datablocks SET owner = ?1 WHERE uuid = ?2")?;
                for uuid in uuids {
                    stmt.execute([owner, uuid])?;
                }
            }
        }
        Ok(())
    }

    /// Commits the open transaction, if any. In strict durability this
    /// returns once the changes are on the disk.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if !self.in_transaction {
            return Ok(());
        }
        self.in_transaction = false;
        if let Err(e) = self.blobs.sync() {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.blobs.rolled_back();
            return Err(self.file_error(&self.blobs.path(""), e));
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            // Leave no half transaction open behind a failed commit.
            let _ = self.conn.execute_batch("ROLLBACK");
            self.blobs.rolled_back();
            return Err(self.write_error(e));
        }
        self.blobs.committed();
        if let Some(syncer) = &self.syncer {
            syncer.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Replaces the whole recorded session with `image`, ACTIVE (for
    /// `--load`).
    pub fn replace(&mut self, image: &SessionImage) -> Result<(), StoreError> {
        let mut changes = vec![Change::Clear];
        changes.extend(image.blocks.iter().cloned().map(Change::Put));
        changes.push(Change::State(SessionState::Active));
        self.record(&changes)?;
        self.commit()
    }

    fn write_error(&self, source: rusqlite::Error) -> StoreError {
        if is_damage(&source) {
            return open_error(&self.file, source);
        }
        storage_or(&self.file, || StoreError::Write {
            file: self.file.clone(),
            source,
        })
    }

    fn read_error(&self, e: rusqlite::Error) -> StoreError {
        open_error(&self.file, e)
    }

    fn bad_row(&self, table: &str, key: &str, what: &str) -> StoreError {
        StoreError::Damaged {
            file: self.file.clone(),
            detail: format!("table {table}, row {key:?}: {what}"),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.in_transaction {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.blobs.rolled_back();
        }
        // Stop the checkpoint thread before the last connection closes, so
        // closing can checkpoint and remove the WAL.
        self.syncer.take();
    }
}

fn wal_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn sync_pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Normal => "NORMAL",
        Durability::Strict => "FULL",
    }
}

/// An error while opening or reading: damage only when SQLite says so;
/// otherwise what the storage shows (a full device, a read-only
/// filesystem, ...), else an I/O error.
fn open_error(file: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(SqliteCode::NotADatabase) => StoreError::Damaged {
            file: file.to_owned(),
            detail: "its first 100 bytes, from byte offset 0, are not a SQLite database header"
                .into(),
        },
        _ if is_damage(&e) => StoreError::Damaged {
            file: file.to_owned(),
            detail: e.to_string(),
        },
        _ => storage_or(file, || StoreError::Io {
            file: file.to_owned(),
            detail: e.to_string(),
        }),
    }
}

/// Whether SQLite found the file itself wrong, rather than failing to
/// read or write it.
fn is_damage(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(..) => matches!(
            e.sqlite_error_code(),
            Some(SqliteCode::DatabaseCorrupt | SqliteCode::NotADatabase)
        ),
        // A value of the wrong type or out of range in a row.
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::Utf8Error(..) => true,
        _ => false,
    }
}

/// The storage condition under `file`'s directory, if there is one, else
/// `otherwise`.
fn storage_or(file: &Path, otherwise: impl FnOnce() -> StoreError) -> StoreError {
    let dir = file.parent().unwrap_or(file);
    match condition::probe(dir, condition::room_for(file)) {
        Some(condition) => StoreError::Storage(Diagnosis {
            dir: dir.to_owned(),
            condition,
        }),
        None => otherwise(),
    }
}

fn revision_i64(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

/// Dependencies as a MessagePack array of strings.
fn encode_deps(deps: &[String]) -> Vec<u8> {
    let value = rmpv::Value::Array(deps.iter().map(|d| rmpv::Value::from(d.as_str())).collect());
    encode_value(&value).to_vec()
}

fn decode_deps(bytes: &[u8]) -> Result<Vec<String>, String> {
    match decode_value(bytes).map_err(|e| format!("deps: {e}"))? {
        rmpv::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                rmpv::Value::String(s) => s.into_str().ok_or_else(|| "deps: not UTF-8".to_owned()),
                _ => Err("deps: not a string".to_owned()),
            })
            .collect(),
        _ => Err("deps: not an array".to_owned()),
    }
}

mod blobs;
mod checkpoint;
mod locate;

use blobs::Blobs;
pub use blobs::FILE_MIN_BYTES;
use checkpoint::Syncer;
#[cfg(test)]
use recover::with_offset;
mod recover;
#[cfg(test)]
mod tests;
