"""Whole sessions against the real server, through pyzmq and libzmq: hosting,
joining, editing in every direction, ownership, presence, kicks, timeouts."""

from __future__ import annotations

import time

import pytest
from conftest import T, record

import replication_client.session as session_module
from replication_client import (
    COMMON,
    AuthenticationError,
    Datablock,
    Deleted,
    Disconnected,
    NotAuthenticated,
    OwnerChanged,
    PatchFailed,
    Reply,
    RequestFailed,
    RequestRefused,
    ServerError,
    SessionEnded,
    SnapshotDone,
    Updated,
    UploadDone,
    UploadIncomplete,
    UsersChanged,
)
from replication_client import patch as P

BIG = bytes(range(256)) * 5000  # 1.28 MB: more than chunk_bytes, so chunked


def scene() -> list[Datablock]:
    """An object depending on a mesh depending on a material, uploaded in
    the wrong order on purpose, plus a large image."""
    return [
        Datablock(
            "obj",
            "Object",
            {"name": "Cube", "location": [0.0, 0.0, 0.0]},
            owner=COMMON,
            deps=["mesh", "mat"],
        ),
        Datablock(
            "mesh",
            "Mesh",
            {"vertices": [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]},
            owner=COMMON,
            deps=["mat"],
        ),
        Datablock("mat", "Material", {"name": "Red", "color": [1.0, 0.0, 0.0]}, owner=COMMON),
        Datablock("img", "Image", BIG, owner=COMMON),
    ]


def hosted(connect, blocks=None):
    host = connect("host", admin=True)
    host.upload(scene() if blocks is None else blocks, timeout=T)
    return host


def joined(connect, name):
    s = connect(name)
    assert s.auth is not None and s.auth.status == "RUNNING"
    s.download(timeout=T)
    return s


def test_an_admin_hosts_and_two_clients_download(connect):
    host = connect("host", admin=True)
    assert host.auth.status == "LOBBY" and host.auth.state == "WAITING"
    assert host.upload(scene(), timeout=T) == 4
    assert host.synced and host.blocks["obj"].owner == COMMON
    info = host.server_info()
    assert (info["state"], info["datablocks"]) == ("ACTIVE", 4)

    for name in ("alice", "bob"):
        joiner = connect(name)
        assert joiner.auth.status == "RUNNING"
        events = record(joiner)
        progress = []
        blocks = joiner.download(timeout=T, progress=lambda d, t, p=progress: p.append((d, t)))
        assert progress == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
        order = [e.uuid for e in events if isinstance(e, Updated)]
        assert order.index("mat") < order.index("mesh") < order.index("obj")
        assert any(isinstance(e, SnapshotDone) and e.datablocks == 4 for e in events)
        for block in scene():
            got = blocks[block.uuid]
            assert (got.data, got.type_id, got.deps, got.revision) == (
                block.data,
                block.type_id,
                block.deps,
                1,
            )
    assert host.server_info()["users_online"] == 3


def test_a_lobby_user_gets_the_scene_when_the_upload_ends(connect):
    early = connect("early")
    assert early.auth.status == "LOBBY"
    early.subscribe()
    hosted(connect)
    early.wait_until(lambda: early.synced, T)
    assert early.blocks["img"].data == BIG


def test_edits_and_patches_flow_in_every_direction(connect):
    host = hosted(connect)
    alice = joined(connect, "alice")
    bob = joined(connect, "bob")
    everyone = (host, alice, bob)

    def all_see(uuid, data, revision):
        for s in everyone:
            s.wait_until(
                lambda s=s: s.blocks.get(uuid) is not None and s.blocks[uuid].revision == revision,
                T,
            )
            assert s.blocks[uuid].data == data, s.user

    host.push_patch("obj", [P.set_op(["location", 1], 2.5)])
    all_see("obj", {"name": "Cube", "location": [0.0, 2.5, 0.0]}, 2)
    alice.push_patch("obj", [P.splice_op(["name"], 0, 1, "Ću"), P.set_op(["hidden"], True)])
    all_see("obj", {"name": "Ćuube", "location": [0.0, 2.5, 0.0], "hidden": True}, 3)
    bob.push_patch("obj", [P.remove_op(["hidden"]), P.set_op(["location", 3], 7)])
    all_see("obj", {"name": "Ćuube", "location": [0.0, 2.5, 0.0, 7]}, 4)
    bob.push("mesh", {"vertices": [[5.0, 5.0, 5.0]]})
    all_see("mesh", {"vertices": [[5.0, 5.0, 5.0]]}, 2)
    alice.push("img", BIG[::-1])  # chunked on the way up and on the way down
    all_see("img", BIG[::-1], 2)
    host.push("lamp", {"power": 1000}, type_id="Light", owner=COMMON)
    all_see("lamp", {"power": 1000}, 1)

    events = record(host)
    alice.push_patch("mesh", [P.set_op(["vertices", 0, 2], -1.0)])
    host.wait_until(lambda: host.blocks["mesh"].revision == 3, T)
    update = next(e for e in events if isinstance(e, Updated))
    assert (update.sender, update.source) == ("alice", "update")
    assert update.patch == [{"op": "set", "path": ["vertices", 0, 2], "value": -1.0}]
    for s in everyone:  # every replica is the server's state
        for uuid in ("obj", "mesh", "img", "lamp"):
            s.wait_until(lambda s=s, u=uuid: s.blocks[u].revision == host.fetch(u).revision, T)
    fresh = joined(connect, "late")
    assert {u: b.data for u, b in fresh.blocks.items()} == {
        u: b.data for u, b in host.blocks.items()
    }


