//! One session shared by the Rust client and the Python client
//! (`clients/python`), so each side proves the other reads the protocol the
//! same way: snapshot order and data, chunking both ways, patches applied by
//! both, ownership and presence.
//!
//! The Python side is `clients/python/tests/interop_peer.py`, run with the
//! interpreter named by `REPLICATION_PYTHON` (scripts/test.sh sets it to the
//! virtual environment it creates). Without it the test says it is skipped
//! and why, and passes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Instant;

use common::*;
use replication_serve::protocol::patch::Patch;
use replication_serve::protocol::{COMMON, ServerMessage};
use rmpv::Value;

fn map(entries: Vec<(Value, Value)>) -> Value {
    Value::Map(entries)
}

fn s(text: &str) -> Value {
    Value::from(text)
}

fn floats(values: &[f64]) -> Value {
    Value::Array(values.iter().map(|v| Value::from(*v)).collect())
}

/// The scene the Rust host uploads; interop_peer.py holds the same values.
fn material() -> Value {
    map(vec![
        (s("name"), s("Red")),
        (s("color"), floats(&[1.0, 0.0, 0.0])),
    ])
}

fn mesh(vertices: &[[f64; 3]], blob: Vec<u8>) -> Value {
    map(vec![
        (
            s("vertices"),
            Value::Array(vertices.iter().map(|v| floats(v)).collect()),
        ),
        (s("blob"), Value::Binary(blob)),
    ])
}

fn cube(name: &str, location: [f64; 3], tags: &[&str], props: Vec<(Value, Value)>) -> Value {
    map(vec![
        (s("name"), s(name)),
        (s("location"), floats(&location)),
        (s("tags"), Value::Array(tags.iter().map(|t| s(t)).collect())),
        (s("props"), map(props)),
    ])
}

fn first_mesh() -> Value {
    mesh(
        &[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]],
        (0..10_000u32).map(|i| (i % 251) as u8).collect(),
    )
}

fn first_cube() -> Value {
    cube(
        "Cube",
        [0.0; 3],
        &["a"],
        vec![(Value::from(1), s("int key")), (s("é"), s("unicode"))],
    )
}

/// The Python peer's output, line by line, with a deadline per line.
struct Peer {
    child: Child,
    lines: Receiver<String>,
}

