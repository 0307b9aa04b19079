//! Opening a recorded session: checking the database, reading the
//! datablocks, replaying stored patches and dropping an unfinished upload.

use std::collections::HashMap;
use std::fs::File;

use bytes::Bytes;
use rusqlite::OptionalExtension;

use super::{
    Change, Recovered, SessionImage, Store, StoreError, StoredBlock, decode_deps, is_damage,
    locate, wal_path,
};
use crate::protocol::SessionState;
use crate::protocol::codec::{decode_value, encode_value, validate_value};
use crate::protocol::patch::Patch;

impl Store {
    /// `PRAGMA quick_check`, reported with byte offsets.
    pub(super) fn check_integrity(&self) -> Result<(), StoreError> {
        let page_size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| self.read_error(e))?;
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
                Err(e) if is_damage(&e) => vec![self.locate(&e.to_string(), page_size)],
                // It could not read the file: not damage.
                Err(e) => return Err(self.read_error(e)),
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
    pub(super) fn recover(&mut self) -> Result<Recovered, StoreError> {
        let state = self.state()?;
        let count: i64 = self
            .conn
            .query_row("SELECT count(*) FROM datablocks", [], |r| r.get(0))
            .map_err(|e| self.read_error(e))?;
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
            .map_err(|e| self.read_error(e))?;
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
                "SELECT uuid, type_id, owner, deps, revision, data, file FROM datablocks ORDER BY seq",
            )
            .map_err(|e| self.read_error(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.read_error(e))?;
        let mut blocks = Vec::with_capacity(rows.len());
        for (uuid, type_id, owner, deps, revision, data, file) in rows {
            let data = match file {
                None => data,
                Some(_) if !data.is_empty() => {
                    return Err(self.bad_row(
                        "datablocks",
                        &uuid,
                        "data both in the row and in a file",
                    ));
                }
                Some(name) => self.blobs.read(&name).map_err(|e| match e.kind() {
                    // Gone, or a name that is not ours: the record is wrong.
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData => {
                        StoreError::Damaged {
                            file: self.blobs.path(&name),
                            detail: format!("the data file of datablock {uuid:?}: {e}"),
                        }
                    }
                    // Unreadable for now: the device or its permissions.
                    _ => self.file_error(&self.blobs.path(&name), e),
                })?,
            };
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
            .map_err(|e| self.read_error(e))?;
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
            .map_err(|e| self.read_error(e))?;
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
}

struct PatchRow {
    revision: i64,
    deps: Option<Vec<u8>>,
    patch: Vec<u8>,
}

/// Adds a byte offset to a quick_check message that names a page
/// ("Page 5: ..." or "... page 5 ...").
pub(super) fn with_offset(problem: &str, page_size: i64) -> String {
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
