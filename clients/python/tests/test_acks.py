"""Own UPDATEs carry a request id: the server's ACK gives their revision,
a refusal names their id, and wait_applied waits for the ACKs (protocol
sections 4.2 "ACK" and 4.3 "UPDATE")."""

from __future__ import annotations

import pytest
from conftest import T, record
from test_session import BIG, hosted, joined

from replication_client import (
    COMMON,
    OwnerChanged,
    Reply,
    RequestRefused,
    ServerError,
    Session,
    Updated,
    pack,
    unpack,
)
from replication_client import patch as P
from replication_client.protocol import Channel


def replies(events, kind="update"):
    return {e.request_id: e.result for e in events if isinstance(e, Reply) and e.kind == kind}


def test_an_ack_arrives_with_the_revision(connect):
    host = hosted(connect)
    alice = joined(connect, "alice")
    events = record(alice)

    rid = alice.push_patch("obj", [P.set_op(["name"], "A")])
    assert isinstance(rid, int) and alice.pending_pushes() == [rid]
    alice.wait_applied()
    assert alice.pending_pushes() == []
    assert replies(events) == {rid: 2}
    assert alice.blocks["obj"].revision == 2
    assert alice.push_confirmed("obj", {"name": "B"}) == 3
    assert alice.push_patch_confirmed("obj", [P.set_op(["name"], "C")]) == 4
    assert replies(events) == {rid: 2}  # the blocking forms return it instead
    assert alice.push_confirmed("new", [1, 2], type_id="List", owner=COMMON) == 1
    assert alice.blocks["new"].revision == 1

    # The host edits the mesh; alice, who has not polled since, replaces it.
    # Her replica guessed revision 2, the server applied hers as 3: the ACK
    # puts the replica right, so the next patch's base_revision is correct.
    assert host.push_confirmed("mesh", {"vertices": []}) == 2
    rid = alice.push("mesh", {"vertices": [[9.0, 9.0, 9.0]]})
    alice.wait_applied(["mesh"])
    assert replies(events)[rid] == 3
    alice.wait_until(lambda: alice.blocks["mesh"].revision == 3 and not alice._replica.fetching)
    assert alice.blocks["mesh"].data == {"vertices": [[9.0, 9.0, 9.0]]}
    assert alice.push_patch_confirmed("mesh", [P.set_op(["vertices", 0, 0], 1.0)]) == 4
    host.wait_until(lambda: host.blocks["mesh"].revision == 4, T)
    assert host.blocks["mesh"].data == {"vertices": [[1.0, 9.0, 9.0]]}

    # A chunked update is acknowledged after its last chunk.
    assert alice.push_confirmed("img", BIG[::-1]) == 2

    # Sent unchecked, a patch is not in the replica: the ACK makes it FETCH.
    alice.push_patch("mat", [P.set_op(["name"], "Blue")], base_revision=1, check=False)
    alice.wait_until(lambda: alice.blocks["mat"].data["name"] == "Blue", T)
    assert alice.blocks["mat"].revision == 2


def test_a_refused_push_is_reported_with_its_id(connect):
    host = hosted(connect)
    alice = joined(connect, "alice")
    bob = joined(connect, "bob")
    alice.lock(["obj", "img"])
    bob.wait_until(lambda: bob.blocks["img"].owner == "alice", T)
    events = record(bob)

    first = bob.push_patch("mat", [P.set_op(["name"], "Green")])
    refused = bob.push("obj", {"name": "Hacked"})
    refused_big = bob.push("img", BIG[::-1])  # chunked: the header is refused, then its CHUNKs
    last = bob.push_patch("mat", [P.set_op(["color", 1], 1.0)])
    assert bob.pending_pushes(["obj", "img"]) == [refused, refused_big]
    bob.wait_applied()
    assert bob.pending_pushes() == []
    # This ACK follows the ERRORs about the refused CHUNKs (the publisher
    # channel is processed in order): all of them have arrived.
    assert bob.push_confirmed("mesh", {"vertices": []}) == 2
    bob.poll()

    assert replies(events) == {first: 2, last: 3}
    errors = [e for e in events if isinstance(e, ServerError)]
    assert [(e.request_id, e.code) for e in errors] == [
        (refused, "not_owner"),
        (refused_big, "not_owner"),
    ]
    assert errors[0].refers_to == {"type": "UPDATE", "id": refused, "uuid": "obj"}
    assert errors[1].refers_to["id"] == refused_big and "transfer" in errors[1].refers_to
    # The replica, which showed the refused pushes, is repaired.
    bob.wait_until(lambda: bob.blocks["obj"].data == {"name": "Cube", "location": [0.0] * 3}, T)
    bob.wait_until(lambda: bob.blocks["img"].revision == 1 and bob.blocks["img"].data == BIG, T)

    # The blocking form raises instead, with the id; no event repeats it.
    with pytest.raises(RequestRefused) as err:
        bob.push_confirmed("obj", {"name": "Again"})
    assert err.value.code == "not_owner" and err.value.refers_to["type"] == "UPDATE"
    with pytest.raises(RequestRefused) as err:
        bob.push_patch_confirmed("mat", [P.set_op(["name"], "Old")], base_revision=1)
    assert err.value.code == "stale_revision"
    bob.poll()
    assert len([e for e in events if isinstance(e, ServerError)]) == 2
    host.wait_until(lambda: host.blocks["mat"].data["name"] == "Green", T)


