//! Big payloads do not stall the server: while a large scene is received
//! and recorded, the heartbeat keeps its pace.

mod common;

use std::time::Duration;

use common::{T, TestServer, admin, block};
use replication_serve::client::Block;
use rmpv::Value;

/// The heartbeat timeout of the test: what the uploader and the server
/// each allow before giving the other up.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A recorded 256 MiB scene (16 datablocks of 16 MiB, each written to a
/// file of its own) is uploaded to a server with a 2 s heartbeat timeout.
/// The core used to receive, check and record it in long steps during
/// which no PING went out, and the uploader gave the server up. Now it
/// sees a PING well within the timeout all along, and the server keeps it.
#[test]
fn the_uploader_of_a_big_scene_is_not_dropped_while_it_is_recorded() {
    let data_dir = tempfile::tempdir().expect("data directory");
    let server = TestServer::start_with(|config| {
        config.in_memory = false;
        config.data_dir = Some(data_dir.path().to_owned());
        config.timeout_ms = 2000;
        config.heartbeat_interval_ms = 500;
    });
    let mut host = admin(&server, "host");
    let scene: Vec<Block> = (0..16u8)
        .map(|i| {
            block(
                &format!("image-{i}"),
                "Image",
                Value::Binary(vec![i; 16 << 20]),
            )
        })
        .collect();
    host.take_ping_gap();
    // The upload's last answer comes once the scene is recorded.
    let datablocks = host
        .upload(&scene, Duration::from_secs(120))
        .expect("upload");
    assert_eq!(datablocks, 16);
    drop(scene);
    let gap = host.take_ping_gap();
    assert!(
        gap < TIMEOUT,
        "the uploader waited {gap:?} for a PING: with a {TIMEOUT:?} timeout it would have left"
    );
    // The server kept the session: it still takes the uploader's changes.
    let small = block("note", "Text", Value::from("still here"));
    host.update_confirmed(&small, T)
        .expect("the uploader's session was kept");
    let recorded = std::fs::read_dir(data_dir.path().join("blobs"))
        .expect("large data is recorded in files")
        .count();
    assert_eq!(recorded, 16);
    server.stop();
}
