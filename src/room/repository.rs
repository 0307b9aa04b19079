//! The datablocks of one session and their current state.

use std::time::SystemTime;

use bytes::Bytes;
use foldhash::HashMap;
use rmpv::Value;

use crate::protocol::codec::{decode_value, encode_value};
use crate::protocol::patch::Patch;
use crate::protocol::wire::DatablockRef;
use crate::protocol::{COMMON, DatablockHeader, ProtocolError};
use crate::store::StoredBlock;

/// A datablock's data. Kept encoded as the client sent it (so it is forwarded
/// and snapshotted without re-encoding), and decoded only once patches start
/// arriving; after that, patches edit the decoded value in place and the
/// encoding is rebuilt lazily, when someone needs the full bytes.
#[derive(Debug, Clone)]
pub struct Content {
    encoded: Option<Bytes>,
    decoded: Option<Value>,
    /// Size of the last encoding, for accounting while only decoded.
    size: usize,
    /// Bytes of patches applied since the last encoding: the data can have
    /// grown by at most this much.
    growth: usize,
}

impl Content {
    /// Content from a client's encoded data (already validated).
    pub fn from_encoded(bytes: Bytes) -> Self {
        Self {
            size: bytes.len(),
            encoded: Some(bytes),
            decoded: None,
            growth: 0,
        }
    }

    /// Encoded size in bytes (as of the last encoding when patched since).
    pub fn size(&self) -> usize {
        self.size
    }

    /// An upper bound of the encoded size, without encoding.
    pub fn size_bound(&self) -> usize {
        self.size + self.growth
    }

    /// The encoded data, encoding it first if patches changed it.
    pub fn encoded(&mut self) -> Bytes {
        if let Some(bytes) = &self.encoded {
            return bytes.clone();
        }
        let bytes = self.decoded.as_ref().map(encode_value).unwrap_or_default();
        self.size = bytes.len();
        self.growth = 0;
        self.encoded = Some(bytes.clone());
        bytes
    }

    /// The encoded data, when no patch changed it since it was last
    /// encoded (always, after [`Repository::settle`]).
    pub fn settled(&self) -> Option<&Bytes> {
        self.encoded.as_ref()
    }

    /// Applies a patch of `patch_bytes` encoded bytes atomically; on error
    /// nothing changes.
    pub fn apply(&mut self, patch: &Patch, patch_bytes: usize) -> Result<(), ProtocolError> {
        if self.decoded.is_none() {
            let bytes = self.encoded.as_deref().unwrap_or_default();
            self.decoded = Some(decode_value(bytes)?);
        }
        let Some(value) = self.decoded.as_mut() else {
            return Err(ProtocolError::Invalid("datablock has no data".into()));
        };
        patch
            .apply(value)
            .map_err(|e| ProtocolError::Invalid(e.to_string()))?;
        self.encoded = None;
        self.growth += patch_bytes;
        Ok(())
    }
}

/// One replicated datablock.
#[derive(Debug, Clone)]
pub struct Datablock {
    pub type_id: String,
    /// A user name, or `COMMON`.
    pub owner: String,
    /// Uuids this datablock refers to; sent before it in snapshots.
    pub deps: Vec<String>,
    /// Starts at 1, and grows by one with every accepted change of the data.
    pub revision: u64,
    pub content: Content,
    /// Creation order, the tie-breaker for snapshot order.
    created: u64,
    /// When `owner` got it (shown by `locks`).
    pub since: SystemTime,
    /// Bytes of patches recorded since the datablock's full data was last
    /// recorded; past the data's own size, the full data is recorded
    /// instead (compaction).
    pub recorded_patch_bytes: usize,
}

impl Datablock {
    /// This datablock's header fields, borrowed, for writing headers
    /// directly.
    pub fn fields<'a>(&'a self, uuid: &'a str) -> DatablockRef<'a> {
        DatablockRef {
            uuid,
            type_id: &self.type_id,
            owner: &self.owner,
            deps: &self.deps,
            revision: self.revision,
        }
    }