def test_lock_push_wait_applied_unlock_keeps_its_order(connect):
    # Each round sends a large update in several chunks on the publisher
    # channel, then the release on the commands channel without any wait of
    # its own (unlock_nowait): only wait_applied keeps the release behind
    # the update. The host must see every update before its release.
    host = hosted(connect)
    alice = joined(connect, "alice")
    size = 4 * alice.auth.chunk_bytes + 12345  # five chunks
    seen = []

    @host.on(OwnerChanged)
    def released(event):
        if event.owner == COMMON and event.uuids == ("img",):
            block = host.blocks["img"]
            seen.append((block.revision, block.data[:1], len(block.data)))

    host_updates = record(host)
    alice_events = record(alice)
    for i in range(20):
        alice.lock(["img"])
        payload = bytes([i]) * size
        rid = alice.push("img", payload)
        alice.wait_applied(["img"])
        assert alice.pending_pushes() == []
        assert replies(alice_events)[rid] == i + 2
        assert alice.blocks["img"].revision == i + 2
        alice.unlock_nowait(["img"])
        host.wait_until(lambda n=i + 1: len(seen) == n, T)
        assert seen[-1] == (i + 2, bytes([i]), size), f"round {i}: the release came first"
    assert not any(isinstance(e, ServerError) for e in alice_events)
    updates = [e for e in host_updates if isinstance(e, Updated) and e.uuid == "img"]
    assert [(e.source, e.sender) for e in updates] == [("update", "alice")] * 20
    alice.wait_until(lambda: alice.blocks["img"].owner == COMMON, T)


def test_a_fetch_answered_before_the_ack_of_a_newer_push_is_fetched_again():
    """The subscriber and commands channels have no order with each other:
    a FETCH's answer can come before the ACK of an own push sent after the
    FETCH. The replica then holds the answer, not the push, and must fetch
    once the ACK shows the answer was older."""
    s = Session("127.0.0.1", 1, "me")
    sent = []
    s._send = lambda channel, msgs: sent.extend(unpack(frames[0]) for frames in msgs)

    def command(header):
        s._on_wire(Channel.COMMANDS, [pack(header)])
        s._dispatch(None)

    def sub(header, data=None):
        s._on_wire(Channel.SUBSCRIBER, [pack(header)] + ([] if data is None else [pack(data)]))
        s._dispatch(None)

    command({"type": "AUTH", "status": "RUNNING", "state": "ACTIVE", "token": "t"})
    sub(
        {
            "type": "SNAPSHOT",
            "step": "BEGIN",
            "datablocks": 1,
            "window": 99,
            "window_bytes": 1 << 30,
        }
    )
    cube = {"type": "DATABLOCK", "uuid": "cube", "type_id": "Object", "owner": COMMON, "deps": []}
    sub(dict(cube, revision=1), {"v": 0})
    sub({"type": "SNAPSHOT", "step": "END", "datablocks": 1})

    patched = s.push_patch("cube", [P.set_op(["v"], 1)])
    # Someone else's update came first: the replica fetches the datablock.
    sub(
        {
            "type": "UPDATE",
            "uuid": "cube",
            "type_id": "Object",
            "revision": 2,
            "patch": True,
            "sender": "other",
            "owner": COMMON,
            "deps": [],
        },
        [P.set_op(["v"], 5)],
    )
    fetch = sent[-1]
    assert fetch["type"] == "FETCH"
    command(
        {
            "type": "ERROR",
            "code": "stale_revision",
            "message": "stale",
            "refers_to": {"type": "UPDATE", "id": patched, "uuid": "cube"},
        }
    )
    full = s.push("cube", {"v": 1})  # last writer wins: the whole data
    sub(dict(cube, revision=2, id=fetch["id"]), {"v": 5})  # before the server applied `full`
    command({"type": "ACK", "id": full, "uuid": "cube", "revision": 3})
    again = sent[-1]
    assert again["type"] == "FETCH" and again["id"] != fetch["id"]
    sub(dict(cube, revision=3, id=again["id"]), {"v": 1})
    assert (s.blocks["cube"].revision, s.blocks["cube"].data) == (3, {"v": 1})
    s.close()
