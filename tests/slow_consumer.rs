//! A client that stops reading must not slow the others: it is disconnected
//! as too slow once its outbox passes the limit, while a reading client
//! receives every update, in order. One that only pauses gets everything
//! that waited for it once it reads again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::*;
use replication_serve::client::ClientOptions;
use replication_serve::core::ConsoleRequest;
use replication_serve::protocol::ServerMessage;
use rmpv::Value;

const UPDATES: u64 = 30_000;
/// How far the writer may run ahead of the reading client. The reading
/// client is a debug build on a busy machine: pacing the writer by its
/// progress keeps it from falling behind on its own, while the stalled
/// client falls behind by everything.
const AHEAD: u64 = 1_000;

#[test]
fn a_stalled_client_does_not_slow_a_reading_one() {
    let server = TestServer::start_with(|c| {
        c.limits.outbox_max_messages = 2_000;
        // Long enough that the stalled client is not dropped for silence
        // first: this test is about the outbox rule.
        c.timeout_ms = 60_000;
    });
    let mut host = admin(&server, "host");
    host.upload(&[block("stroke", "Mesh", Value::from(0))], T)
        .unwrap();
    let (mut fast, _) = joined(&server, "fast");
    // Without batches, so that every update is one message in its outbox:
    // batches would fit all of them within libzmq's queue, bounded by its
    // high-water mark, and the outbox limit would never be reached.
    let (stalled, _) = joined_with(ClientOptions {
        batches: false,
        ..ClientOptions::new(server.port, "stalled")
    });
    // From here on, `stalled` never reads again.

    let received = Arc::new(AtomicU64::new(0));
    let progress = received.clone();
    let writer = std::thread::spawn(move || {
        let payload = Value::Binary(vec![42; 1024]);
        for sent in 0..UPDATES {
            let deadline = Instant::now() + T;
            while sent - progress.load(Ordering::Acquire) >= AHEAD {
                assert!(
                    Instant::now() < deadline,
                    "the reading client stopped receiving"
                );
                std::thread::yield_now();
            }
            host.update(&block("stroke", "Mesh", payload.clone()))
                .unwrap();
        }
        host
    });

    let mut expected_revision = 2;
    while expected_revision < UPDATES + 2 {
        assert_eq!(
            next_revision(&mut fast),
            expected_revision,
            "no update lost or reordered"
        );
        expected_revision += 1;
        received.fetch_add(1, Ordering::Release);
    }
    let _host = writer.join().unwrap();

    // The stalled client was disconnected, and only it.
    let deadline = Instant::now() + T;
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        server
            .console
            .blocking_send(ConsoleRequest::Users {
                room: None,
                reply: tx,
            })
            .unwrap();
        let names: Vec<String> = rx
            .blocking_recv()
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|(_, u)| u.name)
            .collect();
        if !names.contains(&"stalled".to_owned()) {
            assert_eq!(names, ["host", "fast"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stalled client still connected: {names:?}"
        );
        // Poll the fast client meanwhile; this also paces the loop.
        let _ = fast.next_event(std::time::Duration::from_millis(50));
    }
    drop(stalled);
}

/// A client that pauses, long enough for its connection to fill and its
/// messages to wait in the server's outbox, then reads on, receives every
/// update in order and stays connected: the server keeps retrying the full
/// connection while it serves the others.
#[test]
fn a_client_that_pauses_and_resumes_receives_everything() {
    // 20,000 updates of 1 KB: more than libzmq's queues (1,000 messages a
    // side) and loopback TCP's buffers (a few MiB) can hold.
    const PAUSED_UPDATES: u64 = 20_000;
    let server = TestServer::start_with(|c| {
        // Not dropped for silence while paused, and no pings: nothing but
        // the outbox's own retries may move the queued updates.
        c.timeout_ms = 120_000;
        c.heartbeat_interval_ms = 60_000;
    });
    let mut host = admin(&server, "host");
    host.upload(&[block("stroke", "Mesh", Value::from(0))], T)
        .unwrap();
    // One message per update, so that the outbox counts them one by one.
    let (mut paused, _) = joined_with(ClientOptions {
        batches: false,
        ..ClientOptions::new(server.port, "paused")
    });
    let payload = Value::Binary(vec![7; 1024]);
    for _ in 0..PAUSED_UPDATES {
        host.update(&block("stroke", "Mesh", payload.clone()))
            .unwrap();
    }
    // The host's updates are all applied once its own ACK comes back.
    host.update_confirmed(&block("stroke", "Mesh", Value::from(-1)), T)
        .unwrap();
    for expected_revision in 2..PAUSED_UPDATES + 3 {
        assert_eq!(
            next_revision(&mut paused),
            expected_revision,
            "no update lost or reordered"
        );
    }
}

/// The revision of the next update of "stroke" that `client` receives.
fn next_revision(client: &mut replication_serve::client::Client) -> u64 {
    let ev = wait_update(client, "stroke");
    let ServerMessage::Update { header, .. } = ev.message else {
        unreachable!("wait_update returns updates")
    };
    header.revision
}
