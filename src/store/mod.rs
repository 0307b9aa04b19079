//! Durable sessions: the record of accepted changes in the data directory
//! ([`db`]) and portable session files for backups ([`file`]).
//!
//! The room describes every accepted change as a [`Change`]; the core
//! records the changes of each batch of inbound messages in one transaction
//! and forwards the batch's messages only after it commits.

pub mod condition;
pub mod db;
pub mod file;
pub mod recorder;

use bytes::Bytes;

use crate::protocol::SessionState;

/// One datablock as stored: everything needed to rebuild it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBlock {
    pub uuid: String,
    pub type_id: String,
    /// The owner when it was stored. Restored sessions reset every owner to
    /// COMMON (nobody is connected yet); it is kept for inspection.
    pub owner: String,
    pub deps: Vec<String>,
    pub revision: u64,
    /// The datablock's data: one encoded MessagePack value.
    pub data: Bytes,
}

/// A whole session's scene.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionImage {
    /// In snapshot order: every datablock after the ones it depends on.
    pub blocks: Vec<StoredBlock>,
}

impl SessionImage {
    /// Sum of the datablocks' encoded sizes.
    pub fn bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.data.len()).sum()
    }
}

/// One accepted change, in the order the room accepted it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The session's state changed (an upload began or ended).
    State(SessionState),
    /// Every datablock was dropped (an unfinished upload was abandoned).
    Clear,
    /// A datablock created or replaced in full (a full UPDATE, an upload SET,
    /// or a compaction of its patches).
    Put(StoredBlock),
    /// A patch applied to a datablock, taking it to `revision`.
    Patch {
        uuid: String,
        revision: u64,
        deps: Option<Vec<String>>,
        patch: Bytes,
    },
    Delete {
        uuid: String,
    },
    Owner {
        uuids: Vec<String>,
        owner: String,
    },
    /// A setting of the room kept with its session (its name, password,
    /// keep-open flag); `None` removes it.
    Setting {
        key: String,
        value: Option<String>,
    },
}
