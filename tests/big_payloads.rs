//! Big payloads do not stall the server: while a large scene is received
//! and recorded, the heartbeat keeps its pace; and the server holds a big
//! datablock once, not once per step that handles it.

mod child;
mod common;

use std::time::Duration;

use child::{server_on, start_listening};
use common::{T, TestServer, admin, block};
use replication_serve::client::{Block, ClientOptions};
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

/// The peak resident memory of a process (VmHWM), in bytes.
fn peak_memory(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

/// One 64 MiB datablock, uploaded in chunks to the binary that records it,
/// raises the server's peak memory by about its size: the reassembled
/// chunks, the stored value, its forward and its record share one buffer.
/// The server used to hold three copies at once (a 512 MiB datablock took
/// its peak to 1.59 GB).
#[test]
fn a_big_datablock_is_held_once() {
    const SIZE: usize = 64 << 20;
    let dir = tempfile::tempdir().expect("data directory");
    let server = start_listening(false, |port| server_on(dir.path(), port, &[]));
    let mut host = server.client(|p| ClientOptions::admin(p, "host", "admin"));
    host.authenticate(T).expect("admin auth");
    let before = peak_memory(&server.pid());
    let image = block("image", "Image", Value::Binary(vec![7; SIZE]));
    assert_eq!(
        host.upload(std::slice::from_ref(&image), Duration::from_secs(120))
            .expect("upload"),
        1
    );
    // A late joiner is streamed the same buffer.
    let mut joiner = server.client(|p| ClientOptions::new(p, "joiner"));
    joiner.authenticate(T).expect("auth");
    joiner
        .download(Duration::from_secs(120), |_, _| {})
        .expect("download");
    let grown = peak_memory(&server.pid()).saturating_sub(before);
    let size = SIZE as u64;
    assert!(
        grown >= size / 2,
        "the peak grew by {grown} bytes for a {size}-byte datablock: is it held at all?"
    );
    assert!(
        grown < size + size / 2,
        "the peak grew by {grown} bytes for a {size}-byte datablock: more than one copy"
    );
}
