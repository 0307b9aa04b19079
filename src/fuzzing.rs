//! Entry points for the fuzz targets (`fuzz/`, `scripts/fuzz.sh`): every
//! decoder that reads the network or a file, fed arbitrary bytes. Each
//! must return an error for bad input, never panic. The same functions
//! replay the inputs kept in `fuzz/regressions/` as tests
//! (tests/fuzz_regressions.rs).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Limits;
use crate::core::transfers::{Pending, Transfers};
use crate::protocol::patch::Patch;
use crate::protocol::{
    BlockSpec, Channel, CommandRequest, HeartbeatMessage, PublisherMessage, SubscriberRequest,
    batch, codec, decode_header, decode_publisher, decode_server,
};

/// Header frames of every channel, as the server and the clients read
/// them.
pub fn headers(data: &[u8]) {
    let limit = 1 << 20;
    let _ = decode_header::<CommandRequest>(data, limit);
    let _ = decode_header::<SubscriberRequest>(data, limit);
    let _ = decode_header::<HeartbeatMessage>(data, limit);
    let _ = decode_server(data, limit);
    let _ = codec::validate_value(data);
}

/// Publisher headers: UPDATE (read by its own walker) and UPDATES, whose
/// data frame is then cut into its updates. The input's first two bytes
/// say where the header ends and the data frame begins.
pub fn publisher(data: &[u8]) {
    let (header, payload) = split_at_prefix(data);
    if let Ok(PublisherMessage::Updates { updates, lengths }) = decode_publisher(header, 1 << 20)
        && let Ok(items) = batch::split(updates, lengths, Some(payload), 1 << 20)
    {
        for (update, bytes) in items {
            let _ = (update, codec::validate_value(bytes));
        }
    }
}

/// A patch, decoded and applied to a value: the first two bytes say where
/// the value ends and the patch begins.
pub fn patches(data: &[u8]) {
    let (value, patch) = split_at_prefix(data);
    let Ok(mut target) = codec::decode_value(value) else {
        return;
    };
    let Ok(patch) = codec::decode_value(patch) else {
        return;
    };
    if let Ok(patch) = Patch::from_value(patch) {
        let _ = patch.apply(&mut target);
    }
}

/// Chunk reassembly: transfers announced and fed chunks in the order,
/// sizes and bytes the input says; whole data accepted chunk by chunk must
/// also pass the check of a payload that arrives whole.
pub fn chunks(data: &[u8]) {
    let limits = Limits {
        max_datablock_bytes: 1 << 16,
        max_transfer_bytes_per_client: 1 << 17,
        max_transfer_bytes_total: 1 << 18,
        ..Limits::default()
    };
    let mut transfers = Transfers::default();
    let mut input = data.iter().copied();
    while let Some(op) = input.next() {
        let transfer = u64::from(input.next().unwrap_or(0) % 4);
        let channel = if op & 1 == 0 {
            Channel::Commands
        } else {
            Channel::Publisher
        };
        if op & 2 == 0 {
            let chunks = u32::from(input.next().unwrap_or(0));
            let size = u64::from(u16::from_le_bytes([
                input.next().unwrap_or(0),
                input.next().unwrap_or(0),
            ]));
            let pending = Pending::Update {
                req_id: None,
                spec: BlockSpec {
                    uuid: "u".into(),
                    type_id: None,
                    owner: None,
                    deps: None,
                },
                // A patch is not checked as one value; whole data is.
                patch: op & 4 != 0,
                base_revision: None,
            };
            let _ = transfers.begin(channel, transfer, chunks, size, pending, &limits);
        } else {
            let index = u32::from(input.next().unwrap_or(0));
            // The chunk's bytes come from the input (zeros once it ends),
            // so the value check meets every kind of MessagePack.
            let len = usize::from(input.next().unwrap_or(0));
            let bytes: Vec<u8> = (0..len).map(|_| input.next().unwrap_or(0)).collect();
            if let Ok(Some((pending, whole))) = transfers.chunk(channel, transfer, index, &bytes)
                && pending.whole_value()
            {
                // Checked chunk by chunk, it must be what the check of a
                // whole payload accepts.
                assert!(
                    crate::protocol::validate_value(&whole).is_ok(),
                    "accepted chunk by chunk, refused whole"
                );
            }
        }
        assert!(transfers.reserved() <= limits.max_transfer_bytes_per_client as u64);
    }
}

/// A session file (`save`, autosave, `--load`).
pub fn session_file(data: &[u8]) {
    let path = scratch("session");
    if std::fs::write(&path, data).is_ok() {
        let _ = crate::store::file::read_session(&path, 1 << 20);
    }
    let _ = std::fs::remove_file(&path);
}

/// The recorded database's rows: a data directory whose rows hold the
/// input (state, datablock data, dependencies, revisions, patches, the
/// name of a data file), opened as at start-up.
pub fn recorded_rows(data: &[u8]) {
    let dir = scratch("rows");
    let _ = std::fs::remove_dir_all(&dir);
    let result = write_rows(&dir, data).map(|()| {
        let _ = crate::store::db::Store::open(&dir, crate::config::Durability::Normal);
    });
    let _ = std::fs::remove_dir_all(&dir);
    drop(result);
}

fn write_rows(dir: &std::path::Path, data: &[u8]) -> Result<(), String> {
    // A valid, empty data directory first, with the schema.
    drop(
        crate::store::db::Store::open(dir, crate::config::Durability::Normal)
            .map_err(|e| e.to_string())?,
    );
    let conn = rusqlite::Connection::open(dir.join(crate::store::db::DB_FILE))
        .map_err(|e| e.to_string())?;
    let mut fields = data.split(|b| *b == 0xff);
    let mut next = || fields.next().unwrap_or_default();
    let state = String::from_utf8_lossy(next()).into_owned();
    let state = if state.is_empty() {
        "ACTIVE".to_owned()
    } else {
        state
    };
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('state', ?1)",
        [&state],
    )
    .map_err(|e| e.to_string())?;
    for seq in 0..3i64 {
        let (deps, revision, block) = (next(), next(), next());
        let revision = revision
            .iter()
            .fold(0i64, |r, b| r.wrapping_mul(7).wrapping_add(i64::from(*b)));
        // The last datablock names a data file (any name at all).
        let file = (seq == 2)
            .then(|| String::from_utf8_lossy(next()).into_owned())
            .filter(|f| !f.is_empty());
        conn.execute(
            "INSERT OR REPLACE INTO datablocks (uuid, seq, type_id, owner, deps, revision, data, file)
             VALUES (?1, ?2, 'T', 'COMMON', ?3, ?4, ?5, ?6)",
            rusqlite::params![format!("b{}", seq % 2), seq, deps, revision, block, file],
        )
        .map_err(|e| e.to_string())?;
        let patch = next();
        conn.execute(
            "INSERT OR REPLACE INTO patches (uuid, revision, deps, patch) VALUES (?1, ?2, NULL, ?3)",
            rusqlite::params![format!("b{}", seq % 3), revision.wrapping_add(1), patch],
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn split_at_prefix(data: &[u8]) -> (&[u8], &[u8]) {
    match data {
        [a, b, rest @ ..] => {
            rest.split_at(usize::from(u16::from_le_bytes([*a, *b])).min(rest.len()))
        }
        _ => (&[], &[]),
    }
}

/// A path of this process's own under the temporary directory.
fn scratch(what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "replication-fuzz-{what}-{}-{n}",
        std::process::id()
    ))
}
