//! A client that stops reading must not slow the others: it is disconnected
//! as too slow once its outbox passes the limit, while a reading client
//! receives every update, in order.

mod common;

use common::*;
use replication_serve::core::ConsoleRequest;
use replication_serve::protocol::ServerMessage;
use rmpv::Value;

const UPDATES: u64 = 30_000;

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
    let (stalled, _) = joined(&server, "stalled");
    // From here on, `stalled` never reads again.

    let payload = Value::Binary(vec![42; 1024]);
    let writer = std::thread::spawn(move || {
        for _ in 0..UPDATES {
            host.update(&block("stroke", "Mesh", payload.clone()))
                .unwrap();
        }
        host
    });

    let mut expected_revision = 2;
    while expected_revision < UPDATES + 2 {
        let ev = wait_update(&mut fast, "stroke");
        let ServerMessage::Update { header, .. } = ev.message else {
            unreachable!()
        };
        assert_eq!(
            header.revision, expected_revision,
            "no update lost or reordered"
        );
        expected_revision += 1;
    }
    let _host = writer.join().unwrap();

    // The stalled client was disconnected, and only it.
    let deadline = std::time::Instant::now() + T;
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        server
            .console
            .blocking_send(ConsoleRequest::Users(tx))
            .unwrap();
        let names: Vec<String> = rx
            .blocking_recv()
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        if !names.contains(&"stalled".to_owned()) {
            assert_eq!(names, ["host", "fast"]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stalled client still connected: {names:?}"
        );
        // Poll the fast client meanwhile; this also paces the loop.
        let _ = fast.next_event(std::time::Duration::from_millis(50));
    }
    drop(stalled);
}
