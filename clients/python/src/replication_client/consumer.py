"""The consumer half of a session: it runs in :meth:`Session.poll`, on the
add-on's thread.

It takes whole messages from the inbox, keeps the replica and the user list
current (the ACK of an own UPDATE gives the datablock's revision), repairs
the replica with FETCH when it cannot be trusted, turns messages into events
and calls the callbacks. Only this half touches the replica, so it needs no
lock, and callbacks may change Blender data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .codec import pack
from .events import (
    Deleted,
    Event,
    OwnerChanged,
    Reply,
    RequestFailed,
    RoomChanged,
    ServerError,
    SessionEnded,
    SnapshotDone,
    SnapshotProgress,
    UploadDone,
    UsersChanged,
)
from .inbox import ANSWERS, Abandoned, Ended, Message, Push, Request
from .model import (
    AuthInfo,
    Datablock,
    User,
    apply_presence,
    room_info_from_wire,
    room_joined_from_wire,
    user_from_wire,
)
from .protocol import Channel, message
from .replica import Replica
from .uploads import Upload

__all__ = ["ConsumerHalf"]

log = logging.getLogger("replication_client")

#: Items the consumer takes from the inbox per turn of its lock.
_TAKE_AT_ONCE = 256


class ConsumerHalf:
    """Mixin of :class:`Session`; the attributes are set by its constructor."""

    user: str
    is_admin: bool
    auth: AuthInfo | None
    users: tuple[User, ...]
    ended: SessionEnded | None
    room: str | None
    created: bool
    room_admin: bool
    _replica: Replica
    _token: bytes | None
    _requests: dict[int, Request]
    _requests_lock: threading.Lock
    _inbox: deque[Any]
    _inbox_cv: threading.Condition
    _callbacks: list[tuple[type[Event], Callable[[Any], None]]]
    _dispatching: bool
    _internal_fetches: dict[int, str]
    _pushes: dict[int, Push]
    _fetch_floor: dict[str, int]
    _answered_before_acks: dict[str, int]
    _subscribed: bool
    _synced: bool
    _snapshot_total: int
    _snapshot_done: int
    _ids: Iterator[int]
    _send: Callable[[Channel, list[list[bytes]]], None]

    def _result(self, req: Request, msg: Message) -> Any:
        """What a request's blocking form returns, and its Reply carries."""
        h = msg.header
        if req.kind == "auth":
            return self.auth
        if req.kind == "update":  # the ACK of a push
            return int(h.get("revision", 0))
        if req.kind == "join_room":
            return room_joined_from_wire(h)
        if req.kind == "leave_room":
            return None
        if req.kind == "rooms":
            return [room_info_from_wire(r) for r in h.get("rooms") or []]
        if req.kind == "fetch":
            return self._replica.blocks.get(h["uuid"]) or Datablock(
                h["uuid"],
                h["type_id"],
                msg.data(),
                h.get("owner"),
                list(h.get("deps") or []),
                h.get("revision", 0),
            )
        return {k: v for k, v in h.items() if k != "type"}

    def _dispatch(self, budget: float | None) -> list[Event]:
        if self._dispatching:
            return []  # a callback called a blocking method: the outer loop goes on
        self._dispatching = True
        events: list[Event] = []
        deadline = None if budget is None else time.monotonic() + budget
        taken: deque[Any] = deque()
        try:
            while True:
                if not taken:
                    # Up to a batch's worth of items per turn of the lock,
                    # which the socket thread takes to post them.
                    with self._inbox_cv:
                        if not self._inbox:
                            break
                        for _ in range(min(len(self._inbox), _TAKE_AT_ONCE)):
                            taken.append(self._inbox.popleft())
                item = taken.popleft()
                for event in self._consume(item):
                    events.append(event)
                    self._fire(event)
                if deadline is not None and time.monotonic() > deadline:
                    break
        finally:
            if taken:
                # Out of budget: what was taken goes back, in order.
                with self._inbox_cv:
                    self._inbox.extendleft(reversed(taken))
            self._dispatching = False
        return events

    def _fire(self, event: Event) -> None:
        for event_type, callback in list(self._callbacks):
            if isinstance(event, event_type):
                try:
                    callback(event)
                except Exception:  # an add-on bug must not stop replication
                    log.exception("callback %r failed on %r", callback, event)

    def _consume(self, item: Any) -> list[Event]:
        if isinstance(item, Event):
            return [item]
        if isinstance(item, Ended):
            return self._consume_ended(item)
        if isinstance(item, Abandoned):
            events: list[Event] = []
            for req in item.failed:
                self._pushes.pop(req.id, None)
                if req.error is not None and not req.blocking:
                    events.append(RequestFailed(req.id, req.kind, req.error))
            return events
        if isinstance(item, Upload):
            return self._consume_upload(item)
        return self._consume_message(item)

    def _consume_ended(self, item: Ended) -> list[Event]:
        self.auth = None
        self.room = None
        self.created = False
        self.room_admin = False
        self._subscribed = False
        self._synced = False
        self._replica.fetching.clear()
        self._internal_fetches.clear()
        self._pushes.clear()
        self._fetch_floor.clear()
        self._answered_before_acks.clear()
        ended = SessionEnded(item.reason, item.by_server)
        self.ended = ended
        events: list[Event] = [
            RequestFailed(req.id, req.kind, req.error or ended.error) for req in item.failed
        ]
        events.append(ended)
        return events

    def _consume_upload(self, up: Upload) -> list[Event]:
        if up.error is None:
            for block in up.accepted_blocks():
                self._replica.blocks[block.uuid] = block
            self._subscribed = True
            self._synced = True
        if up.blocking:
            return []
        return [UploadDone(up.id, up.datablocks, tuple(up.errors), up.error)]

    def _consume_message(self, msg: Message) -> list[Event]:
        h = msg.header
        kind = h["type"]
        rid = h.get("id")
        events: list[Event] = []
        if kind == "ERROR":
            return self._consume_error(msg)
        if kind == "DATABLOCK":
            if rid is None:
                self._snapshot_done += 1
                events.append(self._replica.stored(h, msg.data(), "snapshot"))
                events.append(SnapshotProgress(self._snapshot_done, self._snapshot_total))
            else:
                uuid = self._internal_fetches.pop(rid, None)
                if uuid is not None:
                    self._replica.fetching.discard(uuid)
                    if any(p.uuid == uuid and p.mirrored for p in self._pushes.values()):
                        # Our own updates still unanswered may or may not be
                        # in this answer; their ACKs tell (_acknowledged).
                        self._answered_before_acks[uuid] = int(h.get("revision", 0))
                events.append(self._replica.stored(h, msg.data(), "fetch"))
                if uuid is not None and h.get("revision", 0) < self._fetch_floor.pop(uuid, 0):
                    self._refetch(uuid)  # answered before one of our updates was applied
        elif kind == "ACK":
            push = self._pushes.pop(rid, None)
            if push is not None:
                self._acknowledged(push, h.get("uuid", push.uuid), int(h.get("revision", 0)))
                if push.blocking:  # push_confirmed has its answer
                    with self._requests_lock:
                        self._requests.pop(push.id, None)
        elif kind == "UPDATE":
            event, refetch = self._replica.forwarded(h, msg.payload or b"")
            if refetch:
                self._refetch(h["uuid"])
            if event is not None:
                events.append(event)
        elif kind == "SNAPSHOT":
            step = h.get("step")
            if step == "BEGIN":
                self._snapshot_total = int(h.get("datablocks", 0))
                self._snapshot_done = 0
                events.append(SnapshotProgress(0, self._snapshot_total))
            elif step == "END":
                self._synced = True
                events.append(SnapshotDone(int(h.get("datablocks", self._snapshot_done))))
        elif kind == "RIGHT":
            uuids = list(h.get("uuids") or [])
            self._replica.owners(uuids, h["owner"])
            sender = h.get("sender") if rid is None else self.user
            events.append(OwnerChanged(tuple(uuids), h["owner"], sender))
        elif kind == "DELETE":
            self._replica.remove(h["uuid"])
            events.append(Deleted(h["uuid"], h.get("sender") if rid is None else self.user))
        elif kind == "CLIENTS_STATE":
            self.users = tuple(user_from_wire(u) for u in h.get("users") or [])
            events.append(UsersChanged(self.users))
        elif kind == "PRESENCE":
            self.users = apply_presence(self.users, h)
            events.append(UsersChanged(self.users))
        elif kind == "AUTH" and h.get("status") in ("LOBBY", "RUNNING"):
            self.ended = None
            self.room = h.get("room")
            self.created = bool(h.get("created", False))
            self.room_admin = self.is_admin or self.created
        elif kind == "ROOM":
            events.append(self._changed_room(h))
        if rid is not None and kind in ANSWERS:
            events.extend(self._nowait_answer(rid, msg))
        return events

    def _consume_error(self, msg: Message) -> list[Event]:
        h = msg.header
        rt = dict(h.get("refers_to") or {})
        rid = msg.rid
        code = h.get("code", "")
        push = self._pushes.pop(rid, None) if rid is not None else None
        if push is not None:
            # One of our UPDATEs was refused: the replica shows it applied.
            with self._requests_lock:
                self._requests.pop(push.id, None)
            self._refetch(push.uuid)
            if msg.claimed:  # push_confirmed raised it
                return []
            return [ServerError(code, h.get("message", ""), rt, push.id)]
        if rid in self._internal_fetches:
            uuid = self._internal_fetches.pop(rid)
            self._replica.fetching.discard(uuid)
            self._fetch_floor.pop(uuid, None)
            if code == "unknown_datablock" and self._replica.remove(uuid):
                return [Deleted(uuid, None)]
            return []
        if rid is not None:
            answered = self._nowait_answer(rid, msg)
            if answered:
                return answered
        if msg.claimed:
            return []
        if rt.get("type") == "UPDATE" and isinstance(rt.get("uuid"), str):
            self._refetch(rt["uuid"])  # an UPDATE we no longer track
        return [ServerError(code, h.get("message", ""), rt, rid)]

    def _changed_room(self, h: dict[str, Any]) -> RoomChanged:
        """JOIN_ROOM or LEAVE_ROOM was answered: the replica starts empty,
        to be filled by the new room's snapshot. Everything of the old room
        came before this answer (the wire half drops what the old room
        still sends after it, and fails the pushes it will not answer)."""
        self._replica = Replica()
        self._subscribed = False
        self._synced = False
        self._snapshot_total = 0
        self._snapshot_done = 0
        self._internal_fetches.clear()
        self._fetch_floor.clear()
        self._answered_before_acks.clear()
        self.users = ()
        self.room = h.get("room")
        if self.room is None:
            self.created = self.room_admin = False
            return RoomChanged(None)
        self.created = bool(h.get("created", False))
        self.room_admin = bool(h.get("admin", False))
        return RoomChanged(
            self.room, h.get("status", ""), h.get("state", ""), self.created, self.room_admin
        )

    def _nowait_answer(self, rid: int, msg: Message) -> list[Event]:
        with self._requests_lock:
            req = self._requests.get(rid)
            if req is None or req.blocking:
                return []
            del self._requests[rid]
        if req.error is not None:
            return [RequestFailed(req.id, req.kind, req.error)]
        return [Reply(req.id, req.kind, self._result(req, msg))]

    def _acknowledged(self, push: Push, uuid: str, revision: int) -> None:
        """The server applied our ``push``: ``uuid`` is at ``revision``.

        The replica applied the change when it was sent and counted it as
        the next revision. The ACK tells whether that guess holds: the
        replica should be at ``revision`` plus one per later push of ours to
        the same datablock. Higher means other users' updates, applied after
        ours, reached the replica first (the subscriber channel has no order
        with the commands channel): nothing to do. Lower means the server
        applied updates of others before ours: after a full update the
        replica holds exactly the server's data, so it takes the revision;
        otherwise it misses those updates and FETCHes the datablock.
        """
        if uuid in self._replica.fetching:
            # The FETCH under way may be answered with a state older than
            # this update; its answer is checked against the revision.
            self._fetch_floor[uuid] = max(self._fetch_floor.get(uuid, 0), revision)
            return
        answered = self._answered_before_acks.get(uuid)
        if answered is not None:
            # A FETCH was answered while this update was unanswered: the
            # replica holds that answer, not this update, if the answer is
            # older. Once every such update is answered, fetch again if any
            # of them was newer than the answer.
            if revision > answered:
                self._answered_before_acks[uuid] = answered = -1
            if not any(p.uuid == uuid for p in self._pushes.values()):
                del self._answered_before_acks[uuid]
                if answered < 0:
                    self._refetch(uuid)
            return
        local = self._replica.blocks.get(uuid)
        if local is None:
            return
        if not push.mirrored:
            self._refetch(uuid)  # sent unchecked: the replica lacks the change
            return
        later = sum(
            1 for p in self._pushes.values() if p.uuid == uuid and p.mirrored and p.id > push.id
        )
        if local.revision >= revision + later:
            return
        if not push.patch and not later:
            local.revision = revision
        else:
            self._refetch(uuid)

    def _refetch(self, uuid: str) -> None:
        """Repairs the replica: FETCH the datablock unless already underway."""
        if uuid in self._replica.fetching or self._token is None:
            return
        self._replica.fetching.add(uuid)
        rid = next(self._ids)
        self._internal_fetches[rid] = uuid
        self._send(Channel.SUBSCRIBER, [[pack(message("FETCH", id=rid, uuid=uuid))]])
