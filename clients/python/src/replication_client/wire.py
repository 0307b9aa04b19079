"""The wire half of a session: it runs on the thread that owns the sockets.

It decodes frames, acknowledges the snapshot window, joins chunks, matches
answers to the requests waiting for them (the ACK or ERROR of an own
UPDATE included), drives uploads (SETs leave once INIT is accepted) and
notices the end of the session. Whole messages go to the inbox, for the
consumer half. Nothing here touches the replica, the callbacks or Blender
data.

Switching rooms
    The answer to JOIN_ROOM or LEAVE_ROOM (ROOM) travels on the commands
    channel, which has no order with the subscriber channel: the old room's
    traffic sent just before the switch may still be on its way after it.
    The subscriber channel itself is ordered, so from the ROOM answer on,
    its messages are dropped until the first one that can only come from
    the new room: the BEGIN of the snapshot asked for after the switch, the
    answer to a FETCH sent after it, or (for the creator of a room, who
    gets no snapshot) the end of its upload. FETCHes and uploads still under
    way in the old room fail with :class:`RoomLeft`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import zmq

from .codec import pack, unpack
from .errors import (
    AuthenticationError,
    Disconnected,
    ProtocolError,
    ReplicationError,
    RequestRefused,
    RoomLeft,
)
from .events import LocalError
from .heartbeat import Heartbeat
from .inbox import ANSWERS, Abandoned, Ended, Message, Push, Request
from .model import AuthInfo
from .protocol import DEFAULT_CHUNK_BYTES, Channel, message
from .stream import Reassembler, SnapshotWindow
from .transport import Transport
from .uploads import Upload

__all__ = ["WireHalf"]

log = logging.getLogger("replication_client")


class WireHalf:
    """Mixin of :class:`Session`; the attributes are set by its constructor."""

    auth: AuthInfo | None
    room: str | None
    _ids: Iterator[int]
    _transport: Transport | None
    _heartbeat: Heartbeat | None
    _token: bytes | None
    _chunk_bytes: int
    _requests: dict[int, Request]
    _requests_lock: threading.Lock
    _push_transfers: dict[int, Push]
    _uploads: dict[int, Upload]
    _reassembler: Reassembler
    _window: SnapshotWindow
    _silence: float | None
    _draining: bool
    _room_floor: int
    _begin_seen: threading.Event
    _inbox: deque[Any]
    _inbox_cv: threading.Condition
    _bg_stop: threading.Event

    def _pump(self, timeout: float, budget: float) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._silence is not None:
            silent, self._silence = self._silence, None
            self._end_session(f"no PING from the server for {silent:.1f} s", by_server=False)
        transport.pump(timeout, budget, self._on_wire)

    def _bg_loop(self) -> None:
        while not self._bg_stop.is_set():
            try:
                self._pump(0.1, 0.05)
            except zmq.ZMQError as e:
                if self._bg_stop.is_set() or e.errno == zmq.ETERM:
                    return
                log.exception("socket error in the background thread")
                self._post(LocalError(e))
                time.sleep(0.1)
            except Exception as e:  # keep serving: one bad message must not stop replication
                log.exception("error in the background thread")
                self._post(LocalError(e))

    def _on_silence(self, silent: float) -> None:
        # Heartbeat thread: only flag it; the socket thread ends the session.
        self._silence = silent
        if self._transport is not None:
            self._transport.wakeup()

    def _post(self, item: Any) -> None:
        with self._inbox_cv:
            self._inbox.append(item)
            self._inbox_cv.notify_all()

    def _on_wire(self, channel: Channel, frames: list[bytes]) -> None:
        try:
            header = unpack(frames[0]) if frames else None
            if not isinstance(header, dict) or type(header.get("type")) is not str:
                raise ProtocolError(f"not a message header: {header!r:.200}")
            payload = frames[1] if len(frames) > 1 else None
            if channel is Channel.SUBSCRIBER:
                if self._draining and not self._from_new_room(header):
                    return  # the room this client left, still on its way
                if header["type"] == "SNAPSHOT" and header.get("step") == "BEGIN":
                    self._begin_seen.set()
                ack = self._window.count(header, sum(len(f) for f in frames))
                if ack is not None:
                    self._send_now(Channel.SUBSCRIBER, message("SNAPSHOT_ACK", received=ack))
                kind = header["type"]
                if kind == "CHUNK":
                    whole = self._reassembler.chunk(header, payload)
                    if whole is None:
                        return
                    header, payload = whole
                elif kind in ("DATABLOCK", "UPDATE") and self._reassembler.header(header):
                    return
            self._on_message(Message(channel, header, payload))
        except (ProtocolError, ValueError, KeyError, TypeError) as e:
            err = (
                e
                if isinstance(e, ProtocolError)
                else ProtocolError(f"bad message from the server: {e!r}")
            )
            self._post(LocalError(err))

    def _from_new_room(self, header: dict[str, Any]) -> bool:
        """While draining: whether this subscriber message is the first of
        the new room (everything after it is too), which ends the drain."""
        kind = header["type"]
        rid = header.get("id")
        if (kind == "SNAPSHOT" and header.get("step") == "BEGIN") or (
            kind == "DATABLOCK" and type(rid) is int and rid > self._room_floor
        ):
            self._draining = False
            return True
        return False

    def _left_room(self) -> None:
        """Socket thread: JOIN_ROOM or LEAVE_ROOM was answered, so the client
        left its room. Drops the old room's subscriber traffic still on its
        way (see the module's docstring) and fails what waited for it."""
        with self._requests_lock:
            # Requests made from now on get greater ids: their answers come
            # from the new room.
            self._room_floor = next(self._ids)
            stale = [r for r in self._requests.values() if r.kind == "fetch"]
            for req in stale:
                del self._requests[req.id]
        self._draining = True
        self._begin_seen.clear()
        self._reassembler.clear()
        self._window = SnapshotWindow()
        error = RoomLeft(self.room)
        failed = []
        for req in stale:
            req.error = error
            req.done.set()
            if not req.blocking:
                failed.append(req)
        if failed:
            self._post(Abandoned(failed))
        for up in set(self._uploads.values()):
            self._finish_upload(up, error=error)

    def _send_now(self, channel: Channel, header: dict[str, Any]) -> None:
        assert self._transport is not None
        self._transport.enqueue(channel, [pack(header)])

    def _on_message(self, msg: Message) -> None:
        h = msg.header
        kind = h["type"]
        if kind == "AUTH" and h.get("status") in ("LOBBY", "RUNNING"):
            self._on_auth(h)
        elif kind == "ROOM":
            self._left_room()
        elif kind == "ERROR" and self._draining:
            if (h.get("refers_to") or {}).get("type") == "SNAPSHOT_ACK":
                # An acknowledgement of the old room's snapshot, which the
                # server received after the switch: nothing to report.
                msg.claimed = True
        up = self._upload_for(h)
        if up is not None:
            self._upload_progress(up, msg)
            msg.claimed = True
        self._match(msg)
        self._post(msg)
        if kind == "DISCONNECT":
            self._end_session(str(h.get("reason", "")), by_server=True)
        elif kind == "ERROR" and h.get("code") == "not_authenticated" and self._token is not None:
            self._end_session("the server no longer knows this session", by_server=True)

    def _match(self, msg: Message) -> None:
        """Finds the request ``msg`` answers or refuses, and resolves it.

        An ERROR about a CHUNK names only its transfer: when that is the
        transfer of one of our UPDATEs, the ERROR is about that push. Once
        a chunked push has been refused, the server refuses its remaining
        CHUNKs too; those ERRORs are claimed, so the push is reported once.
        """
        h = msg.header
        kind = h["type"]
        rid = h.get("id") if kind in ANSWERS else None
        rt: dict[str, Any] = {}
        if kind == "ERROR":
            rt = h.get("refers_to") or {}
            rid = rt.get("id")
        with self._requests_lock:
            req: Request | None = None
            if rid is None and rt.get("type") == "CHUNK":
                push = self._push_transfers.get(rt.get("transfer"))  # type: ignore[arg-type]
                if push is not None:
                    rid = push.id
                    if push.done.is_set():
                        msg.claimed = True
                    else:
                        req = push
            elif rid is not None:
                req = self._requests.get(rid)
            msg.rid = rid
            if req is None:
                return
            self._resolve(req, msg)
            msg.claimed = req.blocking
            if isinstance(req, Push) and req.transfer is not None and kind == "ACK":
                self._push_transfers.pop(req.transfer, None)

    def _on_auth(self, h: dict[str, Any]) -> None:
        self.auth = AuthInfo(
            status=h["status"],
            state=h.get("state", ""),
            token=h["token"],
            heartbeat_ms=int(h.get("heartbeat_ms", 1000)),
            timeout_ms=int(h.get("timeout_ms", 5000)),
            chunk_bytes=max(1, int(h.get("chunk_bytes", DEFAULT_CHUNK_BYTES))),
            max_header_bytes=int(h.get("max_header_bytes", DEFAULT_CHUNK_BYTES)),
            room=h.get("room"),
            created=bool(h.get("created", False)),
        )
        self._chunk_bytes = self.auth.chunk_bytes
        self._token = self.auth.token.encode("utf-8")
        if self._heartbeat is not None:
            self._heartbeat.watch(self.auth.timeout_ms, self.auth.heartbeat_ms)

    def _resolve(self, req: Request, msg: Message) -> None:
        h = msg.header
        if h["type"] == "ERROR":
            req.error = RequestRefused(h.get("code", ""), h.get("message", ""), h.get("refers_to"))
        elif h["type"] == "AUTH" and h.get("status") == "FAILED":
            req.error = AuthenticationError(h.get("code", ""), h.get("reason", ""))
        else:
            req.answer = msg
        req.done.set()

    def _end_session(self, reason: str, by_server: bool) -> None:
        """Socket thread: forget the session and fail what waits for it."""
        if self._token is None and not by_server:
            return
        self._token = None
        if self._heartbeat is not None:
            self._heartbeat.unwatch()
        self._draining = False
        self._begin_seen.clear()
        self._reassembler.clear()
        self._window = SnapshotWindow()
        error = Disconnected(reason, by_server)
        with self._requests_lock:
            pending = list(self._requests.values())
            self._requests.clear()
            self._push_transfers.clear()
        failed = []
        for req in pending:
            req.error = error
            req.done.set()
            if not req.blocking:
                failed.append(req)
        for up in set(self._uploads.values()):
            self._finish_upload(up, error=error)
        self._post(Ended(reason, by_server, failed))

    def _upload_for(self, h: dict[str, Any]) -> Upload | None:
        if not self._uploads:
            return None
        if h["type"] == "SERVER_SNAPSHOT":
            return self._uploads.get(h.get("id"))  # type: ignore[arg-type]
        if h["type"] == "ERROR":
            rt = h.get("refers_to") or {}
            if rt.get("id") in self._uploads:
                return self._uploads[rt["id"]]
            if rt.get("type") == "CHUNK":
                for up in set(self._uploads.values()):
                    if rt.get("transfer") in up.transfers:
                        return up
        return None

    def _upload_progress(self, up: Upload, msg: Message) -> None:
        h = msg.header
        if h["type"] == "SERVER_SNAPSHOT":
            if h.get("id") == up.id and h.get("status") == "ACCEPTED":
                assert self._transport is not None
                for frames in up.set_messages():
                    self._transport.enqueue(Channel.COMMANDS, frames)
                self._send_now(
                    Channel.COMMANDS, message("SERVER_SNAPSHOT", id=up.end_id, step="END")
                )
            elif h.get("id") == up.id:
                rt = {"type": "SERVER_SNAPSHOT", "id": up.id}
                self._finish_upload(
                    up, error=RequestRefused(h.get("code", ""), h.get("reason", ""), rt)
                )
            elif h.get("status") == "DONE":
                # The uploader is live from now on, without a snapshot: what
                # follows on the subscriber channel is this room's.
                self._draining = False
                self._finish_upload(up, datablocks=int(h.get("datablocks", 0)))
            return
        rt = h.get("refers_to") or {}
        error = RequestRefused(h.get("code", ""), h.get("message", ""), rt)
        if rt.get("id") in (up.id, up.end_id):
            self._finish_upload(up, error=error)
        else:
            up.refuse(rt, error)

    def _finish_upload(
        self, up: Upload, datablocks: int = 0, error: ReplicationError | None = None
    ) -> None:
        for rid in up.ids():
            self._uploads.pop(rid, None)
        up.finish(datablocks, error)
        self._post(up)