def test_a_patch_that_does_not_apply_locally_is_not_sent(connect):
    host = hosted(connect)
    with pytest.raises(PatchFailed) as err:
        host.push_patch("obj", [P.set_op(["location", 1], 1.0), P.remove_op(["nope"])])
    assert err.value.op == 1
    assert host.blocks["obj"].data == {"name": "Cube", "location": [0.0, 0.0, 0.0]}
    assert host.fetch("obj").revision == 1


def test_stale_patches_are_refused_and_the_replica_repairs_itself(connect):
    host = hosted(connect)
    alice = joined(connect, "alice")
    alice.push_patch("obj", [P.set_op(["name"], "Alice")])
    host.wait_until(lambda: host.blocks["obj"].revision == 2, T)
    events = record(host)
    host.push_patch("obj", [P.set_op(["name"], "Stale")], base_revision=1)
    host.wait_until(lambda: any(isinstance(e, ServerError) for e in events), T)
    error = next(e for e in events if isinstance(e, ServerError))
    assert error.code == "stale_revision" and error.refers_to["uuid"] == "obj"
    host.wait_until(lambda: any(isinstance(e, Updated) and e.source == "fetch" for e in events), T)
    assert host.blocks["obj"].data["name"] == "Alice" and host.blocks["obj"].revision == 2


def test_locks_are_refused_and_released(connect):
    host = hosted(connect)
    alice = joined(connect, "alice")
    bob = joined(connect, "bob")
    bob_events = record(bob)
    assert alice.lock(["obj"])["owner"] == "alice"
    bob.wait_until(lambda: bob.blocks["obj"].owner == "alice", T)
    assert OwnerChanged(("obj",), "alice", "alice") in bob_events

    with pytest.raises(RequestRefused) as err:
        bob.lock(["obj"])
    assert err.value.code == "not_owner" and "alice" in err.value.message
    with pytest.raises(RequestRefused) as err:
        bob.delete("obj")
    assert err.value.code == "not_owner"
    with pytest.raises(RequestRefused) as err:  # all or nothing: mat stays COMMON
        bob.change_owner(["mat", "obj"], "bob")
    assert bob.fetch("mat").owner == COMMON

    bob.push("obj", {"name": "Hacked"})  # refused: the replica is repaired
    bob.wait_until(lambda: any(isinstance(e, ServerError) for e in bob_events), T)
    error = next(e for e in bob_events if isinstance(e, ServerError))
    assert (error.code, error.refers_to.get("type"), error.refers_to.get("uuid")) == (
        "not_owner",
        "UPDATE",
        "obj",
    )
    bob.wait_until(lambda: bob.blocks["obj"].data.get("name") == "Cube", T)

    with pytest.raises(RequestRefused) as err:  # only admins may force
        bob.change_owner(["obj"], "bob", force=True)
    assert "admin" in err.value.message
    host.change_owner(["obj"], "host", force=True)
    alice.wait_until(lambda: alice.blocks["obj"].owner == "host", T)
    host.unlock(["obj"])
    bob.lock(["obj"])
    alice.wait_until(lambda: alice.blocks["obj"].owner == "bob", T)


