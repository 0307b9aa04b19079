//! The data directory: `session.db`, a SQLite database in WAL mode that
//! records the session as it changes, and `lock`, which keeps a second
//! server away from it.
//!
//! Tables:
//! - `meta`: the session's state (`WAITING`, `SRV_SYNC` or `ACTIVE`).
//! - `datablocks`: each datablock's last full data, with its revision.
//! - `patches`: patches applied since that full data, one row each. The
//!   room replaces them with a new full row once they add up to more than
//!   the data itself, so the database follows the size of the scene, not
//!   its history.
//!
//! Commits write the WAL to the operating system; how far they are flushed
//! to the disk depends on the [`Durability`]. A thread of its own
//! checkpoints the WAL into the database every [`SYNC_INTERVAL`], which also
//! flushes it, so the core never waits for a checkpoint.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, ErrorCode as SqliteCode, OptionalExtension, params};

use super::{Change, SessionImage, StoredBlock};
use crate::config::Durability;
use crate::protocol::SessionState;
use crate::protocol::codec::{decode_value, encode_value, validate_value};
use crate::protocol::patch::Patch;

/// The database's file name in the data directory.
pub const DB_FILE: &str = "session.db";
/// The lock file's name in the data directory.
const LOCK_FILE: &str = "lock";
/// `PRAGMA application_id`: marks the database as ours ("RPLS").
const APPLICATION_ID: i64 = 0x5250_4c53;
/// `PRAGMA user_version`: the schema's version.
const SCHEMA_VERSION: i64 = 1;
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
    data BLOB NOT NULL
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
        let io = |source| StoreError::Directory {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let file = dir.join(DB_FILE);
        let conn = Connection::open(&file).map_err(|e| open_error(&file, e))?;
        let mut store = Self {
            conn,
            file,
            _lock: lock,
            in_transaction: false,
            next_seq: 0,
            syncer: None,
        };
        store.prepare(durability)?;
        let recovered = store.recover()?;
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
            return Err(StoreError::Damaged {
                file,
                detail: format!("cannot switch to WAL journaling (got {mode})"),
            });
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
        if tables > 0 && (app != APPLICATION_ID || version != SCHEMA_VERSION) {
            return Err(StoreError::Foreign {
                file,
                detail: format!(
                    "application id {app:#x}, schema version {version}; this server writes {APPLICATION_ID:#x}, version {SCHEMA_VERSION}"
                ),
            });
        }
        self.check_integrity()?;
        self.conn
            .execute_batch(&format!(
                "BEGIN; {SCHEMA} PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| self.write_error(e))?;
        self.next_seq = self
            .conn
            .query_row(
                "SELECT coalesce(max(seq), -1) + 1 FROM datablocks",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.damaged(e))?;
        Ok(())
    }

    /// `PRAGMA quick_check`, reported with byte offsets.
    fn check_integrity(&self) -> Result<(), StoreError> {
        let page_size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| self.damaged(e))?;
        let problems: Vec<String> =
            match self
                .conn
                .prepare("PRAGMA quick_check(20)")
                .and_then(|mut stmt| {
                    stmt.query_map([], |r| r.get::<_, String>(0))
                        .and_then(Iterator::collect)
                }) {
                Ok(problems) => problems,
                // SQLite gives up on some damage without saying where it is.
                Err(e) => vec![self.locate(&e.to_string(), page_size)],
            };
        if problems.len() == 1 && problems[0] == "ok" {
            return Ok(());
        }
        let detail = problems
            .iter()
            .map(|p| with_offset(p, page_size))
            .collect::<Vec<_>>()
            .join("; ");
        Err(StoreError::Damaged {
            file: self.file.clone(),
            detail,
        })
    }

    /// Finds the page SQLite could not read, by walking the file's b-trees.
    fn locate(&self, problem: &str, page_size: i64) -> String {
        let wal = wal_path(&self.file);
        let wal_empty = std::fs::metadata(&wal).map_or(true, |m| m.len() == 0);
        let mut roots = vec![1];
        if let Ok(mut stmt) = self
            .conn
            .prepare("SELECT rootpage FROM sqlite_schema WHERE rootpage > 0")
            && let Ok(rows) = stmt.query_map([], |r| r.get::<_, u32>(0))
        {
            roots.extend(rows.filter_map(Result::ok));
        }
        let found = usize::try_from(page_size)
            .ok()
            .filter(|_| wal_empty)
            .and_then(|size| {
                let file = File::open(&self.file).ok()?;
                locate::first_bad_page(&file, size, &roots)
            });
        match found {
            Some(page) => with_offset(&format!("{problem}: page {page} is invalid"), page_size),
            None => format!("{problem} (the damaged page could not be located)"),
        }
    }

    /// Reads the session, folds stored patches into their datablocks and
    /// drops an unfinished upload.
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        let state = self.state()?;
        let count: i64 = self
            .conn
            .query_row("SELECT count(*) FROM datablocks", [], |r| r.get(0))
            .map_err(|e| self.damaged(e))?;
        let mut recovered = Recovered::default();
        match state {
            SessionState::Waiting if count > 0 => {
                return Err(StoreError::Damaged {
                    file: self.file.clone(),
                    detail: format!(
                        "the session is recorded as WAITING (no scene) but holds {count} datablocks"
                    ),
                });
            }
            SessionState::Waiting => return Ok(recovered),
            SessionState::SrvSync => {
                tracing::warn!(
                    datablocks = count,
                    "the initial upload was interrupted before it finished; its datablocks were discarded and the session waits for a new upload"
                );
                recovered.discarded_upload = usize::try_from(count).unwrap_or(usize::MAX);
                self.record(&[Change::Clear, Change::State(SessionState::Waiting)])?;
                self.commit()?;
                return Ok(recovered);
            }
            SessionState::Active => {}
        }
        let mut blocks = self.read_blocks()?;
        let patches = self.read_patches()?;
        recovered.compacted_patches = patches.values().map(Vec::len).sum();
        let mut compacted = Vec::new();
        for block in &mut blocks {
            if let Some(list) = patches.get(&block.uuid) {
                self.replay(block, list)?;
                compacted.push(Change::Put(block.clone()));
            }
        }
        if let Some(uuid) = patches
            .keys()
            .find(|u| !blocks.iter().any(|b| &b.uuid == *u))
        {
            return Err(self.bad_row(
                "patches",
                uuid,
                "patches for a datablock that does not exist",
            ));
        }
        if !compacted.is_empty() {
            self.record(&compacted)?;
            self.commit()?;
        }
        self.reclaim_space();
        recovered.image = Some(SessionImage { blocks });
        Ok(recovered)
    }

    fn state(&self) -> Result<SessionState, StoreError> {
        let value: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'state'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.damaged(e))?;
        match value.as_deref() {
            None | Some("WAITING") => Ok(SessionState::Waiting),
            Some("SRV_SYNC") => Ok(SessionState::SrvSync),
            Some("ACTIVE") => Ok(SessionState::Active),
            Some(other) => Err(self.bad_row("meta", "state", &format!("unknown state {other:?}"))),
        }
    }

    fn read_blocks(&self) -> Result<Vec<StoredBlock>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT uuid, type_id, owner, deps, revision, data FROM datablocks ORDER BY seq",
            )
            .map_err(|e| self.damaged(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.damaged(e))?;
        let mut blocks = Vec::with_capacity(rows.len());
        for (uuid, type_id, owner, deps, revision, data) in rows {
            let deps = decode_deps(&deps).map_err(|m| self.bad_row("datablocks", &uuid, &m))?;
            let revision = u64::try_from(revision)
                .ok()
                .filter(|r| *r > 0)
                .ok_or_else(|| self.bad_row("datablocks", &uuid, "revision below 1"))?;
            validate_value(&data)
                .map_err(|e| self.bad_row("datablocks", &uuid, &format!("data: {e}")))?;
            blocks.push(StoredBlock {
                uuid,
                type_id,
                owner,
                deps,
                revision,
                data: Bytes::from(data),
            });
        }
        Ok(blocks)
    }

    /// Every patch row, by datablock, in revision order.
    fn read_patches(&self) -> Result<HashMap<String, Vec<PatchRow>>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT uuid, revision, deps, patch FROM patches ORDER BY uuid, revision")
            .map_err(|e| self.damaged(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PatchRow {
                        revision: r.get(1)?,
                        deps: r.get(2)?,
                        patch: r.get(3)?,
                    },
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.damaged(e))?;
        let mut by_uuid: HashMap<String, Vec<PatchRow>> = HashMap::new();
        for (uuid, row) in rows {
            by_uuid.entry(uuid).or_default().push(row);
        }
        Ok(by_uuid)
    }

    /// Applies stored patches to a datablock, checking that their revisions
    /// follow on from its own.
    fn replay(&self, block: &mut StoredBlock, rows: &[PatchRow]) -> Result<(), StoreError> {
        let mut value = decode_value(&block.data)
            .map_err(|e| self.bad_row("datablocks", &block.uuid, &format!("data: {e}")))?;
        for row in rows {
            let expected = block.revision + 1;
            if u64::try_from(row.revision).ok() != Some(expected) {
                return Err(self.bad_row(
                    "patches",
                    &block.uuid,
                    &format!(
                        "a patch to revision {} follows revision {}",
                        row.revision, block.revision
                    ),
                ));
            }
            let bad = |m: String| {
                self.bad_row(
                    "patches",
                    &format!("{} revision {expected}", block.uuid),
                    &m,
                )
            };
            let patch = decode_value(&row.patch)
                .map_err(|e| e.to_string())
                .and_then(|v| Patch::from_value(v).map_err(|e| e.to_string()))
                .map_err(bad)?;
            patch.apply(&mut value).map_err(|e| bad(e.to_string()))?;
            if let Some(deps) = &row.deps {
                block.deps = decode_deps(deps).map_err(bad)?;
            }
            block.revision = expected;
        }
        block.data = encode_value(&value);
        Ok(())
    }

    /// Gives free pages back to the file system when more than half the
    /// database is free (after a large scene was deleted, say).
    fn reclaim_space(&self) {
        let pages = |pragma: &str| {
            self.conn
                .query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0))
                .unwrap_or(0)
        };
        let (free, total) = (pages("freelist_count"), pages("page_count"));
        if free > 256 && free * 2 > total {
            match self.conn.execute_batch("VACUUM") {
                Ok(()) => tracing::info!(free_pages = free, "compacted the session database"),
                Err(e) => tracing::warn!("could not compact the session database: {e}"),
            }
        }
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
            self.apply(change).map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    fn apply(&mut self, change: &Change) -> rusqlite::Result<()> {
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
                    "INSERT INTO datablocks (uuid, seq, type_id, owner, deps, revision, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (uuid) DO UPDATE SET type_id = excluded.type_id,
                        owner = excluded.owner, deps = excluded.deps,
                        revision = excluded.revision, data = excluded.data",
                )?
                .execute(params![
                    b.uuid,
                    self.next_seq,
                    b.type_id,
                    b.owner,
                    encode_deps(&b.deps),
                    revision_i64(b.revision),
                    &b.data[..]
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
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            // Leave no half transaction open behind a failed commit.
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(self.write_error(e));
        }
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
        StoreError::Write {
            file: self.file.clone(),
            source,
        }
    }

    fn damaged(&self, e: rusqlite::Error) -> StoreError {
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
        }
        // Stop the checkpoint thread before the last connection closes, so
        // closing can checkpoint and remove the WAL.
        self.syncer.take();
    }
}

