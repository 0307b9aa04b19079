//! Every input kept in fuzz/regressions/ (one that once crashed a fuzz
//! target, or a seed) runs through its target's code again: a fixed crash
//! stays fixed.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("headers", replication_serve::fuzzing::headers),
    ("publisher", replication_serve::fuzzing::publisher),
    ("patches", replication_serve::fuzzing::patches),
    ("chunks", replication_serve::fuzzing::chunks),
    ("session_file", replication_serve::fuzzing::session_file),
    ("recorded_rows", replication_serve::fuzzing::recorded_rows),
];

#[test]
fn kept_inputs_no_longer_crash_their_targets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).expect("read a kept input");
            target(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no kept inputs in {}", root.display());
}

/// The targets themselves hold on empty and tiny inputs.
#[test]
fn every_target_takes_empty_and_tiny_inputs() {
    for (_, target) in TARGETS {
        for data in [
            &b""[..],
            &[0],
            &[0xff; 3],
            &[0x81, 0xa4, b't', b'y', b'p', b'e'],
        ] {
            target(data);
        }
    }
}