def test_a_release_or_a_leave_never_overtakes_own_updates(connect):
    # UPDATE travels on the publisher channel, RIGHT and DISCONNECT on the
    # commands channel, with no order between them: unlock and leave first
    # confirm that the server applied the updates.
    host = hosted(connect)
    alice = joined(connect, "alice")
    events = record(host)
    alice.lock(["img"])
    alice.push("img", BIG[::-1])  # chunked: about twenty messages
    alice.unlock(["img"])
    host.wait_until(lambda: OwnerChanged(("img",), COMMON, "alice") in events, T)
    updated = next(i for i, e in enumerate(events) if isinstance(e, Updated) and e.uuid == "img")
    assert updated < events.index(OwnerChanged(("img",), COMMON, "alice"))
    alice.push_patch("obj", [P.set_op(["name"], "Last words")])
    alice.leave()
    host.wait_until(lambda: host.blocks["obj"].data["name"] == "Last words", T)


def test_nowait_requests_answer_through_events(connect):
    host = hosted(connect)
    alice = joined(connect, "alice")
    events = record(alice)
    lock_id = alice.lock_nowait(["obj"])
    fetch_id = alice.fetch_nowait("mat")
    refused_id = alice.delete_nowait("nothing-here")
    info_id = alice.server_info_nowait()
    kick_id = alice.kick_nowait("host")
    alice.wait_until(lambda: sum(isinstance(e, (Reply, RequestFailed)) for e in events) == 5, T)
    answers = {e.request_id: e for e in events if isinstance(e, (Reply, RequestFailed))}
    assert answers[lock_id] == Reply(
        lock_id, "right", {"id": lock_id, "uuids": ["obj"], "owner": "alice"}
    )
    assert answers[fetch_id].result.data == {"name": "Red", "color": [1.0, 0.0, 0.0]}
    assert answers[refused_id].error.code == "unknown_datablock"
    assert answers[info_id].result["users_online"] == 2
    assert answers[kick_id].error.code == "not_admin"
    host.wait_until(lambda: host.blocks["obj"].owner == "alice", T)


def test_deletes_reach_the_others(connect):
    host = hosted(connect)
    alice = joined(connect, "alice")
    events = record(host)
    alice.delete("mat")
    assert "mat" not in alice.blocks
    host.wait_until(lambda: "mat" not in host.blocks, T)
    assert Deleted("mat", "alice") in events
    with pytest.raises(RequestRefused) as err:
        host.fetch("mat")
    assert err.value.code == "unknown_datablock"


def test_presence_is_seen_by_everyone(connect):
    host = hosted(connect, [])
    alice = joined(connect, "alice")
    alice.set_metadata({"frame": 42, "mode": "EDIT_MESH", "color": [1.0, 0.5, 0.0]})

    def alice_on(s, metadata):
        return any(u.name == "alice" and u.metadata == metadata for u in s.users)

    host.wait_until(
        lambda: alice_on(host, {"frame": 42, "mode": "EDIT_MESH", "color": [1.0, 0.5, 0.0]}), T
    )
    alice.set_metadata({"mode": None, "frame": 43})
    host.wait_until(lambda: alice_on(host, {"frame": 43, "color": [1.0, 0.5, 0.0]}), T)
    me = next(u for u in host.list_users() if u.name == "host")
    assert me.admin and me.status == "ACTIVE"
    host.wait_until(lambda: all(u.latency_ms is not None for u in host.users), T)
    events = record(alice)
    alice.set_metadata({f"k{i}": i for i in range(300)})  # over the 256 keys limit
    alice.wait_until(lambda: any(isinstance(e, ServerError) for e in events), T)
    error = next(e for e in events if isinstance(e, ServerError))
    assert error.code == "limit_exceeded" and error.refers_to["type"] == "UPDATE_USER_METADATA"
    assert any(isinstance(e, UsersChanged) for e in events)


def test_an_admin_kicks_and_a_non_admin_cannot(connect):
    host = hosted(connect)
    alice = joined(connect, "alice")
    bob = joined(connect, "bob")
    alice.lock(["obj", "mat"])
    with pytest.raises(RequestRefused) as err:
        bob.kick("alice")
    assert err.value.code == "not_admin"
    assert host.server_info()["users_online"] == 3

    bob_events = record(bob)
    assert host.kick("alice", "testing")["user"] == "alice"
    ended = alice.wait_for(SessionEnded, T)
    assert ended.kicked and ended.reason == "kicked by host: testing"
    assert not alice.authenticated
    with pytest.raises(NotAuthenticated):
        alice.lock(["img"])
    bob.wait_until(lambda: bob.blocks["obj"].owner == COMMON, T)
    assert OwnerChanged(("mat", "obj"), COMMON, "alice") in bob_events
    assert host.server_info()["users_online"] == 2