impl Peer {
    fn start(python: &str, port: u16) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/clients/python/tests/interop_peer.py"
        );
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {script}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for the peer to print `want`; a failed peer ends the test with
    /// its message (on stderr, shown by cargo test).
    fn expect(&mut self, want: &str) {
        match self.lines.recv_timeout(T) {
            Ok(line) if line == want => {}
            Ok(line) => panic!("the Python peer said {line:?}, expected {want:?}"),
            Err(RecvTimeoutError::Timeout) => panic!("the Python peer did not say {want:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().expect("wait for the peer");
                panic!("the Python peer ended ({status}) before saying {want:?}; see its stderr")
            }
        }
    }

    fn finish(mut self) {
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().expect("peer status") {
                assert!(status.success(), "the Python peer failed: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the Python peer did not exit");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_python_client_and_the_rust_client_share_a_session() {
    let Ok(python) = std::env::var("REPLICATION_PYTHON") else {
        eprintln!(
            "SKIPPED the_python_client_and_the_rust_client_share_a_session: \
             REPLICATION_PYTHON is not set (scripts/test.sh sets it to a virtual \
             environment with clients/python installed)"
        );
        return;
    };
    // Small chunks, so that datablocks travel in chunks in both directions.
    let server = TestServer::start_with(|c| {
        c.limits.chunk_bytes = 4096;
        c.limits.max_header_bytes = 4096;
    });
    let mut rust = admin(&server, "rust");
    let mut scene = vec![
        block("cube", "Object", first_cube()),
        block("mesh", "Mesh", first_mesh()),
        block("mat", "Material", material()),
    ];
    scene[0].deps = vec!["mesh".into()];
    scene[1].deps = vec!["mat".into()];
    assert_eq!(rust.upload(&scene, T).expect("upload"), 3);

    let mut peer = Peer::start(&python, server.port);
    peer.expect("downloaded");
    peer.expect("edited");

    // The peer's presence.
    let presence = map(vec![
        (s("ready"), Value::Boolean(true)),
        (s("lang"), s("python")),
    ]);
    wait(&mut rust, "the peer's presence", |e| match &e.message {
        ServerMessage::ClientsState { users } => users
            .iter()
            .any(|u| u.name == "py" && u.metadata == presence),
        _ => false,
    });

    // Its patch, applied here with the Rust rules, gives the expected cube.
    let ev = wait_update(&mut rust, "cube");
    let ServerMessage::Update {
        header,
        sender,
        patch,
        ..
    } = &ev.message
    else {
        unreachable!()
    };
    assert_eq!((sender.as_str(), *patch, header.revision), ("py", true, 2));
    let mut local = first_cube();
    Patch::from_value(value(ev.payload.as_ref().expect("patch bytes")))
        .expect("a well-formed patch")
        .apply(&mut local)
        .expect("the patch applies");
    let after_python = cube(
        "Ćube",
        [0.0, 2.5, 0.0],
        &["a", "b"],
        vec![
            (Value::from(1), s("int key")),
            (s("é"), s("unicode")),
            (Value::from(2), s("new int key")),
        ],
    );
    assert_eq!(local, after_python);
    assert_eq!(value(&rust.fetch("cube", T).expect("fetch").data), local);

    // Its full update, chunked by the Python side and again by the server.
    let ev = wait_update(&mut rust, "mesh");
    let ServerMessage::Update { header, patch, .. } = &ev.message else {
        unreachable!()
    };
    assert!(!patch);
    assert_eq!(
        (header.revision, header.deps.as_slice()),
        (2, ["mat".to_owned()].as_slice())
    );
    let new_mesh = mesh(
        &[[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]],
        (0..9_000u32).map(|i| (i * 7 % 256) as u8).collect(),
    );
    assert_eq!(value(ev.payload.as_ref().expect("data")), new_mesh);

    // Its lock.
    let ev = wait(
        &mut rust,
        "the peer's lock",
        |e| matches!(&e.message, ServerMessage::Right { owner, .. } if owner == "py"),
    );
    assert!(matches!(
        ev.message,
        ServerMessage::Right { ref uuids, sender: Some(ref s), .. } if uuids == &["mat"] && s == "py"
    ));
    assert_eq!(rust.fetch("mat", T).expect("fetch").header.owner, "py");

    // Now a Rust patch the Python side must apply exactly so.
    let rust_patch = Value::Array(vec![
        map(vec![
            (s("op"), s("remove")),
            (s("path"), Value::Array(vec![s("tags"), Value::from(0)])),
        ]),
        map(vec![
            (s("op"), s("set")),
            (s("path"), Value::Array(vec![s("location"), Value::from(0)])),
            (s("value"), Value::from(-1.0)),
        ]),
        // "Ć" is two bytes: the splice replaces the "u" after it.
        map(vec![
            (s("op"), s("splice")),
            (s("path"), Value::Array(vec![s("name")])),
            (s("index"), Value::from(2)),
            (s("delete"), Value::from(1)),
            (s("insert"), s("ü")),
        ]),
        map(vec![
            (s("op"), s("remove")),
            (s("path"), Value::Array(vec![s("props"), Value::from(1)])),
        ]),
        map(vec![
            (s("op"), s("set")),
            (s("path"), Value::Array(vec![s("props"), s("é")])),
            (s("value"), s("changed")),
        ]),
    ]);
    let rust_patch = Patch::from_value(rust_patch).expect("well-formed");
    rust_patch.apply(&mut local).expect("applies");
    assert_eq!(
        local,
        cube(
            "Ćübe",
            [-1.0, 2.5, 0.0],
            &["b"],
            vec![(s("é"), s("changed")), (Value::from(2), s("new int key"))],
        )
    );
    rust.patch("cube", &rust_patch, Some(2))
        .expect("send the patch");
    peer.expect("verified");
    peer.finish();
    let cube_now = rust.fetch("cube", T).expect("fetch");
    assert_eq!(
        (value(&cube_now.data), cube_now.header.revision),
        (local, 3)
    );
    // The peer left: its lock went back to COMMON.
    wait(
        &mut rust,
        "the peer's lock released",
        |e| matches!(&e.message, ServerMessage::Right { owner, .. } if owner == COMMON),
    );
}
