"""Rooms: independent sessions on one server. Joining a room at AUTH,
creating one, switching with JOIN_ROOM, LEAVE_ROOM, keep_open, room
passwords and the listing in SERVER_INFO; and the old room's traffic never
reaching the replica after a switch."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import T, record

from replication_client import (
    COMMON,
    DEFAULT_ROOM,
    AuthenticationError,
    Datablock,
    LocalError,
    OwnerChanged,
    Reply,
    RequestFailed,
    RequestRefused,
    RoomChanged,
    RoomInfo,
    RoomJoined,
    RoomLeft,
    ServerError,
    Session,
    Updated,
    pack,
)
from replication_client import patch as P
from replication_client.inbox import Push
from replication_client.protocol import Channel


def scene_of(room: str) -> list[Datablock]:
    """A scene whose datablocks say which room they belong to. Every room
    has a "cube": the same uuid in every room, as scenes made from one file
    would have."""
    return [
        Datablock("cube", "Object", {"room": room, "x": 0}, owner=COMMON),
        Datablock(f"{room}-mat", "Material", {"room": room}, owner=COMMON),
    ]


def host_room(connect, room: str, blocks=None, **options) -> Session:
    """An admin who creates ``room`` at AUTH and uploads its scene."""
    host = connect(f"host-{room}", admin=True, room=room, **options)
    assert (host.room, host.created, host.room_admin) == (room, True, True)
    assert (host.auth.status, host.auth.state, host.auth.room) == ("LOBBY", "WAITING", room)
    host.upload(scene_of(room) if blocks is None else blocks, timeout=T)
    return host


def room_data(session: Session) -> dict[str, object]:
    return {uuid: block.data for uuid, block in session.blocks.items()}


def wait_rooms(session: Session, condition: Callable[[dict[str, RoomInfo]], bool]) -> None:
    """Asks for the listing until ``condition(rooms by name)`` holds."""
    deadline = time.monotonic() + T
    while not condition({r.name: r for r in session.list_rooms(timeout=T)}):
        assert time.monotonic() < deadline, "the room listing never got there"


def refused(call: Callable[[], object]) -> RequestRefused:
    with pytest.raises(RequestRefused) as err:
        call()
    return err.value


def test_two_rooms_never_see_each_others_updates(connect):
    host_a = host_room(connect, "a")
    host_b = host_room(connect, "b")
    # The same user name in both rooms: names are per room.
    ann_a = connect("ann", room="a")
    ann_b = connect("ann", room="b")
    for ann, room in ((ann_a, "a"), (ann_b, "b")):
        assert (ann.room, ann.created, ann.room_admin) == (room, False, False)
        assert ann.auth.status == "RUNNING"
        ann.download(timeout=T)
        assert room_data(ann) == {b.uuid: b.data for b in scene_of(room)}
    events_a, events_b = record(ann_a), record(ann_b)

    # Both rooms edit their own "cube" at the same time.
    for i in range(1, 21):
        host_a.push_patch("cube", [P.set_op(["x"], i)])
        host_b.push_patch("cube", [P.set_op(["x"], -i)])
    host_a.wait_applied(timeout=T)
    host_b.wait_applied(timeout=T)
    # Both rooms' edits are applied, so anything of one room forwarded to the
    # other would reach its viewer before that room's marker (the subscriber
    # channel is ordered).
    host_a.push_confirmed("a-last", {"room": "a"}, type_id="Object", owner=COMMON, timeout=T)
    host_b.push_confirmed("b-last", {"room": "b"}, type_id="Object", owner=COMMON, timeout=T)
    ann_a.wait_until(lambda: "a-last" in ann_a.blocks, T)
    ann_b.wait_until(lambda: "b-last" in ann_b.blocks, T)

    assert ann_a.blocks["cube"].data == {"room": "a", "x": 20}
    assert ann_b.blocks["cube"].data == {"room": "b", "x": -20}
    assert ann_a.blocks["cube"].revision == ann_b.blocks["cube"].revision == 21
    assert set(ann_a.blocks) == {"cube", "a-mat", "a-last"}
    assert set(ann_b.blocks) == {"cube", "b-mat", "b-last"}
    for events, room in ((events_a, "a"), (events_b, "b")):
        updates = [e for e in events if isinstance(e, Updated)]
        assert len(updates) == 21
        assert all(e.block.data["room"] == room and e.sender == f"host-{room}" for e in updates)

    # Presence lists the room's own users only.
    ann_a.wait_until(lambda: {u.name for u in ann_a.users} == {"ann", "host-a"}, T)
    ann_b.wait_until(lambda: {u.name for u in ann_b.users} == {"ann", "host-b"}, T)

    # Owners, deletes and kicks stay inside a room.
    assert host_a.lock(["cube"])["owner"] == "host-a"
    assert host_b.lock(["cube"])["owner"] == "host-b"
    assert refused(lambda: host_b.delete("a-mat")).code == "unknown_datablock"
    assert refused(lambda: host_b.kick("host-a")).code == "unknown_user"
    ann_b.wait_until(lambda: ann_b.blocks["cube"].owner == "host-b", T)


def test_the_rooms_are_listed(connect):
    probe = connect("probe", auth=False)  # SERVER_INFO needs no AUTH
    assert probe.list_rooms(timeout=T) == [RoomInfo(DEFAULT_ROOM, 0, False, "WAITING", 0, 0, True)]
    host_room(connect, "alpha")
    secret = connect("keeper", admin=True, room="secret", room_password="pw")
    assert secret.created and secret.auth.created

    rooms = probe.list_rooms(timeout=T)
    assert [r.name for r in rooms] == ["default", "alpha", "secret"], "the default room first"
    default, alpha, hidden = rooms
    assert default.keep_open and not default.private and default.users_online == 0
    assert (alpha.users_online, alpha.state, alpha.datablocks, alpha.private) == (
        1,
        "ACTIVE",
        2,
        False,
    )
    assert alpha.bytes > 0 and not alpha.keep_open
    assert (hidden.users_online, hidden.state, hidden.private) == (1, "WAITING", True)

    # The top-level fields still describe the default room.
    info = probe.server_info(timeout=T)
    assert (info["state"], info["users_online"], info["datablocks"]) == ("WAITING", 0, 0)
    assert info["open_rooms"] is False
    assert [r["name"] for r in info["rooms"]] == ["default", "alpha", "secret"]

    events = record(probe)
    rid = probe.list_rooms_nowait()
    reply = probe.wait_for(lambda e: isinstance(e, Reply) and e.request_id == rid, T)
    assert reply.kind == "rooms" and reply.result == rooms
    assert not any(isinstance(e, RequestFailed) for e in events)


def test_only_admins_create_rooms_unless_rooms_are_open(start_server, connect):
    closed = start_server()
    with pytest.raises(AuthenticationError) as err:
        connect("u", room="mine", port=closed.port)
    assert err.value.code == "unknown_room" and "only admins" in err.value.reason
    user = connect("u", port=closed.port)
    error = refused(lambda: user.join_room("mine", timeout=T))
    assert error.code == "unknown_room" and error.refers_to["type"] == "JOIN_ROOM"
    assert user.room == DEFAULT_ROOM
    assert [r.name for r in user.list_rooms(timeout=T)] == ["default"]
    # An admin may. A creation refused (here for the metadata) leaves no
    # room behind and the admin where it was.
    boss = connect("boss", admin=True, port=closed.port)
    huge = {"blob": "x" * (70 << 10)}
    assert refused(lambda: boss.join_room("boss-room", metadata=huge, timeout=T)).code == (
        "limit_exceeded"
    )
    assert boss.room == DEFAULT_ROOM
    assert [r.name for r in boss.list_rooms(timeout=T)] == ["default"]
    assert boss.join_room("boss-room", timeout=T) == RoomJoined(
        "boss-room", "LOBBY", "WAITING", True, True
    )

    opened = start_server("--open-rooms")
    creator = connect("u", room="mine", port=opened.port)
    assert creator.server_info(timeout=T)["open_rooms"] is True
    # The creator is the room's admin: it uploads the scene.
    assert (creator.room, creator.created, creator.room_admin) == ("mine", True, True)
    assert creator.auth.status == "LOBBY"
    creator.upload(scene_of("mine"), timeout=T)
    other = connect("v", room="mine", port=opened.port)
    assert other.auth.status == "RUNNING" and not other.created and not other.room_admin
    assert refused(lambda: other.set_keep_open(True, timeout=T)).code == "not_admin"
    assert creator.set_keep_open(True, timeout=T)["keep_open"] is True
    # Anyone creates rooms with join_room too.
    assert other.join_room("theirs", timeout=T) == RoomJoined(
        "theirs", "LOBBY", "WAITING", True, True
    )
    assert other.room_admin


def test_join_room_switches_to_another_rooms_scene(connect):
    host_a = host_room(connect, "a")
    host_b = host_room(connect, "b")
    traveller = connect("t", room="a")
    traveller.download(timeout=T)
    host_events = record(host_a)
    traveller.lock(["cube"])

    # Refused switches leave the client where it was, with its lock.
    huge = {"blob": "x" * (70 << 10)}
    assert refused(lambda: traveller.join_room("nowhere", timeout=T)).code == "unknown_room"
    assert refused(lambda: traveller.join_room("a", timeout=T)).code == "invalid_message"
    assert refused(lambda: traveller.join_room("b", metadata=huge, timeout=T)).code == (
        "limit_exceeded"
    )
    assert traveller.room == "a" and traveller.synced
    assert traveller.fetch("cube", timeout=T).owner == "t"
    assert room_data(traveller) == {b.uuid: b.data for b in scene_of("a")}
    assert traveller.push_confirmed("cube", {"room": "a", "x": 1}, timeout=T) == 2
    # The PRESENCE that shows the traveller ACTIVE leaves the server a short
    # while after its download ends: taken now, it is not one of the
    # switch's events.
    traveller.wait_until(
        lambda: any(u.name == "t" and u.status == "ACTIVE" for u in traveller.users), T
    )

    events = record(traveller)
    joined = traveller.join_room("b", timeout=T)
    assert joined == RoomJoined("b", "RUNNING", "ACTIVE", False, False)
    assert (traveller.room, traveller.created, traveller.room_admin) == ("b", False, False)
    assert traveller.blocks == {} and not traveller.synced
    assert events == [RoomChanged("b", "RUNNING", "ACTIVE", False, False)]
    traveller.download(timeout=T)
    assert room_data(traveller) == {b.uuid: b.data for b in scene_of("b")}

    # Leaving a released the lock there.
    host_a.wait_until(lambda: OwnerChanged(("cube",), COMMON, "t") in host_events, T)
    assert host_a.blocks["cube"].data == {"room": "a", "x": 1}
    assert host_a.blocks["cube"].owner == COMMON
    # a's traffic no longer reaches it (a's update is applied before b's is
    # sent, so it would arrive first); b's does.
    host_a.push_confirmed("cube", {"room": "a", "x": 99}, timeout=T)
    host_b.push_confirmed("cube", {"room": "b", "x": 7}, timeout=T)
    traveller.wait_until(lambda: traveller.blocks["cube"].data == {"room": "b", "x": 7}, T)
    updates = [e for e in events if isinstance(e, Updated)]
    assert updates and all(e.block.data["room"] == "b" for e in updates)
    traveller.wait_until(lambda: {u.name for u in traveller.users} == {"t", "host-b"}, T)
    wait_rooms(
        traveller, lambda rooms: rooms["a"].users_online == 1 and rooms["b"].users_online == 2
    )


def test_the_old_rooms_traffic_is_not_applied_after_a_switch(connect):
    host_a = host_room(
        connect, "a", scene_of("a") + [Datablock("a-only", "Object", {"room": "a"}, owner=COMMON)]
    )
    host_room(connect, "b")
    probe = connect("probe", auth=False)
    traveller = connect("t", room="a")
    traveller.download(timeout=T)
    events = record(traveller)
    # a is busy; the traveller reads nothing meanwhile, so a's updates wait
    # in its subscriber socket when the switch is answered.
    for i in range(60):
        host_a.push("cube", {"room": "a", "x": i})
        host_a.push("a-only", {"room": "a", "i": i})
    host_a.wait_applied(timeout=T)
    rid = traveller.join_room_nowait("b")
    # The server has switched it once b lists two users: the answer is then
    # on the commands channel, which is read before the subscriber channel.
    wait_rooms(probe, lambda rooms: rooms["b"].users_online == 2)
    reply = traveller.wait_for(lambda e: isinstance(e, Reply) and e.request_id == rid, T)
    assert reply.kind == "join_room"
    assert reply.result == RoomJoined("b", "RUNNING", "ACTIVE", False, False)
    switch = events.index(RoomChanged("b", "RUNNING", "ACTIVE", False, False))
    assert traveller.blocks == {}

    traveller.download(timeout=T)
    assert room_data(traveller) == {b.uuid: b.data for b in scene_of("b")}
    after = events[switch + 1 :]
    assert all(e.block.data["room"] == "b" for e in after if isinstance(e, Updated))
    assert not any(isinstance(e, LocalError) for e in events)


def test_an_update_with_the_old_token_is_not_applied_after_a_switch(connect):
    host_a = host_room(connect, "a")
    host_b = host_room(connect, "b")
    traveller = connect("t", room="a")
    traveller.download(timeout=T)
    old_token = traveller._token
    traveller.join_room("b", timeout=T)
    assert traveller._token not in (None, old_token), "the answer carries a new token"
    events = record(traveller)

    # An UPDATE sent for room a that reaches the server after the switch:
    # raw frames with the old token (and an id the session does not track).
    stale = {"type": "UPDATE", "id": 10**6, "uuid": "cube"}
    traveller._send(Channel.PUBLISHER, [[old_token, pack(stale), pack({"room": "a", "x": -1})]])
    # The publisher channel is ordered: once this push (new token) is
    # acknowledged, the server has processed the stale one.
    traveller.push_confirmed("t-note", {"room": "b"}, type_id="Object", owner=COMMON, timeout=T)
    host_b.wait_until(lambda: "t-note" in host_b.blocks, T)
    cube = host_b.fetch("cube", timeout=T)
    assert (cube.data, cube.revision) == ({"room": "b", "x": 0}, 1)
    assert host_a.fetch("cube", timeout=T).data == {"room": "a", "x": 0}, "dropped, not applied"
    traveller.download(timeout=T)
    assert traveller.blocks["cube"].data == {"room": "b", "x": 0}
    assert not [e for e in events if getattr(e, "request_id", None) == 10**6]
    assert not any(isinstance(e, (ServerError, LocalError)) for e in events)


def test_pushes_racing_a_switch_land_in_the_old_room_or_fail(connect):
    host_a = host_room(connect, "a")
    host_b = host_room(connect, "b")
    traveller = connect("t", room="a")
    traveller.download(timeout=T)
    events = record(traveller)
    ids = [traveller.push("cube", {"room": "a", "x": i}) for i in range(1, 31)]
    rid = traveller.join_room_nowait("b")
    traveller.wait_until(lambda: traveller.room == "b" and not traveller.pending_pushes(), T)
    answers = {e.request_id: e for e in events if getattr(e, "request_id", None) in ids}
    assert set(answers) == set(ids)
    applied = [i for i in ids if isinstance(answers[i], Reply)]
    # The server applies them in order until the switch and drops the rest.
    assert applied == ids[: len(applied)]
    for i in ids[len(applied) :]:
        assert isinstance(answers[i], RequestFailed) and isinstance(answers[i].error, RoomLeft)
    assert [e for e in events if isinstance(e, Reply) and e.request_id == rid]

    cube = host_a.fetch("cube", timeout=T)
    assert (cube.data, cube.revision) == ({"room": "a", "x": len(applied)}, 1 + len(applied))
    cube = host_b.fetch("cube", timeout=T)
    assert (cube.data, cube.revision) == ({"room": "b", "x": 0}, 1)
    assert not any(isinstance(e, (ServerError, LocalError)) for e in events)


def test_a_room_created_with_join_room_is_uploaded_and_edited(connect):
    boss = connect("boss", admin=True)
    assert boss.room == DEFAULT_ROOM and not boss.created and boss.room_admin
    events = record(boss)
    assert boss.join_room("studio", timeout=T) == RoomJoined(
        "studio", "LOBBY", "WAITING", True, True
    )
    assert (boss.room, boss.created, boss.room_admin) == ("studio", True, True)
    assert RoomChanged("studio", "LOBBY", "WAITING", True, True) in events
    early = connect("early", room="studio")
    assert early.auth.status == "LOBBY" and not early.created
    early.subscribe()  # the download starts when the upload ends
    assert boss.upload(scene_of("studio"), timeout=T) == 2
    early.wait_until(lambda: early.synced, T)
    assert room_data(early) == {b.uuid: b.data for b in scene_of("studio")}
    # The uploader gets no snapshot, and the others' edits from the start.
    early.push_confirmed("cube", {"room": "studio", "x": 5}, timeout=T)
    boss.wait_until(lambda: boss.blocks["cube"].data == {"room": "studio", "x": 5}, T)


def test_leave_room_stays_connected_in_no_room(start_server, connect):
    server = start_server("-t", "1000")
    host = host_room(connect, "a", port=server.port)
    traveller = connect("t", room="a", port=server.port)
    traveller.download(timeout=T)
    host_events = record(host)
    traveller.lock(["cube"])
    events = record(traveller)
    assert traveller.leave_room(timeout=T) is None
    assert events == [RoomChanged(None)]
    assert traveller.room is None and not traveller.created and not traveller.room_admin
    assert traveller.blocks == {} and not traveller.synced and traveller.authenticated
    host.wait_until(lambda: OwnerChanged(("cube",), COMMON, "t") in host_events, T)

    # Whatever needs a room is refused with the server's code.
    for call in (
        lambda: traveller.lock(["cube"], timeout=T),
        lambda: traveller.fetch("cube", timeout=T),
        lambda: traveller.delete("cube", timeout=T),
        lambda: traveller.push_confirmed("cube", {"room": "none"}, type_id="Object", timeout=T),
        lambda: traveller.kick("host-a", timeout=T),
        lambda: traveller.set_keep_open(True, timeout=T),
        lambda: traveller.leave_room(timeout=T),
        lambda: traveller.download(timeout=T),
    ):
        assert refused(call).code == "not_in_room"

    # Still connected: idle for three times the timeout, the heartbeat
    # keeps the session, and SERVER_INFO is answered.
    time.sleep(3.0)
    assert traveller.authenticated and traveller.ended is None
    assert {r.name: r.users_online for r in traveller.list_rooms(timeout=T)} == {
        "default": 0,
        "a": 1,
    }
    # And back into a room.
    assert traveller.join_room("a", timeout=T).status == "RUNNING"
    traveller.download(timeout=T)
    assert room_data(traveller) == {b.uuid: b.data for b in scene_of("a")}
    assert traveller.lock(["cube"], timeout=T)["owner"] == "t"


def test_a_room_closes_with_its_last_user_unless_kept_open(connect):
    probe = connect("probe", auth=False)
    short = host_room(connect, "short")
    wait_rooms(probe, lambda rooms: "short" in rooms)
    short.leave_room(timeout=T)
    wait_rooms(probe, lambda rooms: "short" not in rooms)

    keeper = host_room(connect, "kept")
    viewer = connect("viewer", room="kept")
    viewer.download(timeout=T)
    assert refused(lambda: viewer.set_keep_open(True, timeout=T)).code == "not_admin"
    answer = keeper.set_keep_open(True, timeout=T)
    assert (answer["room"], answer["keep_open"]) == ("kept", True)
    assert next(r for r in probe.list_rooms(timeout=T) if r.name == "kept").keep_open
    keeper.push_confirmed("cube", {"room": "kept", "x": 3}, timeout=T)
    keeper.leave()
    viewer.leave()
    wait_rooms(probe, lambda rooms: "kept" in rooms and rooms["kept"].users_online == 0)
    back = connect("back", room="kept")
    assert back.auth.status == "RUNNING" and not back.created
    back.download(timeout=T)
    assert back.blocks["cube"].data == {"room": "kept", "x": 3}

    # The setting goes back off (non-blocking form); then the last user
    # leaving closes the room.
    boss = connect("boss", admin=True, room="kept")  # a server admin: an admin of every room
    assert not boss.created and boss.room_admin
    rid = boss.set_keep_open_nowait(False)
    reply = boss.wait_for(lambda e: isinstance(e, Reply) and e.request_id == rid, T)
    assert reply.kind == "room_settings" and reply.result["keep_open"] is False
    boss.leave_room(timeout=T)
    back.leave_room(timeout=T)
    wait_rooms(probe, lambda rooms: "kept" not in rooms)

    # The default room stays, whoever leaves it.
    lone = connect("lone")
    lone.leave_room(timeout=T)
    assert [r.name for r in probe.list_rooms(timeout=T)] == ["default"]


def test_a_room_password_is_checked(connect):
    owner = connect("owner", admin=True, room="secret", room_password="pw")
    owner.upload(scene_of("secret"), timeout=T)
    # Two wrong passwords (wrong ones are counted per address and room;
    # a third would lock this address out of the room for a while).
    with pytest.raises(AuthenticationError) as err:
        connect("w", room="secret", room_password="nope")
    assert err.value.code == "wrong_room_password"
    user = connect("u")
    assert refused(lambda: user.join_room("secret", timeout=T)).code == "wrong_room_password"
    assert user.room == DEFAULT_ROOM
    # A name already used in the room is refused the same way.
    twin = connect("owner")
    assert refused(lambda: twin.join_room("secret", "pw", timeout=T)).code == "name_taken"
    assert twin.room == DEFAULT_ROOM

    assert user.join_room("secret", "pw", timeout=T).status == "RUNNING"
    user.download(timeout=T)
    assert room_data(user) == {b.uuid: b.data for b in scene_of("secret")}
    guest = connect("guest", room="secret", room_password="pw")
    assert guest.auth.status == "RUNNING" and guest.room == "secret"


def test_wrong_room_passwords_are_throttled(connect):
    owner = connect("owner", admin=True, room="secret", room_password="pw")
    owner.upload(scene_of("secret"), timeout=T)
    user = connect("u")
    for _ in range(3):
        error = refused(lambda: user.join_room("secret", "nope", timeout=T))
        assert error.code == "wrong_room_password"
    third = time.monotonic()
    events = record(user)
    rid = user.join_room_nowait("secret", "pw")
    sent = time.monotonic()
    answer = user.wait_for(lambda e: getattr(e, "request_id", None) == rid, T)
    # The server locks the place out for 0.5 s after its third failure;
    # a slower machine may send the fourth request after that.
    if sent - third <= 0.4:
        assert isinstance(answer, RequestFailed), answer
        assert answer.error.code == "too_many_attempts"
        assert user.room == DEFAULT_ROOM and RoomChanged not in map(type, events)
    if user.room == DEFAULT_ROOM:
        time.sleep(max(0.0, third + 0.6 - time.monotonic()))
        assert user.join_room("secret", "pw", timeout=T).status == "RUNNING"
    assert user.room == "secret"
    user.download(timeout=T)
    assert room_data(user) == {b.uuid: b.data for b in scene_of("secret")}


def test_without_a_room_a_client_is_in_the_default_room(connect):
    host = connect("host", admin=True)
    assert (host.auth.room, host.auth.created) == (DEFAULT_ROOM, False)
    assert (host.room, host.created, host.room_admin) == (DEFAULT_ROOM, False, True)
    host.upload(scene_of("default"), timeout=T)
    viewer = connect("viewer")
    assert (viewer.room, viewer.created, viewer.room_admin) == (DEFAULT_ROOM, False, False)
    assert viewer.auth.status == "RUNNING"
    viewer.download(timeout=T)
    assert room_data(viewer) == {b.uuid: b.data for b in scene_of("default")}
    info = viewer.server_info(timeout=T)
    assert (info["state"], info["users_online"], info["datablocks"]) == ("ACTIVE", 2, 2)


# ---------------------------------------------------------------- no server


class Fed:
    """A session fed by hand: messages as the wire half would read them."""

    def __init__(self) -> None:
        self.s = Session("127.0.0.1", 1, "t")
        self.events = record(self.s)

    def command(self, header):
        self.s._on_wire(Channel.COMMANDS, [pack(header)])

    def sub(self, header, data=None):
        self.s._on_wire(Channel.SUBSCRIBER, [pack(header)] + ([] if data is None else [data]))

    def auth(self, room):
        self.command(
            {"type": "AUTH", "status": "RUNNING", "state": "ACTIVE", "token": "t1", "room": room}
        )
        self.snapshot(room)
        self.s._dispatch(None)
        assert self.s.room == room and self.s.synced
        assert self.s.blocks["cube"].data == {"room": room}
        self.events.clear()

    def snapshot(self, room):
        begin = {"type": "SNAPSHOT", "step": "BEGIN", "datablocks": 1}
        self.sub(dict(begin, window=1000, window_bytes=1 << 30))
        self.sub(
            {"type": "DATABLOCK", "uuid": "cube", "type_id": "Object", "revision": 1},
            pack({"room": room}),
        )
        self.sub({"type": "SNAPSHOT", "step": "END", "datablocks": 1})

    def update(self, room, revision, uuid="cube", transfer=None, announce=True, chunk=True):
        """A forwarded UPDATE; chunked with ``transfer`` (``announce`` and
        ``chunk`` send its header and its CHUNK)."""
        header = {"type": "UPDATE", "uuid": uuid, "type_id": "Object", "revision": revision}
        payload = pack({"room": room, "r": revision})
        if transfer is None:
            self.sub(dict(header, sender="other"), payload)
            return
        if announce:
            self.sub(dict(header, sender="other", transfer=transfer, chunks=1, size=len(payload)))
        if chunk:
            self.sub({"type": "CHUNK", "transfer": transfer, "index": 0}, payload)

    def answer(self, rid, room, token):
        reply = {"type": "ROOM", "id": rid, "token": token}
        if room is not None:
            reply.update(room=room, status="RUNNING", state="ACTIVE", created=False, admin=False)
        self.command(reply)

    def marker(self, room):
        marker = {"type": "ROOM"}
        if room is not None:
            marker.update(room=room, status="RUNNING", state="ACTIVE", created=False, admin=False)
        self.sub(marker)

    def rooms_of_updates(self, events):
        return [e.block.data["room"] for e in events if isinstance(e, Updated)]

    def close(self):
        assert not any(isinstance(e, (LocalError, ServerError)) for e in self.events)
        self.s.close()


B = RoomChanged("b", "RUNNING", "ACTIVE", False, False)


def test_the_old_rooms_traffic_after_the_answer_is_dropped_until_the_marker():
    """The answer first: the old room's subscriber messages still on their
    way after it are dropped up to the marker."""
    fed = Fed()
    s = fed.s
    try:
        fed.auth("a")
        fetch = s._new_request("fetch", False)  # a fetch_nowait still unanswered
        # Two pushes: the server applies the first before the switch and
        # drops the second.
        applied, dropped = (
            Push(next(s._ids), False, uuid, None, mirrored=True, patch=False)
            for uuid in ("cube", "a-mat")
        )
        for push in (applied, dropped):
            s._requests[push.id] = s._pushes[push.id] = push
        join = s._new_request("join_room", False)

        # Read before the answer: still room a, applied there.
        fed.update("a", 2)
        fed.command({"type": "ACK", "id": applied.id, "uuid": "cube", "revision": 3})
        fed.update("a", 3, transfer=7, chunk=False)  # its CHUNK comes after the answer
        fed.answer(join.id, "b", "t2")
        assert s._token == b"t2", "publisher messages carry the new token at once"
        # Still on its way from a: that CHUNK, an update, a chunked one, the
        # answer to the fetch, a release; and the refusal of an
        # acknowledgement of a's snapshot that arrived after the switch.
        fed.update("a", 3, transfer=7, announce=False)
        fed.update("a", 4)
        fed.update("a", 5, transfer=8)
        fed.sub(
            {"type": "DATABLOCK", "id": fetch.id, "uuid": "cube", "type_id": "Object"},
            pack({"room": "a"}),
        )
        fed.sub({"type": "RIGHT", "uuids": ["cube"], "owner": COMMON, "sender": "x"})
        fed.command(
            {
                "type": "ERROR",
                "code": "invalid_message",
                "message": "SNAPSHOT_ACK without SNAPSHOT",
                "refers_to": {"type": "SNAPSHOT_ACK"},
            }
        )
        fed.marker("b")
        # b's traffic from the marker on: applied.
        fed.snapshot("b")
        fed.update("b", 2, transfer=7)
        fed.s._dispatch(None)

        switch = fed.events.index(B)
        before, after = fed.events[:switch], fed.events[switch + 1 :]
        assert fed.rooms_of_updates(before) == ["a"]
        assert Reply(applied.id, "update", 3) in before
        assert RequestFailed(dropped.id, "update", dropped.error) in before
        assert isinstance(dropped.error, RoomLeft) and s.pending_pushes() == []
        assert RequestFailed(fetch.id, "fetch", fetch.error) in after
        assert isinstance(fetch.error, RoomLeft)
        joined = RoomJoined("b", "RUNNING", "ACTIVE", False, False)
        assert Reply(join.id, "join_room", joined) in after
        assert fed.rooms_of_updates(after) == ["b", "b"]
        assert not any(isinstance(e, OwnerChanged) for e in after)
        assert s.room == "b" and s.synced and s.blocks["cube"].data == {"room": "b", "r": 2}
    finally:
        fed.close()


def test_the_new_rooms_traffic_before_the_answer_waits_for_it():
    """The markers first, two switches in flight (JOIN_ROOM, then
    LEAVE_ROOM): each room's subscriber messages follow its answer."""
    fed = Fed()
    s = fed.s
    try:
        fed.auth("a")
        join = s._new_request("join_room", False)
        leave = s._new_request("leave_room", False)
        fed.update("a", 2)
        fed.marker("b")
        fed.update("b", 1, uuid="b-only", transfer=3)
        fed.marker(None)
        fed.s._dispatch(None)
        assert s.room == "a" and fed.rooms_of_updates(fed.events) == ["a"]
        assert "b-only" not in s.blocks

        fed.answer(join.id, "b", "t2")
        fed.s._dispatch(None)
        assert s.room == "b" and set(s.blocks) == {"b-only"}
        switch = fed.events.index(B)
        assert [type(e) for e in fed.events[switch:]] == [RoomChanged, Reply, Updated]
        assert fed.rooms_of_updates(fed.events) == ["a", "b"]

        fed.answer(leave.id, None, "t3")
        fed.s._dispatch(None)
        assert fed.events[-2:] == [RoomChanged(None), Reply(leave.id, "leave_room", None)]
        assert s.room is None and s.blocks == {} and s._token == b"t3"
        assert (s._room_lag, s._held) == (0, [])
    finally:
        fed.close()


