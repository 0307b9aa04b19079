"""Batches of datablocks in the snapshot (protocol section 16): a client
that asks for them in SNAPSHOT reads DATABLOCKS, several datablocks of the
stream in one message, as the same datablocks one by one, and counts each
DATABLOCKS once, with all its bytes, when it acknowledges the window.

The server tests run a server with a small ``chunk_bytes`` and a small byte
window, so that a scene of a few hundred datablocks travels as many
DATABLOCKS, a datablock alone and a chunked one, and so that the bytes
decide when to acknowledge. They watch the raw traffic by wrapping a
session's frame handler (what it reads) and its immediate sends (the
acknowledgements); a client written with pyzmq alone checks the stream as
the server sends it."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import ServerProcess, T, record
from test_rooms import Fed

from replication_client import (
    COMMON,
    Datablock,
    FullUpdate,
    LocalError,
    PatchUpdate,
    ProtocolError,
    ServerError,
    Session,
    SnapshotDone,
    SnapshotProgress,
    Updated,
    pack,
    unpack,
)
from replication_client import patch as P
from replication_client.protocol import (
    MAX_BATCH,
    Channel,
    batch_message,
    new_identity,
    split_batch,
)

CHUNK_BYTES = 4096
WINDOW_BYTES = 2 * CHUNK_BYTES
"""The server's limits in these tests: a DATABLOCKS holds at most
CHUNK_BYTES of data, and the client acknowledges every WINDOW_BYTES / 2."""
LONE = "x" * (CHUNK_BYTES - 96)
"""Data that shares no DATABLOCKS: every other datablock of the scene packs
to more than the 93 bytes left beside it."""
BIG = bytes(range(256)) * 40
"""More than CHUNK_BYTES: a DATABLOCK header and its CHUNKs."""


# ---------------------------------------------------------------- helpers


@pytest.fixture
def small_server(start_server: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    config = tmp_path / "limits.toml"
    config.write_text(
        f"[limits]\nchunk_bytes = {CHUNK_BYTES}\nsnapshot_window_bytes = {WINDOW_BYTES}\n"
    )
    return start_server("--config", str(config))


def scene() -> list[Datablock]:
    """A few hundred small datablocks of varied sizes, types, owners and
    dependencies (uploaded dependents first, so the stream reorders them),
    one datablock nearly as large as CHUNK_BYTES and one larger."""
    blocks = [
        Datablock(
            f"obj{i}",
            "Object",
            {
                "name": f"Object {i} ✓",
                "location": [float(i), -1.5, i / 3],
                "blob": bytes(range(i % 9 * 25)),
                "pad": "." * 80,
            },
            owner=COMMON if i % 3 else None,  # None: the uploader's
            deps=[f"mesh{i % 70}", f"mat{i % 25}"],
        )
        for i in range(200)
    ]
    blocks.append(Datablock("lone", "Text", LONE, owner=COMMON))
    blocks += [
        Datablock(
            f"mesh{i}",
            "Mesh",
            {"vertices": [[float(v), 0.0, 1.0] for v in range(i % 12)], "pad": "-" * 100},
            owner=COMMON,
            deps=[f"mat{i % 25}", "img"] if i % 10 == 0 else [f"mat{i % 25}"],
        )
        for i in range(70)
    ]
    blocks.append(Datablock("img", "Image", BIG, owner=COMMON))
    blocks += [
        Datablock(f"mat{i}", "Material", {"name": f"Mat {i}", "pad": "+" * (100 + i)})
        for i in range(25)
    ]
    return blocks


def hosted(connect, port: int) -> Session:
    """The host has uploaded the scene, then changed some of it, so that
    revisions, owners and data are not all as uploaded."""
    host = connect("host", admin=True, port=port)
    assert host.auth.chunk_bytes == CHUNK_BYTES
    assert host.upload(scene(), timeout=T) == len(scene())
    edits: list[FullUpdate | PatchUpdate] = [
        PatchUpdate(f"obj{i}", [P.set_op(["location", 1], 2.5)]) for i in range(0, 200, 7)
    ]
    edits += [FullUpdate(f"mat{i}", {"name": f"Mat {i} v2", "pad": "*" * 120}) for i in (3, 4)]
    edits.append(PatchUpdate("obj14", [P.set_op(["name"], "Twice")]))
    host.push_many_confirmed(edits, timeout=T)
    host.change_owner(["obj1", "mesh5"], "host", timeout=T)
    return host


def described(block: Datablock) -> tuple[Any, ...]:
    """What a datablock is: uuid, type, owner, dependencies, revision, data."""
    return (block.uuid, block.type_id, block.owner, list(block.deps), block.revision, block.data)


def downloaded(session: Session) -> list[tuple[Any, ...]]:
    """Every datablock the snapshot hands to ``session`` from now on, in
    order, as it is when handed out."""
    seen: list[tuple[Any, ...]] = []

    def stored(event: Updated) -> None:
        if event.source == "snapshot":
            seen.append(described(event.block))

    session.on(Updated, stored)
    return seen


def read_frames(session: Session) -> list[tuple[dict[str, Any], int]]:
    """(header, header frame plus data frame in bytes) of every subscriber
    message ``session`` reads from now on, as it came off the wire."""
    seen: list[tuple[dict[str, Any], int]] = []
    on_wire = session._on_wire

    def spy(channel: Channel, frames: list[bytes]) -> None:
        if channel is Channel.SUBSCRIBER and frames:
            seen.append((unpack(frames[0]), sum(len(f) for f in frames)))
        on_wire(channel, frames)

    session._on_wire = spy  # type: ignore[method-assign]
    return seen


def sent_acks(session: Session) -> list[int]:
    """The ``received`` of every SNAPSHOT_ACK ``session`` sends from now on."""
    acks: list[int] = []
    send_now = session._send_now

    def spy(channel: Channel, header: dict[str, Any]) -> None:
        if header["type"] == "SNAPSHOT_ACK":
            acks.append(header["received"])
        send_now(channel, header)

    session._send_now = spy  # type: ignore[method-assign]
    return acks


def sent_snapshots(session: Session) -> list[dict[str, Any]]:
    """Every SNAPSHOT ``session`` sends from now on."""
    seen: list[dict[str, Any]] = []
    send = session._send

    def spy(channel: Channel, msgs: list[list[bytes]]) -> None:
        if channel is Channel.SUBSCRIBER:
            seen.extend(h for h in (unpack(m[0]) for m in msgs) if h["type"] == "SNAPSHOT")
        send(channel, msgs)

    session._send = spy  # type: ignore[method-assign]
    return seen


def stream_of(frames: list[tuple[dict[str, Any], int]]) -> list[tuple[dict[str, Any], int]]:
    """The snapshot stream among subscriber messages: BEGIN to END."""
    kinds = [(h["type"], h.get("step")) for h, _ in frames]
    start, end = kinds.index(("SNAPSHOT", "BEGIN")), kinds.index(("SNAPSHOT", "END"))
    return frames[start : end + 1]


def expected_acks(stream: list[tuple[dict[str, Any], int]]) -> list[int]:
    """The acknowledgements section 3 asks for, each message of the stream
    counted once with its bytes: whenever what arrived since the last one
    reaches half the window, in messages or in bytes; none for END."""
    begin = stream[0][0]
    window, window_bytes = begin["window"], begin["window_bytes"]
    acks: list[int] = []
    acked = acked_bytes = total = 0
    for received, (_, size) in enumerate(stream[:-1], start=1):
        total += size
        if (received - acked) * 2 >= window or (total - acked_bytes) * 2 >= window_bytes:
            acks.append(received)
            acked, acked_bytes = received, total
    return acks


def carried(stream: list[tuple[dict[str, Any], int]]) -> list[str]:
    """The uuids the stream's DATABLOCK and DATABLOCKS messages carry, in order."""
    uuids: list[str] = []
    for h, _ in stream:
        if h["type"] == "DATABLOCK":
            uuids.append(h["uuid"])
        elif h["type"] == "DATABLOCKS":
            uuids += [d["uuid"] for d in h["datablocks"]]
    return uuids