    /// The header the server sends with this datablock.
    pub fn header(&self, uuid: &str) -> DatablockHeader {
        DatablockHeader {
            uuid: uuid.to_owned(),
            type_id: self.type_id.clone(),
            owner: self.owner.clone(),
            deps: self.deps.clone(),
            revision: self.revision,
        }
    }
}

/// Every datablock of a session, by uuid.
#[derive(Debug, Default)]
pub struct Repository {
    blocks: HashMap<String, Datablock>,
    next_created: u64,
    /// Sum of the blocks' encoded sizes.
    bytes: usize,
}

impl Repository {
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Total encoded size of all datablocks.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, uuid: &str) -> Option<&Datablock> {
        self.blocks.get(uuid)
    }

    pub fn contains(&self, uuid: &str) -> bool {
        self.blocks.contains_key(uuid)
    }

    /// Adds a new datablock at revision 1. The caller checked it is absent.
    pub fn insert(
        &mut self,
        uuid: String,
        type_id: String,
        owner: String,
        deps: Vec<String>,
        content: Content,
    ) -> &mut Datablock {
        self.bytes += content.size();
        let created = self.next_created;
        self.next_created += 1;
        let block = Datablock {
            type_id,
            owner,
            deps,
            revision: 1,
            content,
            created,
            since: SystemTime::now(),
            recorded_patch_bytes: 0,
        };
        self.blocks.entry(uuid).insert_entry(block).into_mut()
    }

    /// Runs `edit` on a datablock and keeps the byte total in step with the
    /// size it ends with.
    pub fn edit<T>(&mut self, uuid: &str, edit: impl FnOnce(&mut Datablock) -> T) -> Option<T> {
        let block = self.blocks.get_mut(uuid)?;
        let before = block.content.size();
        let out = edit(block);
        self.bytes = self.bytes - before + block.content.size();
        Some(out)
    }

    /// Encodes every datablock that patches changed since its last
    /// encoding, so that each has its full bytes at hand
    /// ([`Content::settled`]).
    pub fn settle(&mut self) {
        for block in self.blocks.values_mut() {
            if block.content.encoded.is_none() {
                let before = block.content.size();
                block.content.encoded();
                self.bytes = self.bytes - before + block.content.size();
            }
        }
    }

    /// Adds a datablock as stored, with its owner reset to COMMON.
    pub fn restore(&mut self, block: StoredBlock) {
        let revision = block.revision;
        let restored = self.insert(
            block.uuid,
            block.type_id,
            COMMON.to_owned(),
            block.deps,
            Content::from_encoded(block.data),
        );
        restored.revision = revision;
    }

    pub fn remove(&mut self, uuid: &str) -> Option<Datablock> {
        let block = self.blocks.remove(uuid)?;
        self.bytes -= block.content.size();
        Some(block)
    }

    /// Removes every datablock; returns them, for the caller to free
    /// (`memory::release`).
    pub fn clear(&mut self) -> HashMap<String, Datablock> {
        self.bytes = 0;
        std::mem::take(&mut self.blocks)
    }

    /// Every datablock a user holds (not COMMON), in no order.
    pub fn held(&self) -> impl Iterator<Item = (&str, &Datablock)> {
        self.blocks
            .iter()
            .filter(|(_, b)| b.owner != COMMON)
            .map(|(uuid, b)| (uuid.as_str(), b))
    }

    /// Sets every datablock owned by `user` to `new_owner`; returns their uuids.
    pub fn reassign(&mut self, user: &str, new_owner: &str) -> Vec<String> {
        let mut moved = Vec::new();
        let now = SystemTime::now();
        for (uuid, block) in &mut self.blocks {
            if block.owner == user {
                new_owner.clone_into(&mut block.owner);
                block.since = now;
                moved.push(uuid.clone());
            }
        }
        moved.sort();
        moved
    }

    /// Uuids in snapshot order: every datablock after the datablocks it
    /// depends on (dependencies that are not in the session are ignored),
    /// otherwise in creation order. A dependency cycle is broken at the
    /// datablock created first.
    pub fn snapshot_order(&self) -> Vec<&str> {
        self.in_snapshot_order()
            .into_iter()
            .map(|(uuid, _)| uuid)
            .collect()
    }

    /// Every datablock with its uuid, in [`Repository::snapshot_order`].
    ///
    /// Every late join computes this for the whole session, so the walk
    /// works on positions in the creation order: one hash lookup per
    /// dependency, none when no datablock has any.
    pub fn in_snapshot_order(&self) -> Vec<(&str, &Datablock)> {
        let mut by_creation: Vec<(&str, &Datablock)> =
            self.blocks.iter().map(|(u, b)| (u.as_str(), b)).collect();
        by_creation.sort_unstable_by_key(|(_, b)| b.created);
        if by_creation.iter().all(|(_, b)| b.deps.is_empty()) {
            return by_creation;
        }
        let position: HashMap<&str, usize> = by_creation
            .iter()
            .enumerate()
            .map(|(i, (uuid, _))| (*uuid, i))
            .collect();
        let mut state = vec![Visit::New; by_creation.len()];
        let mut order = Vec::with_capacity(by_creation.len());
        // Iterative depth-first walk of (position, next dependency); a
        // datablock `Visit::Placing` is having its dependencies placed,
        // which is what breaks a cycle.
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for root in 0..by_creation.len() {
            if state[root] != Visit::New {
                continue;
            }
            state[root] = Visit::Placing;
            stack.push((root, 0));
            while let Some((at, next_dep)) = stack.pop() {
                let (uuid, block) = by_creation[at];
                match block.deps.get(next_dep) {
                    Some(dep) => {
                        stack.push((at, next_dep + 1));
                        if let Some(&dep_at) = position.get(dep.as_str())
                            && state[dep_at] == Visit::New
                        {
                            state[dep_at] = Visit::Placing;
                            stack.push((dep_at, 0));
                        }
                    }
                    None => {
                        state[at] = Visit::Placed;
                        order.push((uuid, block));
                    }
                }
            }
        }
        order
    }
}