def test_a_refused_switch_loses_nothing_of_the_room():
    """Subscriber messages read while JOIN_ROOM waits for its answer are the
    room's the client stays in when the request is refused."""
    fed = Fed()
    s = fed.s
    try:
        fed.auth("a")
        join = s._new_request("join_room", False)
        fed.update("a", 2)
        fed.command(
            {
                "type": "ERROR",
                "code": "wrong_room_password",
                "message": "wrong password",
                "refers_to": {"type": "JOIN_ROOM", "id": join.id},
            }
        )
        fed.update("a", 3)
        fed.s._dispatch(None)
        failed = [e for e in fed.events if isinstance(e, RequestFailed)]
        assert [(e.request_id, e.error.code) for e in failed] == [(join.id, "wrong_room_password")]
        assert s.room == "a" and s.synced and s._token == b"t1"
        assert s.blocks["cube"].data == {"room": "a", "r": 3}
        assert fed.rooms_of_updates(fed.events) == ["a", "a"]
    finally:
        fed.close()


def test_an_answer_read_before_the_session_ends_is_kept():
    """A request answered on the wire but not yet taken by the consumer
    keeps its answer when the session ends just after; only unanswered
    requests fail."""
    fed = Fed()
    s = fed.s
    try:
        fed.auth("a")
        answered = s._new_request("leave_room", False)
        unanswered = s._new_request("join_room", False)
        fed.answer(answered.id, None, "t2")
        s._end_session("server gone", by_server=True)
        s._dispatch(None)
        assert Reply(answered.id, "leave_room", None) in fed.events
        failed = [e for e in fed.events if isinstance(e, RequestFailed)]
        assert [e.request_id for e in failed] == [unanswered.id], fed.events
    finally:
        fed.events[:] = [e for e in fed.events if not isinstance(e, (LocalError, ServerError))]
        fed.close()