def catalogue(stream: list[tuple[dict[str, Any], int]]) -> list[str]:
    """The uuids the stream's CATALOGUE pages list, in order."""
    return [e["uuid"] for h, _ in stream if h.get("step") == "CATALOGUE" for e in h["entries"]]


def kinds(stream: list[tuple[dict[str, Any], int]]) -> list[str]:
    return [h["type"] for h, _ in stream]


class Raw:
    """A client written with pyzmq alone, as in protocol section 13: three
    DEALER sockets with one identity; it answers PINGs while it reads."""

    def __init__(self, port: int, user: str) -> None:
        self.ctx = zmq.Context()
        identity = new_identity()
        self.sockets: dict[Channel, zmq.Socket] = {}
        self.poller = zmq.Poller()
        for channel in (Channel.COMMANDS, Channel.SUBSCRIBER, Channel.HEARTBEAT):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.ROUTING_ID, identity)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{port + channel}")
            self.sockets[channel] = sock
            self.poller.register(sock, zmq.POLLIN)
        self.pending: deque[tuple[Channel, list[bytes]]] = deque()
        # Channels whose new connection the server asked to prove (RESUME)
        # before the AUTH reply gave the token.
        self.auth: dict[str, Any] | None = None
        self.resume_due: list[Channel] = []
        self.send(
            Channel.COMMANDS,
            {"type": "AUTH", "id": 1, "user": user, "role": "CLIENT", "protocol_version": 2},
        )
        reply = self.next(lambda channel, h: h["type"] == "AUTH")[1]
        assert reply["status"] == "RUNNING", reply
        self.auth = reply
        for channel in self.resume_due:
            self.resume(channel)

    def resume(self, channel: Channel) -> None:
        if self.auth is None:
            self.resume_due.append(channel)
        else:
            self.send(channel, {"type": "RESUME", "token": self.auth["token"]})

    def send(self, channel: Channel, header: dict[str, Any]) -> None:
        self.sockets[channel].send(pack(header))

    def recv(self, timeout: float = T) -> tuple[Channel, list[bytes]]:
        """The next message on the commands or the subscriber channel."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"nothing from the server within {timeout} s")
            for sock, _ in self.poller.poll(remaining * 1000):
                channel = next(c for c, s in self.sockets.items() if s is sock)
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    header = unpack(frames[0])
                    if header.get("type") == "RESUME":
                        self.resume(channel)
                    elif channel is Channel.HEARTBEAT:
                        if header.get("type") == "PING":
                            self.send(channel, {"type": "PONG", "seq": header["seq"]})
                    else:
                        self.pending.append((channel, frames))
        return self.pending.popleft()

    def next(
        self, match: Callable[[Channel, dict[str, Any]], bool]
    ) -> tuple[Channel, dict[str, Any], list[bytes]]:
        """The next message that matches; the others before it must be
        CLIENTS_STATE (presence, sent to everyone at any time)."""
        while True:
            channel, frames = self.recv()
            header = unpack(frames[0])
            if match(channel, header):
                return channel, header, frames
            assert header["type"] == "CLIENTS_STATE", header

    def error(self) -> dict[str, Any]:
        return self.next(lambda channel, h: h["type"] == "ERROR")[1]

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def raw_download(raw: Raw, **options: Any) -> tuple[list[tuple[dict[str, Any], int]], list]:
    """Sends SNAPSHOT with ``options`` and reads the stream up to END,
    acknowledging as section 3 asks (a DATABLOCKS counts once, with all its
    bytes). Checks each DATABLOCKS against section 16. Returns the stream
    (header, bytes) and the datablocks as (header, data) in stream order."""
    raw.send(Channel.SUBSCRIBER, {"type": "SNAPSHOT", **options})
    stream: list[tuple[dict[str, Any], int]] = []
    blocks: list[tuple[dict[str, Any], bytes]] = []
    partial: dict[int, tuple[dict[str, Any], bytearray]] = {}
    acked = acked_bytes = total = 0
    while True:
        channel, frames = raw.recv()
        header = unpack(frames[0])
        assert header["type"] != "ERROR", header
        if channel is Channel.COMMANDS:
            assert header["type"] == "CLIENTS_STATE", header
            continue
        data = frames[1] if len(frames) > 1 else None
        size = sum(len(f) for f in frames)
        stream.append((header, size))
        total += size
        kind, step = header["type"], header.get("step")
        if kind == "SNAPSHOT" and step == "END":
            break
        window, window_bytes = stream[0][0]["window"], stream[0][0]["window_bytes"]
        if (len(stream) - acked) * 2 >= window or (total - acked_bytes) * 2 >= window_bytes:
            raw.send(Channel.SUBSCRIBER, {"type": "SNAPSHOT_ACK", "received": len(stream)})
            acked, acked_bytes = len(stream), total
        if kind == "DATABLOCKS":
            items, lengths = header["datablocks"], header["lengths"]
            assert len(frames) == 2 and set(header) == {"type", "datablocks", "lengths"}
            assert 1 <= len(items) <= MAX_BATCH and len(lengths) == len(items)
            assert sum(lengths) == len(data) <= CHUNK_BYTES
            assert len(frames[0]) <= raw.auth["max_header_bytes"]
            for item in items:
                assert item["type"] == "DATABLOCK"
                assert not {"id", "transfer", "chunks", "size"} & set(item), item
            offset = 0
            for item, length in zip(items, lengths, strict=True):
                blocks.append((item, data[offset : offset + length]))
                offset += length
        elif kind == "DATABLOCK" and "transfer" in header:
            assert data is None
            partial[header["transfer"]] = (header, bytearray())
        elif kind == "DATABLOCK":
            blocks.append((header, data))
        elif kind == "CHUNK":
            announced, buf = partial[header["transfer"]]
            buf += data
            if len(buf) == announced["size"]:
                del partial[header["transfer"]]
                blocks.append((announced, bytes(buf)))
        else:
            assert kind == "SNAPSHOT" and step in ("BEGIN", "CATALOGUE"), header
    assert not partial
    return stream, blocks


# ---------------------------------------------------------------- server


def test_batched_and_plain_downloads_hand_out_the_same_datablocks(small_server, connect):
    host = hosted(connect, small_server.port)
    want = [described(b) for b in host.blocks.values()]
    results = {}
    for batches in (True, False):
        s = connect(f"batches-{batches}", port=small_server.port, batches=batches)
        frames, acks, snapshots = read_frames(s), sent_acks(s), sent_snapshots(s)
        seen, events = downloaded(s), record(s)
        s.download(timeout=T)
        assert s.synced
        stream = stream_of(frames)
        results[batches] = (stream, seen)

        assert snapshots == [
            {"type": "SNAPSHOT", "batches": True} if batches else {"type": "SNAPSHOT"}
        ]
        begin = stream[0][0]
        assert begin.get("batches") is (True if batches else None)
        assert begin["window_bytes"] == WINDOW_BYTES and begin["datablocks"] == len(want)
        # Each datablock once, in catalogue order, whatever message carried it.
        assert carried(stream) == catalogue(stream) == [d[0] for d in seen]
        assert sorted(seen) == sorted(want)
        assert {uuid: described(b) for uuid, b in s.blocks.items()} == {d[0]: d for d in want}
        progress = [(e.done, e.total) for e in events if isinstance(e, SnapshotProgress)]
        assert progress == [(n, len(want)) for n in range(len(want) + 1)]
        assert [e.datablocks for e in events if isinstance(e, SnapshotDone)] == [len(want)]
        assert not any(isinstance(e, (ServerError, LocalError)) for e in events)
        # Acknowledged as the bytes require, a DATABLOCKS counting once.
        assert acks == expected_acks(stream) and len(acks) > 10

    (batched, batched_seen), (plain, plain_seen) = results[True], results[False]
    assert batched_seen == plain_seen  # the same datablocks, in the same order
    assert "DATABLOCKS" not in kinds(plain)
    assert kinds(plain).count("DATABLOCK") == len(want)
    assert kinds(batched).count("DATABLOCKS") > 10 and kinds(batched).count("CHUNK") == 3
    assert len(batched) < len(plain) // 4
    # The large image is still chunked, and a datablock may travel alone.
    singles = {h["uuid"]: h for h, _ in batched if h["type"] == "DATABLOCK"}
    assert singles["img"]["size"] == len(pack(BIG)) and "transfer" not in singles["lone"]


def test_a_window_of_two_counts_a_datablocks_once(small_server, connect):
    hosted(connect, small_server.port)
    plain = connect("plain", port=small_server.port, batches=False)
    plain.download(timeout=T)

    s = connect("narrow", port=small_server.port)
    frames, acks, seen, events = read_frames(s), sent_acks(s), downloaded(s), record(s)
    s.subscribe(window=2)
    s.download(timeout=T)
    stream = stream_of(frames)
    assert stream[0][0]["window"] == 2 and stream[0][0]["batches"] is True
    assert kinds(stream).count("DATABLOCKS") > 10
    # With a window of 2, every message but END is acknowledged on its own.
    assert acks == list(range(1, len(stream)))
    assert not any(isinstance(e, (ServerError, LocalError)) for e in events)
    assert [d[0] for d in seen] == list(plain.blocks)
    assert s.blocks == plain.blocks


def test_a_raw_client_reads_datablocks_in_the_stream(small_server, connect):
    hosted(connect, small_server.port)
    plain = connect("plain", port=small_server.port, batches=False)
    plain.download(timeout=T)
    raw = Raw(small_server.port, "raw")
    try:
        stream, blocks = raw_download(raw, batches=True, window=2)
        begin = stream[0][0]
        assert begin["batches"] is True and begin["window"] == 2
        assert kinds(stream).count("DATABLOCKS") > 10 and kinds(stream).count("CHUNK") == 3
        assert begin["bytes"] == sum(len(data) for _, data in blocks)
        assert [h["uuid"] for h, _ in blocks] == catalogue(stream) == list(plain.blocks)
        for h, data in blocks:
            got = Datablock(
                h["uuid"], h["type_id"], unpack(data), h["owner"], h["deps"], h["revision"]
            )
            assert got == plain.blocks[h["uuid"]]

        # The server counted the stream as this client did: acknowledging
        # all of it is accepted, one more is not. The FETCH sent after them
        # is refused too, so no other refusal can still be on its way.
        raw.send(Channel.SUBSCRIBER, {"type": "SNAPSHOT_ACK", "received": len(stream)})
        raw.send(Channel.SUBSCRIBER, {"type": "SNAPSHOT_ACK", "received": len(stream) + 1})
        raw.send(Channel.SUBSCRIBER, {"type": "FETCH", "id": 7, "uuid": "nothing"})
        over = raw.error()
        assert (over["code"], over["refers_to"]["type"]) == ("invalid_message", "SNAPSHOT_ACK")
        fetch = raw.error()
        assert (fetch["code"], fetch["refers_to"]) == (
            "unknown_datablock",
            {"type": "FETCH", "id": 7, "uuid": "nothing"},
        )
    finally:
        raw.close()

    # Without batches: single DATABLOCKs only, and BEGIN does not mention them.
    raw = Raw(small_server.port, "raw-plain")
    try:
        stream, blocks = raw_download(raw, batches=False)
        assert "batches" not in stream[0][0] and "DATABLOCKS" not in kinds(stream)
        assert [h["uuid"] for h, _ in blocks] == list(plain.blocks)
    finally:
        raw.close()


def test_snapshot_batches_must_be_a_boolean(server, connect):
    host = connect("host", admin=True)
    host.upload([Datablock("a", "Text", "one"), Datablock("b", "Text", "two")], timeout=T)
    raw = Raw(server.port, "raw")
    try:
        for wrong in (1, "true", None):
            raw.send(Channel.SUBSCRIBER, {"type": "SNAPSHOT", "batches": wrong})
            error = raw.error()
            # Like any key of the wrong type, refused before the message is
            # read as a SNAPSHOT: refers_to may be empty.
            assert error["code"] == "invalid_message", error
            assert error["refers_to"] in ({}, {"type": "SNAPSHOT"}), error
        # The refused SNAPSHOTs changed nothing: the first valid one is served.
        stream, blocks = raw_download(raw, batches=True)
        assert stream[0][0]["batches"] is True
        assert [(h["uuid"], unpack(data)) for h, data in blocks] == [("a", "one"), ("b", "two")]
    finally:
        raw.close()


# ---------------------------------------------------------------- no server


def block(uuid: str, revision: int, data: Any, **extra: Any) -> tuple[dict[str, Any], bytes]:
    """A snapshot DATABLOCK (header, data)."""
    header = {
        "type": "DATABLOCK",
        "uuid": uuid,
        "type_id": "Object",
        "owner": COMMON,
        "deps": [],
        "revision": revision,
        **extra,
    }
    return header, pack(data)


def test_a_datablocks_message_splits_back_into_its_datablocks():
    blocks = [block("a", 1, {"x": 1}), block("b", 4, [1, 2, 3], deps=["a"]), block("c", 2, "é")]
    header, data = batch_message(blocks, "DATABLOCKS")
    h = unpack(header)
    assert set(h) == {"type", "datablocks", "lengths"} and h["type"] == "DATABLOCKS"
    assert split_batch(h, data) == blocks
    one = {"type": "DATABLOCKS", "datablocks": h["datablocks"][:1], "lengths": h["lengths"][:1]}
    assert split_batch(one, blocks[0][1]) == blocks[:1]

    first, payload = blocks[0]
    n = len(payload)
    untyped = {k: v for k, v in first.items() if k != "type"}
    for broken, frame in [
        # counts that differ, lengths that do not add up to the data frame
        ({"datablocks": [first], "lengths": [n, 1]}, payload + b"\x01"),
        ({"datablocks": [first, first], "lengths": [n]}, payload),
        ({"datablocks": [first], "lengths": [n]}, payload + b"\x01"),
        ({"datablocks": [first], "lengths": [n + 1]}, payload),
        # lengths that are not sizes of data (data is never empty)
        ({"datablocks": [first], "lengths": [0]}, b""),
        ({"datablocks": [first], "lengths": [-1]}, b""),
        ({"datablocks": [first], "lengths": [True]}, b"\x01"),
        ({"datablocks": [first], "lengths": [1.0]}, b"\x01"),
        # an element that is not a DATABLOCK header
        ({"datablocks": [dict(first, type="UPDATE")], "lengths": [n]}, payload),
        ({"datablocks": [untyped], "lengths": [n]}, payload),
        ({"datablocks": ["a"], "lengths": [n]}, payload),
        # an element with an id (as a FETCH answer has) or chunk keys
        ({"datablocks": [dict(first, id=3)], "lengths": [n]}, payload),
        ({"datablocks": [dict(first, transfer=3)], "lengths": [n]}, payload),
        ({"datablocks": [dict(first, chunks=1)], "lengths": [n]}, payload),
        ({"datablocks": [dict(first, size=n)], "lengths": [n]}, payload),
        # nothing in it, not lists, the key of another batch, no data frame
        ({"datablocks": [], "lengths": []}, b""),
        ({"datablocks": first, "lengths": [n]}, payload),
        ({"datablocks": [first], "lengths": n}, payload),
        ({"datablocks": [first]}, payload),
        ({"updates": [first], "lengths": [n]}, payload),
        ({"datablocks": [first], "lengths": [n]}, None),
    ]:
        with pytest.raises(ProtocolError):
            split_batch(dict(broken, type="DATABLOCKS"), frame)
    # A DATABLOCK header is no update either.
    with pytest.raises(ProtocolError):
        split_batch({"type": "UPDATES", "updates": [first], "lengths": [n]}, payload)


def begin(window: int, window_bytes: int, total: int) -> dict[str, Any]:
    """A stream's BEGIN."""
    return {
        "type": "SNAPSHOT",
        "step": "BEGIN",
        "datablocks": total,
        "window": window,
        "window_bytes": window_bytes,
    }


