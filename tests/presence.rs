//! Presence is told as changes, within a budget per room: nothing that did
//! not change is repeated, and no client can make the server send more
//! than the budget, while everyone's view of the user list stays whole.

mod common;

use std::time::{Duration, Instant};

use common::{T, TestServer};
use replication_serve::client::{Client, ClientOptions};
use replication_serve::protocol::{Channel, UserState};
use rmpv::Value;

fn big_metadata(tag: &str, bytes: usize) -> Value {
    Value::Map(vec![
        (Value::from("tag"), Value::from(tag)),
        (Value::from("blob"), Value::from(vec![b'x'; bytes])),
    ])
}

/// Polls every client until `done` holds for `watcher`'s user list.
fn settle(clients: &mut [Client], done: impl Fn(&[UserState]) -> bool) {
    let deadline = Instant::now() + T;
    loop {
        for c in clients.iter_mut() {
            c.poll_once(10).expect("poll");
        }
        if done(clients[0].users()) {
            return;
        }
        assert!(Instant::now() < deadline, "{:?}", clients[0].users().len());
    }
}

/// Polls every client for `time`; returns the bytes they received on the
/// commands channel meanwhile, in all.
fn traffic(clients: &mut [Client], time: Duration) -> u64 {
    let before: u64 = clients
        .iter()
        .map(|c| c.received_bytes(Channel::Commands))
        .sum();
    let started = Instant::now();
    while started.elapsed() < time {
        for c in clients.iter_mut() {
            c.poll_once(10).expect("poll");
        }
    }
    clients
        .iter()
        .map(|c| c.received_bytes(Channel::Commands))
        .sum::<u64>()
        - before
}

fn room_of(server: &TestServer, n: usize, metadata_bytes: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..n)
        .map(|i| {
            let mut c = Client::connect(ClientOptions::new(server.port, &format!("u{i}")))
                .expect("connect");
            c.authenticate(T).expect("auth");
            c.set_metadata(big_metadata(&format!("u{i}"), metadata_bytes))
                .expect("metadata");
            c
        })
        .collect();
    settle(&mut clients, |users| {
        users.len() == n
            && users
                .iter()
                .all(|u| matches!(&u.metadata, Value::Map(m) if m.len() == 2))
    });
    clients
}

/// Ten users with 50 KB of presence each, and nothing changing: before,
/// every heartbeat sent each of them the whole list (500 KB, 5 MB/s for
/// the room); now only the latencies go out.
#[test]
fn nothing_that_did_not_change_is_repeated() {
    let server = TestServer::start();
    let mut clients = room_of(&server, 10, 50_000);
    let bytes = traffic(&mut clients, Duration::from_secs(3));
    assert!(
        bytes < 100_000,
        "{bytes} bytes of presence in 3 s for a room where nothing changed"
    );
    // Each still sees everyone, with the metadata.
    for c in &clients {
        assert_eq!(c.users().len(), 10);
    }
}

/// One user rewriting 50 KB of presence as fast as it can, for three
/// seconds: the room's presence stays within its budget (2 MiB a second by
/// default, each message counted once per recipient), where before every
/// change went to everyone within 30 ms (about 60 MB/s here), and in the
/// end everyone sees its last value.
#[test]
fn a_presence_flood_stays_within_the_rooms_budget() {
    let server = TestServer::start();
    let mut clients = room_of(&server, 6, 50_000);
    let before: u64 = clients
        .iter()
        .map(|c| c.received_bytes(Channel::Commands))
        .sum();
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(3) {
        round += 1;
        clients[1]
            .set_metadata(big_metadata(&format!("round {round}"), 50_000))
            .expect("metadata");
        for c in clients.iter_mut() {
            c.poll_once(1).expect("poll");
        }
    }
    let bytes = clients
        .iter()
        .map(|c| c.received_bytes(Channel::Commands))
        .sum::<u64>()
        - before;
    let seconds = started.elapsed().as_secs_f64();
    // The budget's second in hand, the time, and one message over.
    let allowed = (2u64 << 20) as f64 * (seconds + 1.0) + 2_000_000.0;
    assert!(
        (bytes as f64) < allowed,
        "{bytes} bytes of presence in {seconds:.1} s ({round} changes)"
    );
    let last = format!("round {round}");
    settle(&mut clients, |users| {
        users.iter().any(|u| {
            u.name == "u1"
                && matches!(&u.metadata, Value::Map(m)
                    if m.iter().any(|(k, v)| k.as_str() == Some("tag") && v.as_str() == Some(last.as_str())))
        })
    });
}