/// Where the snapshot order's walk is with one datablock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    Placing,
    Placed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(repo: &mut Repository, uuid: &str, deps: &[&str]) {
        repo.insert(
            uuid.into(),
            "Object".into(),
            "COMMON".into(),
            deps.iter().map(|d| (*d).to_owned()).collect(),
            Content::from_encoded(Bytes::from_static(&[0xc0])),
        );
    }

    #[test]
    fn dependencies_come_first() {
        let mut repo = Repository::default();
        add(&mut repo, "object", &["mesh", "material"]);
        add(&mut repo, "mesh", &["material", "missing"]);
        add(&mut repo, "material", &[]);
        add(&mut repo, "scene", &["object"]);
        assert_eq!(
            repo.snapshot_order(),
            ["material", "mesh", "object", "scene"]
        );
    }

    #[test]
    fn cycles_do_not_hang_or_drop_blocks() {
        let mut repo = Repository::default();
        add(&mut repo, "a", &["b"]);
        add(&mut repo, "b", &["a"]);
        add(&mut repo, "c", &["c"]);
        let order = repo.snapshot_order();
        assert_eq!(order.len(), 3);
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn byte_total_follows_edits_and_removals() {
        let mut repo = Repository::default();
        add(&mut repo, "a", &[]);
        add(&mut repo, "b", &[]);
        assert_eq!(repo.bytes(), 2);
        repo.edit("a", |b| {
            b.content = Content::from_encoded(Bytes::from_static(b"\xa3abc"))
        });
        assert_eq!(repo.bytes(), 5);
        repo.remove("b");
        assert_eq!(repo.bytes(), 4);
    }
}
