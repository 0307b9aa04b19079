mod common;
use common::*;
use replication_serve::protocol::ServerMessage;

#[test]
fn smoke() {
    let (server, mut host) = hosted(&[block("cube", "Object", object("Cube", [0.0, 0.0, 0.0]))]);
    let (mut bob, blocks) = joined(&server, "bob");
    assert_eq!(blocks.len(), 1);
    host.update(&block("cube", "Object", object("Cube", [1.0, 2.0, 3.0])))
        .unwrap();
    let ev = wait_update(&mut bob, "cube");
    assert_eq!(
        value(ev.payload.as_ref().unwrap()),
        object("Cube", [1.0, 2.0, 3.0])
    );
    let info = bob.server_info(T).unwrap();
    assert!(matches!(
        info,
        ServerMessage::ServerInfo {
            users_online: 2,
            ..
        }
    ));
}
