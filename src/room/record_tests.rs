//! Unit tests of what a recording room reports in [`Effects::changes`], of
//! compaction, and of restoring a room from a stored image.

use super::*;
use crate::protocol::codec::encode_value;
use crate::protocol::patch::{PatchOp, PathStep};

const ALICE: ClientId = ClientId(1);
const BOB: ClientId = ClientId(2);

fn spec(uuid: &str) -> BlockSpec {
    BlockSpec {
        uuid: uuid.to_owned(),
        type_id: Some("Object".to_owned()),
        owner: None,
        deps: None,
    }
}

fn value(n: i64, pad: usize) -> Value {
    Value::Map(vec![
        ("n".into(), n.into()),
        ("pad".into(), "p".repeat(pad).into()),
    ])
}

fn set_n(n: i64) -> Bytes {
    let op = PatchOp::Set {
        path: vec![PathStep::Key("n".to_owned())],
        value: n.into(),
    };
    encode_value(&Patch { ops: vec![op] }.to_value())
}

/// A recording room: alice (admin) uploaded `cube` (about `pad` bytes) and
/// left it COMMON; bob is in. Returns the changes of the upload.
fn recording_room(pad: usize) -> (Room, Vec<Change>) {
    let mut room = Room::new(Limits::default());
    room.set_recording(true);
    room.join(ALICE, "alice", true, None).unwrap();
    room.join(BOB, "bob", false, None).unwrap();
    let mut changes = Vec::new();
    let mut step = |room: &mut Room, step, block| {
        let fx = room.upload(ALICE, step, None, block).unwrap();
        changes.extend(fx.changes);
    };
    step(&mut room, UploadStep::Init, None);
    let mut cube = spec("cube");
    cube.owner = Some(COMMON.to_owned());
    step(
        &mut room,
        UploadStep::Set,
        Some((cube, encode_value(&value(0, pad)))),
    );
    step(&mut room, UploadStep::End, None);
    (room, changes)
}