struct PatchRow {
    revision: i64,
    deps: Option<Vec<u8>>,
    patch: Vec<u8>,
}

/// The thread that checkpoints the WAL (and so flushes it to the disk).
struct Syncer {
    dirty: Arc<AtomicBool>,
    /// Dropping it stops the thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn spawn(file: &Path, durability: Durability) -> Result<Self, StoreError> {
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

/// An error while opening or reading: damage when SQLite says so.
fn open_error(file: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(SqliteCode::NotADatabase) => StoreError::Damaged {
            file: file.to_owned(),
            detail: "its first 100 bytes, from byte offset 0, are not a SQLite database header"
                .into(),
        },
        _ => StoreError::Damaged {
            file: file.to_owned(),
            detail: e.to_string(),
        },
    }
}

/// Adds a byte offset to a quick_check message that names a page
/// ("Page 5: ..." or "... page 5 ...").
fn with_offset(problem: &str, page_size: i64) -> String {
    let lower = problem.to_ascii_lowercase();
    let page = lower.find("page ").and_then(|at| {
        lower[at + 5..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<i64>().ok())
    });
    match page {
        Some(page) if page > 0 => format!(
            "{problem} (page {page} starts at byte offset {})",
            (page - 1) * page_size
        ),
        _ => problem.to_owned(),
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

mod locate;
#[cfg(test)]
mod tests;
