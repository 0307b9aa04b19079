"""Batches of updates (protocol section 15): reading UPDATES, a burst of
forwarded updates in one message, as the same updates one by one; and
sending several updates at once with push_many, each answered on its own.

The server tests watch the raw traffic by wrapping a session's frame
handler (what it reads) and its send (what it writes)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import T, record
from test_rooms import Fed
from test_session import BIG, hosted, joined

from replication_client import (
    COMMON,
    FullUpdate,
    LocalError,
    NotAuthenticated,
    PatchFailed,
    PatchUpdate,
    ProtocolError,
    PushIncomplete,
    Reply,
    RequestRefused,
    ServerError,
    Session,
    Updated,
    pack,
    unpack,
)
from replication_client import patch as P
from replication_client.protocol import (
    MAX_BATCH,
    Channel,
    batch_groups,
    batch_message,
    split_batch,
)

# ---------------------------------------------------------------- helpers


def read_headers(session: Session) -> list[dict[str, Any]]:
    """The headers of every subscriber message ``session`` reads from now
    on, as they came off the wire (an UPDATES before it is split)."""
    seen: list[dict[str, Any]] = []
    on_wire = session._on_wire

    def spy(channel: Channel, frames: list[bytes]) -> None:
        if channel is Channel.SUBSCRIBER and frames:
            seen.append(unpack(frames[0]))
        on_wire(channel, frames)

    session._on_wire = spy  # type: ignore[method-assign]
    return seen


def sent_headers(session: Session) -> list[dict[str, Any]]:
    """The headers of every publisher message ``session`` sends from now
    on (after the token frame)."""
    seen: list[dict[str, Any]] = []
    send = session._send

    def spy(channel: Channel, msgs: list[list[bytes]]) -> None:
        if channel is Channel.PUBLISHER:
            seen.extend(unpack(frames[1]) for frames in msgs)
        send(channel, msgs)

    session._send = spy  # type: ignore[method-assign]
    return seen


def updates_from(session: Session, sender: str) -> list[tuple[str, int, Any]]:
    """(uuid, revision, patch or packed data) of every update of ``sender``
    the replica applies from now on, taken when it is applied."""
    seen: list[tuple[str, int, Any]] = []

    def applied(e: Updated) -> None:
        if e.source == "update" and e.sender == sender:
            what = e.patch if e.patch is not None else pack(e.block.data)
            seen.append((e.uuid, e.block.revision, what))

    session.on(Updated, applied)
    return seen


def expected(
    updates: list[FullUpdate | PatchUpdate], revisions: dict[str, int]
) -> list[tuple[str, int, Any]]:
    """What ``updates_from`` should see for ``updates`` applied in order to
    datablocks at ``revisions`` (absent: new)."""
    out = []
    revisions = dict(revisions)
    for u in updates:
        revisions[u.uuid] = revisions.get(u.uuid, 0) + 1
        what = list(u.ops) if isinstance(u, PatchUpdate) else pack(u.data)
        out.append((u.uuid, revisions[u.uuid], what))
    return out


def reader(connect, name: str, **options: Any) -> Session:
    s = connect(name, **options)
    s.download(timeout=T)
    return s


def kinds(headers: list[dict[str, Any]]) -> list[str]:
    return [h["type"] for h in headers]


# ---------------------------------------------------------------- server


def test_readers_with_and_without_batches_see_a_burst_in_order(connect):
    host = hosted(connect)
    writer = joined(connect, "writer")
    fast = reader(connect, "fast")
    plain = reader(connect, "plain", batches=False)
    assert writer.auth.batches and fast.auth.batches
    assert plain.batches is False and plain.auth.batches is False
    fast_read, plain_read = read_headers(fast), read_headers(plain)
    fast_seen, plain_seen = updates_from(fast, "writer"), updates_from(plain, "writer")
    sent = sent_headers(writer)

    # Patches of one datablock, each on the revision the previous one makes
    # (base_revision AUTO), a payload too large for a batch in the middle,
    # then more creations than one UPDATES may carry.
    burst: list[FullUpdate | PatchUpdate] = [
        PatchUpdate("obj", [P.set_op(["location", 0], float(i))]) for i in range(600)
    ]
    burst.append(FullUpdate("img", BIG[::-1]))
    burst += [FullUpdate(f"n{i}", {"i": i}, type_id="Note", owner=COMMON) for i in range(1100)]
    ids = writer.push_many(burst)
    assert len(ids) == len(burst) and ids == sorted(ids)

    # Sent as: one UPDATES of 600 patches, the image chunked, then the
    # creations split at 1,024.
    assert kinds(sent)[0] == "UPDATES" and len(sent[0]["updates"]) == 600
    assert sent[1]["type"] == "UPDATE" and sent[1]["id"] == ids[600] and "transfer" in sent[1]
    batches = [h for h in sent if h["type"] == "UPDATES"]
    assert [len(h["updates"]) for h in batches] == [600, 1024, 76]
    assert [u["id"] for h in batches for u in h["updates"]] == ids[:600] + ids[601:]
    assert all(u["type"] == "UPDATE" and "transfer" not in u for h in batches for u in h["updates"])

    want = expected(burst, {"obj": 1, "img": 1})
    for s, seen in ((fast, fast_seen), (plain, plain_seen)):
        s.wait_until(lambda seen=seen: len(seen) >= len(want), T)
        assert seen == want, s.user
    writer.wait_applied(timeout=T)
    assert writer.pending_pushes() == []

    # The batching reader got batches, the other one never did.
    assert "UPDATES" in kinds(fast_read) and "UPDATES" not in kinds(plain_read)
    batched = sum(len(h["updates"]) for h in fast_read if h["type"] == "UPDATES")
    singles = sum(1 for h in fast_read if h["type"] == "UPDATE")
    assert batched + singles == len(burst)
    assert kinds(plain_read).count("UPDATE") == len(burst)

    for s in (host, writer, fast, plain):
        s.wait_until(lambda s=s: s.blocks["obj"].revision == 601, T)
        assert s.blocks["obj"].data["location"] == [599.0, 0.0, 0.0], s.user
        assert s.blocks["img"].data == BIG[::-1] and s.blocks["img"].revision == 2
        assert s.blocks["n1099"].data == {"i": 1099} and s.blocks["n1099"].revision == 1
    assert host.fetch("obj").revision == 601


def test_a_spent_budget_leaves_the_rest_of_a_batch_in_order(connect):
    hosted(connect)
    writer = joined(connect, "writer")
    fast = reader(connect, "fast")
    burst = [FullUpdate(f"n{i}", {"i": i}, type_id="Note", owner=COMMON) for i in range(600)]
    writer.push_many(burst)

    # With no budget each poll applies one item and leaves the rest of the
    # batch it took for the next poll, in order, none lost or seen twice.
    seen: list[str] = []
    most = 0
    deadline = time.monotonic() + T
    while len(seen) < len(burst) and time.monotonic() < deadline:
        got = [e.uuid for e in fast.poll(0.05, budget=0.0) if isinstance(e, Updated)]
        most = max(most, len(got))
        seen += got
    assert seen == [u.uuid for u in burst]
    assert most == 1
    assert fast.blocks["n599"].data == {"i": 599}


def test_one_batch_reaches_a_batching_reader_as_one_message(connect):
    hosted(connect)
    writer = joined(connect, "writer")
    fast = reader(connect, "fast")
    plain = reader(connect, "plain", batches=False)
    fast_read, plain_read = read_headers(fast), read_headers(plain)
    fast_seen, plain_seen = updates_from(fast, "writer"), updates_from(plain, "writer")
    sent = sent_headers(writer)

    burst: list[FullUpdate | PatchUpdate] = [
        FullUpdate(f"p{i}", [i, "x" * i], type_id="Point", owner=COMMON) for i in range(40)
    ]
    burst += [PatchUpdate("mat", [P.set_op(["color", 1], i / 10)]) for i in range(10)]
    writer.push_many(burst)
    assert kinds(sent) == ["UPDATES"]

    want = expected(burst, {"mat": 1})
    for s, seen in ((fast, fast_seen), (plain, plain_seen)):
        s.wait_until(lambda seen=seen: len(seen) >= len(want), T)
        assert seen == want, s.user
    assert kinds(fast_read) == ["UPDATES"]
    assert [u["uuid"] for u in fast_read[0]["updates"]] == [u.uuid for u in burst]
    assert all(u["sender"] == "writer" for u in fast_read[0]["updates"])
    assert kinds(plain_read) == ["UPDATE"] * len(burst)

    # Payloads that fill chunk_bytes together: as many per UPDATES as fit,
    # and what is left alone goes as a single UPDATE.
    sent.clear()
    size = writer.auth.chunk_bytes * 2 // 5
    heavy = [FullUpdate(f"p{i}", bytes([i]) * size) for i in range(5)]
    revisions = writer.push_many_confirmed(heavy, timeout=T)
    assert revisions == [2] * 5
    assert [(h["type"], len(h.get("updates", [0]))) for h in sent] == [
        ("UPDATES", 2),
        ("UPDATES", 2),
        ("UPDATE", 1),
    ]
    for s in (fast, plain):
        s.wait_until(lambda s=s: s.blocks["p4"].revision == 2, T)
        assert [s.blocks[f"p{i}"].data for i in range(5)] == [u.data for u in heavy], s.user


def test_a_refused_update_in_a_batch_does_not_stop_the_others(connect):
    host = hosted(connect)
    writer = joined(connect, "writer")
    fast = reader(connect, "fast")
    host.lock(["mesh"])
    writer.wait_until(lambda: writer.blocks["mesh"].owner == "host", T)
    events = record(writer)
    fast_seen = updates_from(fast, "writer")

    ids = writer.push_many(
        [
            PatchUpdate("obj", [P.set_op(["name"], "First")]),
            PatchUpdate("mat", [P.set_op(["name"], "Stale")], base_revision=7),
            FullUpdate("mesh", {"vertices": []}),  # owned by the host
            PatchUpdate("obj", [P.set_op(["name"], "Second")]),
        ]
    )
    writer.wait_applied(timeout=T)
    writer.poll()
    assert {e.request_id: e.result for e in events if isinstance(e, Reply)} == {
        ids[0]: 2,
        ids[3]: 3,
    }
    errors = [e for e in events if isinstance(e, ServerError)]
    assert [(e.request_id, e.code) for e in errors] == [
        (ids[1], "stale_revision"),
        (ids[2], "not_owner"),
    ]
    assert errors[0].refers_to == {"type": "UPDATE", "id": ids[1], "uuid": "mat"}
    fast.wait_until(lambda: len(fast_seen) >= 2, T)
    assert [(uuid, revision) for uuid, revision, _ in fast_seen] == [("obj", 2), ("obj", 3)]
    # The writer's replica showed the refused updates: it is repaired.
    writer.wait_until(lambda: writer.blocks["mat"].data["name"] == "Red", T)
    writer.wait_until(lambda: writer.blocks["mesh"].data == host.blocks["mesh"].data, T)
    assert writer.blocks["mat"].revision == 1 and writer.blocks["mesh"].revision == 1
    assert writer.blocks["obj"].data["name"] == "Second"

    # The blocking form applies the others too and names the refused ones.
    events.clear()
    with pytest.raises(PushIncomplete) as err:
        writer.push_many_confirmed(
            [
                FullUpdate("mesh", {"vertices": [[1.0, 1.0, 1.0]]}),
                PatchUpdate("obj", [P.set_op(["name"], "Third")]),
            ],
            timeout=T,
        )
    assert err.value.revisions == [None, 4]
    assert [(e.code, e.refers_to["uuid"]) for e in err.value.errors] == [("not_owner", "mesh")]
    assert isinstance(err.value.errors[0], RequestRefused)
    writer.poll()
    assert not any(isinstance(e, ServerError) for e in events)  # raised instead
    host.wait_until(lambda: host.blocks["obj"].data["name"] == "Third", T)


def test_confirmed_batches_get_their_acks(connect):
    host = hosted(connect)
    writer = joined(connect, "writer")
    events = record(writer)

    revisions = writer.push_many_confirmed(
        [
            PatchUpdate("obj", [P.set_op(["name"], "One")]),
            FullUpdate("lamp", {"power": 10}, type_id="Light", owner=COMMON),
            PatchUpdate("obj", [P.set_op(["name"], "Two")]),  # on the revision One makes
            FullUpdate("img", BIG),  # chunked, between two batches
            PatchUpdate("lamp", [P.set_op(["power"], 20)]),
            FullUpdate("mesh", {"vertices": []}, deps=["mat"]),
        ],
        timeout=T,
    )
    assert revisions == [2, 1, 3, 2, 2, 2]
    assert writer.pending_pushes() == []
    assert (writer.blocks["obj"].revision, writer.blocks["lamp"].revision) == (3, 2)
    writer.poll()
    assert not any(isinstance(e, (Reply, ServerError)) for e in events)  # returned instead

    # Without waiting: one Reply per update, and wait_applied covers them.
    ids = writer.push_many(
        [PatchUpdate("lamp", [P.set_op(["power"], p)]) for p in (30, 40, 50)]
        + [FullUpdate("mat", {"name": "Green"})]
    )
    assert writer.pending_pushes() == ids
    writer.wait_applied(timeout=T)
    assert writer.pending_pushes() == []
    writer.poll()
    replies = {e.request_id: e.result for e in events if isinstance(e, Reply)}
    assert replies == dict(zip(ids, [3, 4, 5, 2], strict=True))
    assert host.fetch("lamp").data == {"power": 50}
    assert writer.push_many([]) == [] and writer.push_many_confirmed([]) == []


def test_a_malformed_batch_is_refused_whole(connect):
    host = hosted(connect)
    writer = joined(connect, "writer")
    fast = reader(connect, "fast")
    fast_seen = updates_from(fast, "writer")
    events = record(writer)
    token = writer._token
    assert token is not None
    chunk_bytes = writer.auth.chunk_bytes

    def update(rid: int, **extra: Any) -> dict[str, Any]:
        return {"type": "UPDATE", "id": rid, "uuid": "obj", **extra}

    good = pack({"name": "Hacked", "location": [9.0, 9.0, 9.0]})
    bad = [
        # lengths: one too few, not adding up, a zero
        ([update(901), update(902)], [len(good)], good + good, "invalid_message"),
        ([update(903), update(904)], [len(good), len(good)], good + good[:-1], "invalid_message"),
        ([update(905), update(906)], [len(good), 0], good, "invalid_message"),
        # an element that is not an UPDATE, or that announces chunks
        ([update(907), {"type": "CHUNK", "transfer": 1, "index": 0}], [3, 3], b"\x01" * 6, None),
        ([update(908, transfer=5, chunks=1, size=3)], [3], b"\x01" * 3, "invalid_message"),
        # nothing in it, no data frame, a data frame over chunk_bytes
        ([], [], b"", "invalid_message"),
        ([update(909)], [len(good)], None, "invalid_message"),
        ([update(910)], [chunk_bytes + 1], b"\x01" * (chunk_bytes + 1), "too_large"),
    ]
    for updates, lengths, data, _ in bad:
        header = pack({"type": "UPDATES", "updates": updates, "lengths": lengths})
        frames = [token, header] + ([] if data is None else [data])
        writer._send(Channel.PUBLISHER, [frames])
    # The publisher channel is processed in order: this ACK follows every
    # refusal above.
    assert writer.push_confirmed("mat", {"name": "After"}, timeout=T) == 2
    writer.wait_until(lambda: len([e for e in events if isinstance(e, ServerError)]) >= len(bad))
    errors = [e for e in events if isinstance(e, ServerError)]
    assert len(errors) == len(bad)
    for error, (_, _, _, code) in zip(errors, bad, strict=True):
        assert error.refers_to == {"type": "UPDATES"} and error.request_id is None
        assert error.code == (code or "invalid_message")
    assert not any(isinstance(e, Reply) for e in events)
    assert host.fetch("obj").revision == 1
    assert writer.blocks["obj"].data == host.blocks["obj"].data
    fast.wait_until(lambda: fast.blocks["mat"].data == {"name": "After"}, T)
    assert [(uuid, revision) for uuid, revision, _ in fast_seen] == [("mat", 2)]


# ---------------------------------------------------------------- no server


def test_batches_are_split_within_the_limits():
    small = [({"type": "UPDATE", "id": i, "uuid": f"u{i}"}, b"\x01") for i in range(2500)]
    groups = batch_groups(small, 1 << 20, 1 << 20)
    assert [len(g) for g in groups] == [MAX_BATCH, MAX_BATCH, 2500 - 2 * MAX_BATCH]
    assert [i for g in groups for i in g] == list(range(2500))

    # chunk_bytes of data: 10 + 10 fit in 25, a third does not; a payload
    # over it travels alone, between the others.
    sized = [({"type": "UPDATE", "id": i}, bytes(n)) for i, n in enumerate([10, 10, 10, 30, 5])]
    assert batch_groups(sized, 25, 1 << 20) == [[0, 1], [2], [3], [4]]

    # max_header_bytes: room for three headers, each with up to 9 bytes for
    # its length, and 64 bytes for the rest of the map.
    wide = [({"type": "UPDATE", "id": i, "uuid": "x" * 20}, b"\x01") for i in range(10)]
    limit = 64 + 3 * (len(pack(wide[0][0])) + 9)
    groups = batch_groups(wide, 1 << 20, limit)
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    for g in groups:
        header, data = batch_message([wide[i] for i in g])
        assert len(header) <= limit and len(data) == len(g)


def test_a_batch_splits_back_into_its_updates():
    updates = [
        ({"type": "UPDATE", "uuid": "a", "revision": 2}, pack({"x": 1})),
        ({"type": "UPDATE", "uuid": "b", "revision": 5, "patch": True}, pack([])),
    ]
    header, data = batch_message(updates)
    assert split_batch(unpack(header), data) == updates
    for broken, payload in [
        ({"updates": [updates[0][0]], "lengths": [1, 2]}, b"\x01\x02\x03"),
        ({"updates": [updates[0][0]], "lengths": [2]}, b"\x01\x02\x03"),
        ({"updates": [updates[0][0]], "lengths": [0]}, b""),
        ({"updates": [updates[0][0]], "lengths": [True]}, b"\x01"),
        ({"updates": [{"type": "DATABLOCK"}], "lengths": [1]}, b"\x01"),
        ({"updates": [dict(updates[0][0], transfer=3)], "lengths": [1]}, b"\x01"),
        ({"updates": [], "lengths": []}, b""),
        ({"updates": "no", "lengths": [1]}, b"\x01"),
        ({"updates": [updates[0][0]], "lengths": [1]}, None),
    ]:
        with pytest.raises(ProtocolError):
            split_batch(dict(broken, type="UPDATES"), payload)


def forwarded(uuid: str, revision: int, data: Any, patch: bool = False) -> tuple[dict, bytes]:
    header = {"type": "UPDATE", "uuid": uuid, "type_id": "Object", "revision": revision}
    if patch:
        header["patch"] = True
    return dict(header, sender="other"), pack(data)


def test_an_updates_message_is_its_updates_one_by_one():
    """The same updates, fed as single UPDATEs to one session and as one
    UPDATES to another, give the same events and replica."""
    updates = [
        forwarded("cube", 2, {"room": "a", "x": 1}),
        forwarded("cube", 3, [P.set_op(["x"], 2)], patch=True),
        forwarded("lamp", 1, {"power": 5}),
        forwarded("cube", 4, [P.set_op(["y"], 3)], patch=True),
    ]
    one_by_one, batched = Fed(), Fed()
    try:
        for fed in (one_by_one, batched):
            fed.auth("a")
        for header, data in updates:
            one_by_one.sub(header, data)
        header, data = batch_message(updates)
        batched.sub(unpack(header), data)
        for fed in (one_by_one, batched):
            fed.s._dispatch(None)
        assert batched.events == one_by_one.events
        assert [(type(e), e.uuid, e.patch) for e in batched.events] == [
            (Updated, "cube", None),
            (Updated, "cube", [P.set_op(["x"], 2)]),
            (Updated, "lamp", None),
            (Updated, "cube", [P.set_op(["y"], 3)]),
        ]
        assert batched.s.blocks["cube"].data == {"room": "a", "x": 2, "y": 3}
        assert batched.s.blocks == one_by_one.s.blocks
    finally:
        one_by_one.close()
        batched.close()


def test_a_malformed_updates_message_changes_nothing():
    fed = Fed()
    s = fed.s
    try:
        fed.auth("a")
        good = forwarded("cube", 2, {"room": "a", "x": 1})
        header, data = batch_message([good, forwarded("cube", 3, {"room": "a", "x": 2})])
        h = unpack(header)
        for broken, payload in [
            (dict(h, lengths=h["lengths"][:1]), data),
            (h, data[:-1]),
            (dict(h, updates=[h["updates"][0], {"type": "RIGHT"}]), data),
        ]:
            fed.sub(broken, payload)
        s._dispatch(None)
        assert [type(e) for e in fed.events] == [LocalError] * 3
        assert all(isinstance(e.error, ProtocolError) for e in fed.events)
        assert s.blocks["cube"].data == {"room": "a"} and s.blocks["cube"].revision == 1
        fed.events.clear()
    finally:
        fed.close()


def test_updates_of_a_room_not_answered_yet_wait_for_its_answer():
    fed = Fed()
    s = fed.s
    try:
        fed.auth("a")
        join = s._new_request("join_room", False)
        fed.marker("b")
        header, data = batch_message([forwarded("cube", 2, {"room": "b", "r": 2})])
        fed.sub(unpack(header), data)
        s._dispatch(None)
        assert s.blocks["cube"].data == {"room": "a"}
        fed.answer(join.id, "b", "t2")
        s._dispatch(None)
        assert s.room == "b" and s.blocks["cube"].data == {"room": "b", "r": 2}
    finally:
        fed.close()


def test_push_many_is_all_or_nothing_on_the_replica():
    fed = Fed()
    s = fed.s
    try:
        fed.auth("a")
        cube = s.blocks["cube"]
        before = (cube.data, dict(cube.data), cube.revision, list(cube.deps))
        with pytest.raises(PatchFailed):
            s.push_many(
                [
                    PatchUpdate("cube", [P.set_op(["x"], 1)]),
                    FullUpdate("new", {"n": 1}, type_id="Object"),
                    FullUpdate("cube", {"replaced": True}, deps=["new"]),
                    PatchUpdate("cube", [P.set_op(["y"], 2)]),
                    PatchUpdate("cube", [P.remove_op(["nope"])]),
                ]
            )
        assert s.blocks["cube"] is cube and "new" not in s.blocks
        assert (cube.data, cube.revision, cube.deps) == before[1:]
        assert cube.data is before[0]
        assert s.pending_pushes() == []
        # A payload that cannot be encoded, after a patch of the replica.
        with pytest.raises(TypeError):
            s.push_many([PatchUpdate("cube", [P.set_op(["x"], 1)]), FullUpdate("z", {1, 2})])
        assert (cube.data, cube.revision) == before[1:3]
        with pytest.raises(TypeError):
            s.push_many([("cube", {"x": 1})])  # type: ignore[list-item]
        # Updates that cannot be sent (here: no sockets) are not kept either.
        with pytest.raises(NotAuthenticated):
            s.push_many([PatchUpdate("cube", [P.set_op(["x"], 1)]), FullUpdate("z", 1)])
        assert (cube.data, cube.revision) == before[1:3] and s.pending_pushes() == []
    finally:
        fed.close()