#[test]
fn the_upload_is_recorded_as_it_arrives() {
    let (_, changes) = recording_room(10);
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert_eq!(changes[0], Change::State(SessionState::SrvSync));
    match &changes[1] {
        Change::Put(b) => {
            assert_eq!(
                (b.uuid.as_str(), b.revision, b.owner.as_str()),
                ("cube", 1, COMMON)
            );
            assert_eq!(b.data, encode_value(&value(0, 10)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(changes[2], Change::State(SessionState::Active));
}

#[test]
fn an_abandoned_upload_is_recorded_as_cleared() {
    let mut room = Room::new(Limits::default());
    room.set_recording(true);
    room.join(ALICE, "alice", true, None).unwrap();
    room.upload(ALICE, UploadStep::Init, None, None).unwrap();
    room.upload(
        ALICE,
        UploadStep::Set,
        None,
        Some((spec("a"), encode_value(&value(0, 1)))),
    )
    .unwrap();
    let fx = room.leave(ALICE);
    assert_eq!(
        fx.changes,
        [Change::Clear, Change::State(SessionState::Waiting)]
    );
}

#[test]
fn every_live_change_is_recorded_and_refusals_record_nothing() {
    let (mut room, _) = recording_room(10);
    // A full update, then a patch.
    let fx = room
        .update(BOB, spec("cube"), false, None, encode_value(&value(5, 10)))
        .unwrap();
    assert!(matches!(&fx.changes[..], [Change::Put(b)] if b.revision == 2));
    let fx = room
        .update(BOB, spec("cube"), true, Some(2), set_n(6))
        .unwrap();
    assert_eq!(
        fx.changes,
        [Change::Patch {
            uuid: "cube".into(),
            revision: 3,
            deps: None,
            patch: set_n(6),
        }]
    );
    // A refused patch (stale revision) records nothing.
    assert!(
        room.update(BOB, spec("cube"), true, Some(1), set_n(7))
            .is_err()
    );
    // Ownership, and its release when the owner leaves.
    let fx = room
        .change_owner(BOB, None, vec!["cube".into()], "bob".into(), false)
        .unwrap();
    assert_eq!(
        fx.changes,
        [Change::Owner {
            uuids: vec!["cube".into()],
            owner: "bob".into()
        }]
    );
    let fx = room.leave(BOB);
    assert_eq!(
        fx.changes,
        [Change::Owner {
            uuids: vec!["cube".into()],
            owner: COMMON.into()
        }]
    );
    // A new datablock, then its deletion.
    let fx = room
        .update(ALICE, spec("new"), false, None, encode_value(&value(1, 1)))
        .unwrap();
    assert!(matches!(&fx.changes[..], [Change::Put(b)] if b.uuid == "new" && b.owner == "alice"));
    let fx = room.delete(ALICE, None, "new".into(), false).unwrap();
    assert_eq!(fx.changes, [Change::Delete { uuid: "new".into() }]);
}

#[test]
fn a_room_not_recording_reports_no_changes() {
    let (mut room, _) = recording_room(10);
    room.set_recording(false);
    let fx = room
        .update(BOB, spec("cube"), true, Some(1), set_n(1))
        .unwrap();
    assert!(fx.changes.is_empty());
}

#[test]
fn patches_are_compacted_into_full_data_once_they_outweigh_it() {
    // A datablock of about 40 KiB: above the 16 KiB floor, so its own size
    // decides.
    let (mut room, _) = recording_room(40_000);
    let size = room.repository().get("cube").unwrap().content.size();
    let patch_len = set_n(1).len();
    let mut patches = 0;
    let mut puts = Vec::new();
    for revision in 1..=10_000u64 {
        let n = i64::try_from(revision).unwrap();
        let fx = room
            .update(BOB, spec("cube"), true, Some(revision), set_n(n))
            .unwrap();
        match &fx.changes[..] {
            [Change::Patch { .. }] => patches += 1,
            [Change::Put(b)] => {
                assert_eq!(b.revision, revision + 1);
                // The full data is the patched value, freshly encoded.
                assert_eq!(b.data, encode_value(&value(n, 40_000)));
                puts.push(revision);
            }
            other => panic!("{other:?}"),
        }
    }
    // Between two full records, the patches add up to about the data's size.
    let per_put = size / patch_len;
    assert!(puts.len() >= 2, "{puts:?}");
    assert!(
        puts.windows(2)
            .all(|w| (w[1] - w[0]) as usize <= per_put + 1),
        "{puts:?}, {per_put}"
    );
    assert_eq!(patches + puts.len(), 10_000);
}

#[test]
fn restore_is_active_with_owners_reset_and_revisions_kept() {
    let image = SessionImage {
        blocks: vec![
            StoredBlock {
                uuid: "mesh".into(),
                type_id: "Mesh".into(),
                owner: "someone".into(),
                deps: vec![],
                revision: 7,
                data: encode_value(&value(6, 3)),
            },
            StoredBlock {
                uuid: "obj".into(),
                type_id: "Object".into(),
                owner: COMMON.into(),
                deps: vec!["mesh".into()],
                revision: 2,
                data: encode_value(&value(1, 3)),
            },
        ],
    };
    let mut room = Room::restore(Limits::default(), image.clone());
    assert_eq!(room.state(), SessionState::Active);
    let mesh = room.repository().get("mesh").unwrap();
    assert_eq!((mesh.owner.as_str(), mesh.revision), (COMMON, 7));
    // A late joiner is RUNNING, and the image comes back in snapshot order
    // with the owners as they are now.
    assert_eq!(room.join(BOB, "bob", false, None), Ok(AuthStatus::Running));
    let back = room.image().unwrap();
    assert_eq!(back.blocks.len(), 2);
    assert_eq!(back.blocks[0].uuid, "mesh");
    assert_eq!(back.blocks[0].owner, COMMON);
    assert_eq!(back.blocks[1].data, image.blocks[1].data);
    // The next change continues from the restored revision.
    let fx = room.update(BOB, spec("obj"), false, Some(2), encode_value(&value(2, 3)));
    assert!(fx.is_ok());
    assert_eq!(room.repository().get("obj").unwrap().revision, 3);
}

#[test]
fn there_is_no_image_before_the_scene_exists() {
    let mut room = Room::new(Limits::default());
    assert!(room.image().is_none());
}
