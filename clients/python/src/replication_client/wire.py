"""The wire half of a session: it runs on the thread that owns the sockets.

It decodes frames, acknowledges the snapshot window, joins chunks, splits
batches (UPDATES, and a snapshot's DATABLOCKS) into the messages they
carry, matches answers to the requests waiting for them (the ACK or ERROR
of an own UPDATE included), drives uploads (SETs leave once INIT is
accepted) and notices the end of the session. Whole messages go to the
inbox, for the consumer half. Nothing here touches the replica, the
callbacks or Blender data.

Switching rooms
    The answer to JOIN_ROOM or LEAVE_ROOM (ROOM, on the commands channel)
    carries a new token for the publisher channel: the server drops UPDATEs
    still carrying the old one, so pushes it had not answered by then never
    will be; they fail with :class:`RoomLeft`, as does an upload under way.
    On the subscriber channel, the same ROOM without ``id`` (the marker)
    separates the rooms: what comes before it is the old room's. The two
    channels have no order with each other, so the answer may come first
    (the old room's messages that follow it are dropped until the marker,
    and a FETCH whose answer is among them fails with :class:`RoomLeft`)
    or the marker may (the new room's messages that follow it are held until
    the answer). Subscriber messages read before the answer reach the
    consumer before it, so they only ever touch the room the client was in,
    and a refused request loses nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import zmq

from .codec import pack, unpack
from .errors import (
    AuthenticationError,
    ClientKeyRefused,
    Disconnected,
    ProtocolError,
    ReplicationError,
    RequestRefused,
    RoomLeft,
)
from .events import LocalError
from .heartbeat import Heartbeat
from .inbox import ANSWERS, Abandoned, Ended, Message, Push, Request
from .keys import KeyResolver, server_name
from .model import AuthInfo
from .protocol import BATCH_KINDS, DEFAULT_CHUNK_BYTES, Channel, message, split_batch
from .stream import Reassembler, SnapshotWindow
from .transport import Frame, Transport
from .uploads import Upload

__all__ = ["WireHalf"]

log = logging.getLogger("replication_client")


class WireHalf:
    """Mixin of :class:`Session`; the attributes are set by its constructor."""

    auth: AuthInfo | None
    room: str | None
    host: str
    port: int
    _keys: KeyResolver | None
    _key_failed: bool
    _transport: Transport | None
    _heartbeat: Heartbeat | None
    _token: bytes | None
    batches: bool
    _chunk_bytes: int
    _max_header_bytes: int
    _batches: bool
    _requests: dict[int, Request]
    _requests_lock: threading.Lock
    _push_transfers: dict[int, Push]
    _uploads: dict[int, Upload]
    _reassembler: Reassembler
    _window: SnapshotWindow
    _silence: float | None
    _resume_due: set[Channel]
    _room_lag: int
    _held: list[list[Message]]
    _switched: bool
    _inbox: deque[Any]
    _inbox_cv: threading.Condition
    _bg_stop: threading.Event

    def _pump(self, timeout: float, budget: float) -> None:
        transport = self._transport
        if transport is None:
            return
        if not transport.opened:
            keys = self._keys
            if keys is None or not keys.done.wait(timeout):
                return
            if keys.error is not None:
                # Requests made after the failure fail with it too.
                if not self._key_failed or self._unanswered():
                    self._key_failed = True
                    self._end_session(str(keys.error), by_server=False, error=keys.error)
                return
            transport.open(keys.keys)
        if self._silence is not None:
            silent, self._silence = self._silence, None
            self._end_session(f"no PING from the server for {silent:.1f} s", by_server=False)
        transport.pump(timeout, budget, self._on_wire)
        if transport.refused_key() and self._token is None:
            assert self._keys is not None and self._keys.keys is not None
            client = self._keys.keys.client
            error = ClientKeyRefused(
                f"the server at {server_name(self.host, self.port)} admits only the client keys "
                "its admin listed, and not this one: send the admin your public key "
                f"{client.public.decode()} (fingerprint {client.fingerprint})"
            )
            self._end_session(str(error), by_server=True, error=error)

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

    def _unanswered(self) -> bool:
        with self._requests_lock:
            return any(not r.done.is_set() for r in self._requests.values())

    def _on_silence(self, silent: float) -> None:
        # Heartbeat thread: only flag it; the socket thread ends the session.
        self._silence = silent
        if self._transport is not None:
            self._transport.wakeup()

    def _post(self, item: Any) -> None:
        with self._inbox_cv:
            self._inbox.append(item)
            self._inbox_cv.notify_all()

    def _post_all(self, items: list[Any]) -> None:
        """Like :meth:`_post` for several items at once (a batch's)."""
        with self._inbox_cv:
            self._inbox.extend(items)
            self._inbox_cv.notify_all()

    def _on_wire(self, channel: Channel, frames: list[Frame]) -> None:
        try:
            header = unpack(frames[0]) if frames else None
            if not isinstance(header, dict) or type(header.get("type")) is not str:
                raise ProtocolError(f"not a message header: {header!r:.200}")
            payload = frames[1] if len(frames) > 1 else None
            if header["type"] == "RESUME":
                # A new connection of ours (libzmq reconnected the socket):
                # not part of any stream, so not counted in the window.
                self._resume(channel)
                return
            if channel is Channel.SUBSCRIBER:
                if header["type"] == "ROOM":
                    self._room_marker()
                    return
                if self._room_lag > 0:
                    self._drop_left(header)  # the room this client left
                    return
                # Counted as it came: a batch is one stream message, of all
                # its bytes, however many items it carries.
                ack = self._window.count(header, sum(len(f) for f in frames))
                if ack is not None:
                    self._send_now(Channel.SUBSCRIBER, message("SNAPSHOT_ACK", received=ack))
                kind = header["type"]
                if kind == "CHUNK":
                    whole = self._reassembler.chunk(header, payload)
                    if whole is None:
                        return
                    header, payload = whole
                elif payload is not None:
                    payload = bytes(payload)
                elif kind in ("DATABLOCK", "UPDATE") and self._reassembler.header(header):
                    return
                if kind in BATCH_KINDS:
                    # A batch (UPDATES, DATABLOCKS) is its items one by one:
                    # checked whole first, so a malformed one delivers none.
                    msgs = [Message(channel, h, p) for h, p in split_batch(header, payload)]
                else:
                    msgs = [Message(channel, header, payload)]
                if self._room_lag < 0:  # a room whose answer has not arrived yet
                    self._held[-1].extend(msgs)
                    return
                if kind in BATCH_KINDS:
                    # Its items answer no request (they carry no id) and
                    # none is an ERROR: nothing to match, all posted at once.
                    self._post_all(msgs)
                    return
                for msg in msgs:
                    self._on_message(msg)
                return
            if payload is not None:
                payload = bytes(payload)
            self._on_message(Message(channel, header, payload))
        except (ProtocolError, ValueError, KeyError, TypeError) as e:
            err = (
                e
                if isinstance(e, ProtocolError)
                else ProtocolError(f"bad message from the server: {e!r}")
            )
            self._post(LocalError(err))

    def _resume(self, channel: Channel) -> None:
        """Proves a new connection on ``channel`` with the session token,
        now or once AUTH has given one (protocol section 1)."""
        if self._token is None:
            self._resume_due.add(channel)
            return
        self._send_now(channel, message("RESUME", token=self._token.decode("utf-8")))

    def _room_marker(self) -> None:
        """Subscriber channel: the id-less ROOM. ``_room_lag`` counts the
        switch answers read minus the markers read: above 0, subscriber
        messages belong to a room already left; below 0, to a room whose
        answer has not arrived yet (one list of them per room)."""
        self._reassembler.clear()
        self._window = SnapshotWindow()
        if self._room_lag <= 0:
            self._held.append([])
        self._room_lag -= 1

    def _drop_left(self, header: dict[str, Any]) -> None:
        """A subscriber message of the room this client left: a FETCH it
        answers fails."""
        if header["type"] == "CHUNK":
            header = self._reassembler.drop(header.get("transfer")) or header
        rid = header.get("id")
        if header["type"] == "DATABLOCK" and rid is not None:
            with self._requests_lock:
                req = self._requests.get(rid)
                if req is None or req.done.is_set():
                    return
                del self._requests[rid]
            self._abandon([req])

    def _left_room(self, h: dict[str, Any]) -> None:
        """Commands channel, before the answer to JOIN_ROOM or LEAVE_ROOM
        goes to the consumer: the new token, and what the old room will not
        answer fails."""
        with self._requests_lock:  # _publish reads the token under it
            token = h.get("token")
            if isinstance(token, str):
                self._token = token.encode("utf-8")
                if self._heartbeat is not None:
                    self._heartbeat.token = self._token
            # Unanswered pushes: their ACK or ERROR would have come first.
            dead = [
                r for r in self._requests.values() if isinstance(r, Push) and not r.done.is_set()
            ]
            for push in dead:
                del self._requests[push.id]
                if push.transfer is not None:
                    self._push_transfers.pop(push.transfer, None)
        self._switched = True
        for up in set(self._uploads.values()):
            self._finish_upload(up, error=RoomLeft(self.room))
        if dead:
            self._abandon(dead)

    def _entered_room(self) -> None:
        """After the answer went to the consumer: the new room's subscriber
        messages held so far follow it."""
        self._room_lag += 1
        if self._room_lag <= 0:
            for msg in self._held.pop(0):
                self._on_message(msg)

    def _abandon(self, reqs: list[Request]) -> None:
        error = RoomLeft(self.room)
        for req in reqs:
            req.error = error
            req.done.set()
        self._post(Abandoned(reqs))

    def _send_now(self, channel: Channel, header: dict[str, Any]) -> None:
        assert self._transport is not None
        self._transport.enqueue(channel, [pack(header)])

    def _on_message(self, msg: Message) -> None:
        h = msg.header
        kind = h["type"]
        if kind == "AUTH" and h.get("status") in ("LOBBY", "RUNNING"):
            self._on_auth(h)
        elif kind == "ROOM":
            self._left_room(h)
        elif (
            kind == "ERROR"
            and self._switched
            and h.get("code") == "invalid_message"
            and (h.get("refers_to") or {}).get("type") == "SNAPSHOT_ACK"
        ):
            # An acknowledgement of an old room's snapshot that the server
            # received after the switch: nothing to report.
            msg.claimed = True
        up = self._upload_for(h)
        if up is not None:
            self._upload_progress(up, msg)
            msg.claimed = True
        self._match(msg)
        self._post(msg)
        if kind == "ROOM":
            self._entered_room()
        elif kind == "DISCONNECT":
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
            batches=self.batches and h.get("batches") is True,
        )
        self._chunk_bytes = self.auth.chunk_bytes
        self._max_header_bytes = self.auth.max_header_bytes
        self._batches = self.auth.batches
        self._token = self.auth.token.encode("utf-8")
        if self._heartbeat is not None:
            self._heartbeat.token = self._token
            self._heartbeat.watch(self.auth.timeout_ms, self.auth.heartbeat_ms)
        due, self._resume_due = self._resume_due, set()
        for channel in due:
            self._resume(channel)

    def _resolve(self, req: Request, msg: Message) -> None:
        h = msg.header
        if h["type"] == "ERROR":
            req.error = RequestRefused(h.get("code", ""), h.get("message", ""), h.get("refers_to"))
        elif h["type"] == "AUTH" and h.get("status") == "FAILED":
            req.error = AuthenticationError(h.get("code", ""), h.get("reason", ""))
        else:
            req.answer = msg
        req.done.set()

    def _end_session(
        self, reason: str, by_server: bool, error: ReplicationError | None = None
    ) -> None:
        """Socket thread: forget the session and fail what waits for it
        (with ``error``, else :class:`Disconnected`)."""
        if self._token is None and not by_server and error is None:
            return
        self._token = None
        if self._heartbeat is not None:
            self._heartbeat.token = None
            self._heartbeat.unwatch()
        self._room_lag = 0
        self._held.clear()
        self._reassembler.clear()
        self._window = SnapshotWindow()
        error = error or Disconnected(reason, by_server)
        with self._requests_lock:
            # Requests already answered keep their answer (the consumer has
            # yet to take it); only the unanswered ones fail.
            pending = [r for r in self._requests.values() if not r.done.is_set()]
            for req in pending:
                del self._requests[req.id]
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