def test_a_silent_client_times_out_and_its_locks_are_freed(start_server, connect):
    server = start_server("-t", "1500")
    host = connect("host", admin=True, port=server.port)
    host.upload(scene(), timeout=T)
    ghost = connect("ghost", port=server.port)
    ghost.download(timeout=T)
    ghost.lock(["obj"])
    ghost.answer_pings = False  # and it polls no more: silence
    events = record(host)
    host.wait_until(lambda: OwnerChanged(("obj",), COMMON, "ghost") in events, T)
    assert host.server_info()["users_online"] == 1
    ended = ghost.wait_for(SessionEnded, T)
    assert ended.timed_out and ended.by_server


def test_the_heartbeat_thread_keeps_an_idle_session_alive(start_server, connect):
    server = start_server("-t", "1000")
    idle = connect("idle", port=server.port)
    # Deliberately idle for three times the timeout: no poll, no request.
    time.sleep(3.0)
    assert idle.server_info()["users_online"] == 1
    assert idle.authenticated and idle.ended is None


def test_logins_are_refused_with_the_servers_reason(start_server, connect, monkeypatch):
    server = start_server("-spwd", "letmein")
    port = server.port
    with pytest.raises(AuthenticationError) as err:
        connect("mallory", admin=True, admin_password="guess", server_password="letmein", port=port)
    assert err.value.code == "wrong_admin_password"
    with pytest.raises(AuthenticationError) as err:
        connect("eve", port=port)
    assert err.value.code == "wrong_server_password"
    bob = connect("bob", server_password="letmein", port=port)
    assert bob.auth.status == "LOBBY"
    with pytest.raises(AuthenticationError) as err:
        connect("bob", server_password="letmein", port=port)
    assert err.value.code == "name_taken"
    twin = connect("twin", server_password="letmein", port=port, auth=False)
    events = record(twin)
    monkeypatch.setattr(session_module, "PROTOCOL_VERSION", 7)
    rid = twin.authenticate_nowait()
    twin.wait_until(lambda: any(isinstance(e, RequestFailed) for e in events), T)
    failed = next(e for e in events if isinstance(e, RequestFailed))
    assert failed.request_id == rid and failed.error.code == "version_mismatch"
    assert "7" in failed.error.reason and "2" in failed.error.reason


def test_uploads_are_refused_with_reasons(connect):
    bob = connect("bob")
    with pytest.raises(RequestRefused) as err:
        bob.upload([])
    assert err.value.code == "not_admin"
    host = connect("host", admin=True)
    with pytest.raises(UploadIncomplete) as err:
        host.upload(
            [
                Datablock("a", "Object", 1),
                Datablock("a", "Object", 2),
                Datablock("b", "Object", 3, owner="someone"),
            ],
            timeout=T,
        )
    refused = {e.refers_to["uuid"]: e.code for e in err.value.errors}
    assert refused == {"a": "duplicate_datablock", "b": "invalid_message"}
    assert err.value.datablocks == 1 and host.blocks["a"].data == 1 and "b" not in host.blocks
    events = record(host)
    rid = host.upload_nowait([Datablock("c", "Object", 3)])
    done = host.wait_for(UploadDone, T)
    assert done.request_id == rid and done.error.code == "already_initialised"
    assert not any(isinstance(e, ServerError) for e in events)


def test_background_mode_serves_the_addon_thread(connect):
    host = hosted(connect)
    alice = connect("alice")
    alice.start_background()
    events = record(alice)
    alice.subscribe(window=2)  # a tiny window: the thread must keep acknowledging
    alice.wait_until(lambda: alice.synced, T)
    assert alice.blocks["img"].data == BIG
    assert alice.lock(["obj"])["owner"] == "alice"  # blocking call from this thread
    host.push_patch("mat", [P.set_op(["name"], "Blue")])
    alice.wait_until(lambda: alice.blocks["mat"].data["name"] == "Blue", T)
    assert any(isinstance(e, Updated) and e.sender == "host" for e in events)
    alice.push_patch("obj", [P.set_op(["name"], "Moved")])
    host.wait_until(lambda: host.blocks["obj"].data["name"] == "Moved", T)
    alice.leave()
    assert alice.ended is not None and alice.ended.reason == "goodbye"
    host.wait_until(lambda: host.blocks["obj"].owner == COMMON, T)


def test_users_hear_when_the_server_shuts_down(server, connect):
    host = hosted(connect, [])
    server.stop()
    ended = host.wait_for(SessionEnded, T)
    assert ended.reason == "server shutting down"
    with pytest.raises(Disconnected) as err:
        raise ended.error
    assert err.value.by_server