def feed_stream(
    fed: Fed, messages: list[list[Any]], window: int, window_bytes: int, total: int = 0
) -> list[int]:
    """Feeds a session a snapshot stream of ``total`` datablocks: BEGIN,
    ``messages`` (their frames, the header as a map) and END. Returns the
    SNAPSHOT_ACKs it sent."""
    acks: list[int] = []
    fed.s._send_now = lambda channel, h: acks.append(h["received"])  # type: ignore[method-assign]
    fed.sub(begin(window, window_bytes, total))
    for header, *data in messages:
        fed.sub(header, *data)
    fed.sub({"type": "SNAPSHOT", "step": "END", "datablocks": total})
    fed.s._dispatch(None)
    return acks


def datablocks(items: list[tuple[dict[str, Any], bytes]]) -> list[Any]:
    """A DATABLOCKS as ``feed_stream`` takes it."""
    header, data = batch_message(items, "DATABLOCKS")
    return [unpack(header), data]


def test_a_datablocks_message_is_its_datablocks_one_by_one():
    """The same stream, fed as single DATABLOCKs to one session and partly
    as DATABLOCKS to another, gives the same events and replica; each
    DATABLOCKS counts once for the window."""
    blocks = [
        block("mat", 3, {"name": "Red"}),
        block("mesh", 1, {"v": [[0.0, 1.0, 2.0]]}, deps=["mat"], owner="bob"),
        block("obj", 2, {"name": "Cube"}, deps=["mesh", "mat"]),
        block("img", 1, b"\x00" * 50),
        block("txt", 5, "alone"),
    ]
    img, img_data = blocks[3]
    one_by_one, batched = Fed(), Fed()
    try:
        singles = [list(b) for b in blocks]
        # BEGIN and each DATABLOCK acknowledged on its own; END never.
        assert feed_stream(one_by_one, singles, 2, 1 << 30, 5) == [1, 2, 3, 4, 5, 6]
        mixed = [
            datablocks(blocks[:3]),
            [dict(img, transfer=9, chunks=1, size=len(img_data))],
            [{"type": "CHUNK", "transfer": 9, "index": 0}, img_data],
            datablocks(blocks[4:]),
        ]
        # BEGIN, the DATABLOCKS of 3, the chunked header, its CHUNK and the
        # DATABLOCKS of 1: five messages.
        assert feed_stream(batched, mixed, 2, 1 << 30, 5) == [1, 2, 3, 4, 5]
        assert batched.events == one_by_one.events
        updated = [e for e in batched.events if isinstance(e, Updated)]
        assert [(e.uuid, e.source) for e in updated] == [(h["uuid"], "snapshot") for h, _ in blocks]
        progress = [(e.done, e.total) for e in batched.events if isinstance(e, SnapshotProgress)]
        assert progress == [(n, 5) for n in range(6)]
        assert batched.s.blocks == one_by_one.s.blocks
        assert batched.s.blocks["mesh"] == Datablock(
            "mesh", "Object", {"v": [[0.0, 1.0, 2.0]]}, "bob", ["mat"], 1
        )
        assert batched.s.synced
    finally:
        one_by_one.close()
        batched.close()


