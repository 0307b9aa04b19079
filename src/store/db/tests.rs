use super::*;

use bytes::Bytes;

use crate::protocol::codec::encode;

fn value_bytes(value: rmpv::Value) -> Bytes {
    encode_value(&value)
}

fn block(uuid: &str, revision: u64, data: rmpv::Value) -> StoredBlock {
    StoredBlock {
        uuid: uuid.to_owned(),
        type_id: "Object".to_owned(),
        owner: "ann".to_owned(),
        deps: vec!["mesh-1".to_owned()],
        revision,
        data: value_bytes(data),
    }
}

fn map(pairs: &[(&str, i64)]) -> rmpv::Value {
    rmpv::Value::Map(
        pairs
            .iter()
            .map(|(k, v)| (rmpv::Value::from(*k), rmpv::Value::from(*v)))
            .collect(),
    )
}

/// A patch setting `key` to `value` in the datablock's top-level map.
fn set_patch(key: &str, value: i64) -> Bytes {
    #[derive(serde::Serialize)]
    struct Op<'a> {
        op: &'a str,
        path: Vec<&'a str>,
        value: i64,
    }
    encode(&vec![Op {
        op: "set",
        path: vec![key],
        value,
    }])
}

fn open(dir: &Path) -> (Store, Recovered) {
    Store::open(dir, Durability::Normal).expect("open the store")
}

fn active_session(dir: &Path, blocks: &[StoredBlock]) {
    let (mut store, _) = open(dir);
    let mut changes = vec![Change::State(SessionState::SrvSync)];
    changes.extend(blocks.iter().cloned().map(Change::Put));
    changes.push(Change::State(SessionState::Active));
    store.record(&changes).unwrap();
    store.commit().unwrap();
}

#[test]
fn an_empty_directory_is_a_waiting_session() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, recovered) = open(&dir.path().join("new"));
    assert!(recovered.image.is_none());
    assert!(dir.path().join("new").join(DB_FILE).exists());
}

#[test]
fn every_kind_of_change_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    active_session(
        dir.path(),
        &[
            block("a", 1, map(&[("x", 1)])),
            block("b", 1, map(&[("y", 2)])),
            block("c", 1, map(&[("z", 3)])),
        ],
    );
    {
        let (mut store, recovered) = open(dir.path());
        assert_eq!(recovered.image.unwrap().blocks.len(), 3);
        store
            .record(&[
                Change::Patch {
                    uuid: "a".into(),
                    revision: 2,
                    deps: None,
                    patch: set_patch("x", 10),
                },
                Change::Patch {
                    uuid: "a".into(),
                    revision: 3,
                    deps: Some(vec!["other".into()]),
                    patch: set_patch("w", 4),
                },
                Change::Put(block("b", 2, map(&[("y", 20)]))),
                Change::Delete { uuid: "c".into() },
                Change::Owner {
                    uuids: vec!["b".into()],
                    owner: "bob".into(),
                },
                Change::Put(block("d", 1, map(&[]))),
            ])
            .unwrap();
        store.commit().unwrap();
    }
    let (store, recovered) = open(dir.path());
    drop(store);
    assert_eq!(recovered.compacted_patches, 2);
    let blocks = recovered.image.unwrap().blocks;
    let uuids: Vec<&str> = blocks.iter().map(|b| b.uuid.as_str()).collect();
    assert_eq!(uuids, ["a", "b", "d"], "creation order is kept");
    assert_eq!(blocks[0].revision, 3);
    assert_eq!(blocks[0].data, value_bytes(map(&[("x", 10), ("w", 4)])));
    assert_eq!(blocks[0].deps, ["other"]);
    assert_eq!(blocks[1].revision, 2);
    assert_eq!(blocks[1].owner, "bob");
    assert_eq!(blocks[1].data, value_bytes(map(&[("y", 20)])));

    // The patches were folded into their datablock when it was opened.
    let (store, recovered) = open(dir.path());
    assert_eq!(recovered.compacted_patches, 0);
    let rows: i64 = store
        .conn
        .query_row("SELECT count(*) FROM patches", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

#[test]
fn uncommitted_changes_are_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    active_session(dir.path(), &[block("a", 1, map(&[("x", 1)]))]);
    {
        let (mut store, _) = open(dir.path());
        store
            .record(&[Change::Put(block("a", 2, map(&[("x", 2)])))])
            .unwrap();
        assert!(store.in_transaction());
    }
    let (_store, recovered) = open(dir.path());
    assert_eq!(recovered.image.unwrap().blocks[0].revision, 1);
}

#[test]
fn an_interrupted_upload_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = open(dir.path());
        store
            .record(&[
                Change::State(SessionState::SrvSync),
                Change::Put(block("a", 1, map(&[]))),
            ])
            .unwrap();
        store.commit().unwrap();
    }
    let (store, recovered) = open(dir.path());
    assert!(recovered.image.is_none());
    assert_eq!(recovered.discarded_upload, 1);
    drop(store);
    let (_store, recovered) = open(dir.path());
    assert_eq!(recovered.discarded_upload, 0, "discarded for good");
}

#[test]
fn an_empty_scene_stays_active() {
    let dir = tempfile::tempdir().unwrap();
    active_session(dir.path(), &[]);
    let (_store, recovered) = open(dir.path());
    assert_eq!(recovered.image, Some(SessionImage::default()));
}

#[test]
fn replace_swaps_the_whole_session() {
    let dir = tempfile::tempdir().unwrap();
    active_session(dir.path(), &[block("old", 1, map(&[]))]);
    {
        let (mut store, _) = open(dir.path());
        let image = SessionImage {
            blocks: vec![block("new", 7, map(&[("k", 1)]))],
        };
        store.replace(&image).unwrap();
    }
    let (_store, recovered) = open(dir.path());
    let blocks = recovered.image.unwrap().blocks;
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0].uuid.as_str(), blocks[0].revision), ("new", 7));
}

#[test]
fn a_second_server_is_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = Store::open(dir.path(), Durability::Strict).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn strict_durability_records_the_same() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(dir.path(), Durability::Strict).unwrap();
        store
            .record(&[
                Change::Put(block("a", 1, map(&[]))),
                Change::State(SessionState::Active),
            ])
            .unwrap();
        store.commit().unwrap();
    }
    let (_store, recovered) = open(dir.path());
    assert_eq!(recovered.image.unwrap().blocks.len(), 1);
}

/// Changes the database behind the store's back, as damage would.
fn tamper(dir: &Path, sql: &str) {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn damaged(dir: &Path) -> String {
    let err = Store::open(dir, Durability::Normal).unwrap_err();
    assert!(
        matches!(err, StoreError::Damaged { .. } | StoreError::Foreign { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(DB_FILE), "{message}");
    message
}

#[test]
fn damaged_rows_are_reported_by_table_and_key() {
    let cases: [(&str, &str); 6] = [
        (
            "UPDATE datablocks SET data = x'c1' WHERE uuid = 'a'",
            "row \"a\": data",
        ),
        (
            "UPDATE datablocks SET revision = 0 WHERE uuid = 'a'",
            "revision below 1",
        ),
        (
            "UPDATE datablocks SET deps = x'01' WHERE uuid = 'a'",
            "deps",
        ),
        (
            "INSERT INTO patches VALUES ('a', 3, NULL, x'90')",
            "a patch to revision 3 follows revision 1",
        ),
        (
            "INSERT INTO patches VALUES ('a', 2, NULL, x'c1')",
            "a revision 2",
        ),
        ("UPDATE meta SET value = 'DANCING'", "unknown state"),
    ];
    for (sql, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        active_session(dir.path(), &[block("a", 1, map(&[("x", 1)]))]);
        tamper(dir.path(), sql);
        let message = damaged(dir.path());
        assert!(message.contains(expected), "{sql}: {message}");
        // Nothing was changed: the same error again.
        assert_eq!(damaged(dir.path()), message);
    }
}

#[test]
fn patches_without_their_datablock_are_damage() {
    let dir = tempfile::tempdir().unwrap();
    active_session(dir.path(), &[block("a", 1, map(&[]))]);
    tamper(
        dir.path(),
        "INSERT INTO patches VALUES ('ghost', 2, NULL, x'90')",
    );
    assert!(damaged(dir.path()).contains("ghost"));
}

#[test]
fn a_waiting_session_with_datablocks_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    active_session(dir.path(), &[block("a", 1, map(&[]))]);
    tamper(dir.path(), "UPDATE meta SET value = 'WAITING'");
    assert!(damaged(dir.path()).contains("WAITING"));
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), vec![b'x'; 8192]).unwrap();
    let message = damaged(dir.path());
    assert!(message.contains("offset 0"), "{message}");
    // It was left as it was.
    assert_eq!(
        std::fs::read(dir.path().join(DB_FILE)).unwrap(),
        vec![b'x'; 8192]
    );
}

#[test]
fn another_programs_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    tamper(dir.path(), "CREATE TABLE notes (text TEXT)");
    let err = Store::open(dir.path(), Durability::Normal).unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
}

/// A closed store's database file, with everything checkpointed into it.
fn closed_database(blocks: usize) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let big = rmpv::Value::Binary(vec![7; 3000]);
    let list: Vec<StoredBlock> = (0..blocks)
        .map(|i| block(&format!("block-{i}"), 1, big.clone()))
        .collect();
    active_session(dir.path(), &list);
    let bytes = std::fs::read(dir.path().join(DB_FILE)).unwrap();
    (dir, bytes)
}