def test_a_datablocks_message_counts_all_its_bytes_once():
    """A byte window: the acknowledgement comes right after the DATABLOCKS
    when its header and data frames, with BEGIN, reach half the window."""
    blocks = [block(f"b{i}", 1, "x" * 100) for i in range(6)]
    batch = datablocks(blocks[:4])
    messages = [batch, list(blocks[4]), list(blocks[5])]
    # BEGIN's size does not change with window_bytes from 256 to 65535.
    upto = len(pack(begin(1000, 1000, 6))) + len(pack(batch[0])) + len(batch[1])
    assert 256 <= 2 * upto and 2 * upto + 2 <= 65535
    for window_bytes, acks in ((2 * upto, [2]), (2 * upto + 2, [3])):
        fed = Fed()
        try:
            assert feed_stream(fed, messages, 1000, window_bytes, 6) == acks
            assert list(fed.s.blocks) == [f"b{i}" for i in range(6)]
        finally:
            fed.close()


def test_a_malformed_datablocks_message_delivers_nothing_of_it():
    fed = Fed()
    s = fed.s
    try:
        blocks = [block("a", 1, {"x": 1}), block("b", 1, {"x": 2})]
        h, data = datablocks(blocks)
        first, second = h["datablocks"]
        broken = [
            [dict(h, lengths=h["lengths"][:1]), data],
            [h, data[:-1]],
            [dict(h, datablocks=[first, {"type": "UPDATE"}]), data],
            [dict(h, datablocks=[first, dict(second, id=4)]), data],
            [dict(h, datablocks=[dict(first, transfer=4), second]), data],
        ]
        acks = feed_stream(fed, broken, 2, 1 << 30)
        assert [type(e) for e in fed.events] == [
            SnapshotProgress,
            *[LocalError] * len(broken),
            SnapshotDone,
        ]
        assert all(isinstance(e.error, ProtocolError) for e in fed.events[1:-1])
        assert s.blocks == {}
        # Each one still counted once, as it came.
        assert acks == [1, 2, 3, 4, 5, 6]
        fed.events.clear()
    finally:
        fed.close()