#[test]
fn a_truncated_database_is_refused_with_the_file_named() {
    let (dir, bytes) = closed_database(200);
    assert!(bytes.len() > 100_000, "{}", bytes.len());
    for keep in [50, 4096, bytes.len() / 2, bytes.len() - 4096] {
        std::fs::write(dir.path().join(DB_FILE), &bytes[..keep]).unwrap();
        let message = damaged(dir.path());
        assert!(message.contains("--load"), "{keep}: {message}");
    }
}

#[test]
fn a_corrupted_page_is_reported_with_its_offset() {
    let (dir, mut bytes) = closed_database(200);
    // Scribble over the header of a page in the middle of the file.
    let page = 4096;
    let start = (bytes.len() / 2 / page) * page;
    for b in &mut bytes[start..start + 16] {
        *b = 0xff;
    }
    std::fs::write(dir.path().join(DB_FILE), &bytes).unwrap();
    let message = damaged(dir.path());
    assert!(message.contains("byte offset"), "{message}");
}

#[test]
fn quick_check_messages_gain_offsets() {
    assert_eq!(
        with_offset("Page 3: btreeInitPage() returns error code 11", 4096),
        "Page 3: btreeInitPage() returns error code 11 (page 3 starts at byte offset 8192)"
    );
    assert_eq!(
        with_offset("Tree 2 page 9 cell 0: invalid page number", 1024),
        "Tree 2 page 9 cell 0: invalid page number (page 9 starts at byte offset 8192)"
    );
    assert_eq!(
        with_offset("row 4 missing from index", 4096),
        "row 4 missing from index"
    );
}

#[test]
fn deps_round_trip() {
    let deps = vec!["a".to_owned(), "ünïcode".to_owned()];
    assert_eq!(decode_deps(&encode_deps(&deps)).unwrap(), deps);
    assert_eq!(
        decode_deps(&encode_deps(&[])).unwrap(),
        Vec::<String>::new()
    );
    assert!(decode_deps(&[0x91, 0x01]).is_err());
}

/// The names of the data files in a data directory.
fn data_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("blobs"))
        .map(|listing| {
            listing
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn large_data_lives_in_files_that_follow_the_rows() {
    let big = |byte: u8| rmpv::Value::Binary(vec![byte; FILE_MIN_BYTES]);
    let dir = tempfile::tempdir().unwrap();
    active_session(
        dir.path(),
        &[block("a", 1, big(1)), block("b", 1, map(&[("x", 1)]))],
    );
    assert_eq!(data_files(dir.path()).len(), 1, "only the large one");
    {
        let (mut store, recovered) = open(dir.path());
        let blocks = recovered.image.unwrap().blocks;
        assert_eq!(blocks[0].data, value_bytes(big(1)));
        // Replaced by larger data: a new file, and the old one goes once
        // the replacement is committed.
        store.record(&[Change::Put(block("a", 2, big(2)))]).unwrap();
        store.commit().unwrap();
        assert_eq!(
            data_files(dir.path()).len(),
            1,
            "{:?}",
            data_files(dir.path())
        );
        // A file written in a transaction that never commits goes too.
        store.record(&[Change::Put(block("b", 2, big(3)))]).unwrap();
    }
    assert_eq!(data_files(dir.path()).len(), 1, "rolled back");
    let (mut store, recovered) = open(dir.path());
    let blocks = recovered.image.unwrap().blocks;
    assert_eq!(blocks[0].revision, 2);
    assert_eq!(blocks[0].data, value_bytes(big(2)));
    assert_eq!(blocks[1].data, value_bytes(map(&[("x", 1)])));
    // Small data again, then a deletion: no file is left.
    store
        .record(&[
            Change::Put(block("a", 3, map(&[("y", 2)]))),
            Change::Put(block("c", 1, big(4))),
            Change::Delete { uuid: "c".into() },
        ])
        .unwrap();
    store.commit().unwrap();
    drop(store);
    assert!(
        data_files(dir.path()).is_empty(),
        "{:?}",
        data_files(dir.path())
    );
    let (_store, recovered) = open(dir.path());
    assert_eq!(recovered.image.unwrap().blocks.len(), 2);
}

#[test]
fn a_missing_or_foreign_data_file_is_damage() {
    let big = rmpv::Value::Binary(vec![1; FILE_MIN_BYTES]);
    for (sql, expected) in [
        (
            "UPDATE datablocks SET file = '../session.db' WHERE uuid = 'a'",
            "not the name of a data file",
        ),
        (
            "UPDATE datablocks SET file = '999.bin' WHERE uuid = 'a'",
            "the data file of datablock",
        ),
        (
            "UPDATE datablocks SET data = x'c0' WHERE uuid = 'a'",
            "both in the row and in a file",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        active_session(dir.path(), &[block("a", 1, big.clone())]);
        tamper(dir.path(), sql);
        let err = Store::open(dir.path(), Durability::Normal).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{sql}: {err:?}");
        assert!(err.to_string().contains(expected), "{sql}: {err}");
    }
}
