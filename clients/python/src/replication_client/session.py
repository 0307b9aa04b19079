"""The Session: one user's connection to a replication-serve server.

Threads and sockets
    The commands, subscriber and publisher sockets belong to one thread at a
    time: the thread that calls :meth:`Session.poll` (and the blocking
    calls), or, after :meth:`Session.start_background`, the background
    thread. Requests from the add-on are queued and sent by that thread. The
    heartbeat socket belongs to its own thread, which answers PINGs whatever
    the add-on does.

Two halves
    The *wire* half runs on the socket thread: it decodes frames, reassembles
    chunks, acknowledges the snapshot window, matches answers to waiting
    requests and drives uploads. Whole messages then go to an inbox. The
    *consumer* half runs in :meth:`Session.poll` on the add-on's thread: it
    updates the replica and the user list, turns messages into events and
    calls the callbacks. So Blender data is only ever touched from the
    thread that polls, and the replica needs no lock.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import zmq

from .codec import pack, unpack
from .consumer import ConsumerHalf
from .errors import (
    Disconnected,
    NotAuthenticated,
    PushIncomplete,
    ReplicationError,
    RequestRefused,
    Timeout,
)
from .events import (
    Event,
    ServerError,
    SessionEnded,
    SnapshotProgress,
)
from .heartbeat import Heartbeat
from .inbox import Message, Push, Request
from .keys import KeyResolver, KnownServers
from .model import (
    AUTO,
    COMMON,
    AuthInfo,
    Datablock,
    FullUpdate,
    PatchUpdate,
    RoomInfo,
    RoomJoined,
    User,
)
from .patch import validate as validate_patch
from .protocol import (
    DEFAULT_CHUNK_BYTES,
    PROTOCOL_VERSION,
    Channel,
    batch_groups,
    batch_message,
    message,
    new_identity,
    payload_messages,
)
from .replica import Replica
from .stream import Reassembler, SnapshotWindow
from .transport import Transport
from .uploads import Upload
from .wire import WireHalf

__all__ = ["Session", "AUTO"]

log = logging.getLogger("replication_client")

E = TypeVar("E", bound=Event)


@dataclass
class _Outgoing:
    """An UPDATE ready to send: its header fields (without ``type`` and
    ``id``), its payload, whether the replica shows it (``mirrored``) and
    whether it is a patch."""

    uuid: str
    fields: dict[str, Any]
    payload: bytes
    mirrored: bool
    patch: bool


class Session(WireHalf, ConsumerHalf):
    """A connection to one server, as one user.

    ``admin_password`` makes the user an ADMIN (pass ``admin=False`` to
    send it anyway as a CLIENT); ``server_password`` is for private servers;
    ``metadata`` is the initial presence map. ``room`` names the room
    :meth:`authenticate` joins (None: the default room), created if it does
    not exist and the user may create rooms; ``room_password`` is that
    room's password (it sets one on a room this login creates).
    ``batches`` asks the server, in AUTH, to forward bursts of updates as
    batches (UPDATES, protocol section 15), and, in SNAPSHOT, to send the
    snapshot's datablocks in batches (DATABLOCKS, section 16); both are
    read exactly as the same updates or datablocks one by one, so turning
    it off changes only the traffic.

    Encryption (protocol section 18): a server that encrypts is asked for
    its key first. ``server_key`` is that key as its admin gave it (40
    characters of Z85); without it the key is trusted on first use and
    pinned for the host and port in ``known_servers`` (default:
    :func:`keys.default_known_servers_file`), and a server there that later
    presents another key is refused with :class:`ChangedServerKey`.
    ``client_key`` is the file of this client's own key pair (made on first
    use; default :func:`keys.default_client_key_file`), which servers with
    a list of admitted keys check. ``encrypt=False`` never asks, for a
    server known not to encrypt.
    Nothing touches the network until :meth:`connect` (called by the
    first request).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5555,
        user: str = "",
        *,
        admin_password: str | None = None,
        server_password: str | None = None,
        admin: bool | None = None,
        metadata: dict[str, Any] | None = None,
        room: str | None = None,
        room_password: str | None = None,
        batches: bool = True,
        server_key: str | bytes | None = None,
        known_servers: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        encrypt: bool = True,
        key_timeout: float = 10.0,
    ) -> None:
        if not user:
            raise ValueError("a user name is required")
        self.host = host
        self.port = port
        self.user = user
        self.admin_password = admin_password
        self.server_password = server_password
        self.is_admin = admin if admin is not None else admin_password is not None
        self.metadata = metadata
        self.initial_room = room
        """The room :meth:`authenticate` asks for (None: the default one)."""
        self.room_password = room_password
        self.server_key = server_key
        self.known_servers = KnownServers(known_servers)
        self.client_key_file = client_key
        self.encrypt = encrypt
        self.key_timeout = key_timeout
        self.batches = batches
        """Whether AUTH asks for batches of updates and SNAPSHOT for
        batches of datablocks; :attr:`auth` tells whether the server
        granted the former (``auth.batches``)."""
        self.auth: AuthInfo | None = None
        """The last successful AUTH reply (None before, and after the end)."""
        self.room: str | None = None
        """The room the client is in, as the server last said (AUTH,
        JOIN_ROOM, LEAVE_ROOM): None before AUTH, after LEAVE_ROOM and after
        the end of the session (and with a server that has no rooms)."""
        self.created = False
        """Whether the client created :attr:`room` (then it uploads the
        scene)."""
        self.room_admin = False
        """Whether the client is an admin of :attr:`room` (a server admin,
        or the room's creator)."""
        self.users: tuple[User, ...] = ()
        """The room's users: the last CLIENTS_STATE, each PRESENCE since
        applied to it."""
        self._replica = Replica()
        self._ids = itertools.count(1)
        self._transfers = itertools.count(1)
        self._identity = new_identity()
        self._ctx: zmq.Context | None = None
        self._transport: Transport | None = None
        self._heartbeat: Heartbeat | None = None
        self._keys: KeyResolver | None = None
        self._key_failed = False
        # wire half (socket thread)
        self._token: bytes | None = None
        self._chunk_bytes = DEFAULT_CHUNK_BYTES
        self._max_header_bytes = DEFAULT_CHUNK_BYTES
        self._batches = False  # the server reads and sends UPDATES
        self._requests: dict[int, Request] = {}
        self._requests_lock = threading.Lock()
        self._push_transfers: dict[int, Push] = {}  # transfer -> chunked push
        self._uploads: dict[int, Upload] = {}
        self._reassembler = Reassembler()
        self._window = SnapshotWindow()
        self._silence: float | None = None
        # Channels whose new connection the server asked to prove before
        # AUTH gave a token.
        self._resume_due: set[Channel] = set()
        # Room switches answered minus subscriber markers read (see wire.py),
        # the new rooms' subscriber messages held until their answer, and
        # whether a switch happened (ERRORs about old acknowledgements).
        self._room_lag = 0
        self._held: list[list[Message]] = []
        self._switched = False
        # consumer half (polling thread)
        self._inbox: deque[Any] = deque()
        self._inbox_cv = threading.Condition()
        self._callbacks: list[tuple[type[Event], Callable[[Any], None]]] = []
        self._dispatching = False
        self._internal_fetches: dict[int, str] = {}
        # Own UPDATEs whose ACK or ERROR has not been consumed yet, by id.
        self._pushes: dict[int, Push] = {}
        # uuid -> revision a FETCH under way must reach (see _acknowledged).
        self._fetch_floor: dict[str, int] = {}
        # uuid -> revision of a FETCH answer that came while own updates of
        # it were unanswered (-1 once one of them proved newer).
        self._answered_before_acks: dict[str, int] = {}
        self._subscribed = False
        self._synced = False
        self._snapshot_total = 0
        self._snapshot_done = 0
        self.ended: SessionEnded | None = None
        """Set when the session ends; cleared by a new AUTH."""
        # background mode
        self._bg: threading.Thread | None = None
        self._bg_stop = threading.Event()
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    def connect(self) -> None:
        """Opens the four sockets and starts the heartbeat thread. ZeroMQ
        connects in the background, so this never waits for the server."""
        if self._ctx is not None:
            return
        if self._closed:
            raise NotAuthenticated("the session is closed; create a new Session")
        self._ctx = zmq.Context()
        if self.encrypt:
            self._keys = KeyResolver(
                self._ctx,
                self.host,
                self.port,
                server_key=self.server_key,
                known_servers=self.known_servers,
                client_key=self.client_key_file,
                timeout=self.key_timeout,
            )
            self._keys.start()
        self._transport = Transport(self._ctx, self.host, self.port, self._identity)
        if self._keys is None:
            self._transport.open(None)
        self._heartbeat = Heartbeat(
            self._ctx,
            f"tcp://{self.host}:{self.port + Channel.HEARTBEAT}",
            self._identity,
            self._on_silence,
            self._keys,
        )
        self._heartbeat.start_and_wait()

    def close(self) -> None:
        """Stops the threads and closes the sockets (without DISCONNECT:
        see :meth:`leave`). Messages already queued for the publisher get
        up to a second to leave. A closed session stays closed: :meth:`poll`
        returns nothing and requests raise."""
        self._closed = True
        self.stop_background()
        if self._keys is not None:
            self._keys.stop()
        stuck = False
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat.join(2.0)
            stuck = self._heartbeat.is_alive()
            self._heartbeat = None
        if self._transport is not None:
            self._transport.flush()
            self._transport.close()
            self._transport = None
        if self._ctx is not None:
            if stuck:  # term() would wait for its socket forever
                self._ctx.destroy(linger=0)
            else:
                self._ctx.term()
            self._ctx = None

    def __enter__(self) -> Session:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_background(self) -> None:
        """Moves socket work to a background thread: input is read, chunks
        joined and the snapshot acknowledged even while the add-on does not
        poll. Events still reach the add-on only through :meth:`poll`, on its
        own thread."""
        self.connect()
        if self._bg is not None:
            return
        self._bg_stop.clear()
        self._bg = threading.Thread(target=self._bg_loop, name="replication-io", daemon=True)
        self._bg.start()

    def stop_background(self) -> None:
        """Returns socket work to the thread that calls :meth:`poll`."""
        if self._bg is None:
            return
        self._bg_stop.set()
        if self._transport is not None:
            self._transport.wakeup()
        self._bg.join(5.0)
        self._bg = None

    @property
    def encrypted(self) -> bool:
        """Whether the connection is encrypted (known once the server
        answered SERVER_KEY)."""
        return self._keys is not None and self._keys.keys is not None

    @property
    def server_fingerprint(self) -> str | None:
        """The fingerprint of the server's key, once known; compare it with
        the one the server's admin reads you."""
        keys = self._keys.keys if self._keys is not None else None
        return keys.fingerprint if keys is not None else None

    @property
    def answer_pings(self) -> bool:
        """Whether PINGs are answered (on by default; tests turn it off to
        play a client that stopped responding)."""
        return self._heartbeat is None or self._heartbeat.answer_pings

    @answer_pings.setter
    def answer_pings(self, value: bool) -> None:
        self.connect()
        assert self._heartbeat is not None
        self._heartbeat.answer_pings = value

    @property
    def authenticated(self) -> bool:
        return self._token is not None

    @property
    def blocks(self) -> dict[str, Datablock]:
        """The replica: uuid -> datablock, kept current by :meth:`poll`. Read
        it; do not change it (use push / push_patch)."""
        return self._replica.blocks

    @property
    def synced(self) -> bool:
        """True once the snapshot is complete (or this user's upload ended):
        the replica is the session and live traffic keeps it current."""
        return self._synced

    # ------------------------------------------------------------ events

    def on(self, event_type: type[E], callback: Callable[[E], None] | None = None) -> Any:
        """Calls ``callback(event)`` for every event of ``event_type`` (or a
        subclass; ``Event`` for all), from :meth:`poll`, and returns the
        callback (for :meth:`off`). Without a callback it is a decorator:
        ``@session.on(Updated)``."""
        if callback is None:
            return lambda fn: self.on(event_type, fn)
        self._callbacks.append((event_type, callback))
        return callback

    def off(self, event_type: type[Event], callback: Callable[[Any], None]) -> None:
        self._callbacks = [
            (t, c) for t, c in self._callbacks if not (t is event_type and c is callback)
        ]

    def poll(self, max_seconds: float = 0.0, *, budget: float = 0.1) -> list[Event]:
        """Processes what has arrived and returns the events, after calling
        their callbacks. Waits at most ``max_seconds`` for something to arrive
        (0: never waits), and stops after about ``budget`` seconds of work,
        leaving the rest for the next call, so a timer never stalls the UI."""
        if self._closed:
            return []
        self.connect()
        if self._bg is None:
            self._pump(0.0 if self._inbox else max_seconds, budget)
        elif max_seconds > 0:
            with self._inbox_cv:
                if not self._inbox:
                    self._inbox_cv.wait(max_seconds)
        return self._dispatch(budget)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        """Polls until ``condition()`` is true; raises :class:`Timeout`. For
        scripts and tests, not for timers."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"condition not met within {timeout} s")
            self.poll(min(remaining, 0.05))

    def wait_for(self, match: type[E] | Callable[[Event], bool], timeout: float = 20.0) -> Any:
        """Polls until an event matches (an event class, or a predicate) and
        returns it; other events are dispatched as usual. Raises Timeout."""
        test = (lambda e: isinstance(e, match)) if isinstance(match, type) else match
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            for event in self.poll(min(0.05, max(0.0, remaining))):
                if test(event):
                    return event
            if remaining <= 0:
                raise Timeout(f"no matching event within {timeout} s")

    # ------------------------------------------------------------ requests

    def server_info(self, timeout: float = 10.0) -> dict[str, Any]:
        """SERVER_INFO (allowed before AUTH): state, users, datablocks, ...
        of the default room; ``rooms`` lists every room (as dicts; see
        :meth:`list_rooms`) and ``open_rooms`` tells whether any user may
        create a room (otherwise only admins)."""
        return self._call(self._server_info(True), timeout)

    def server_info_nowait(self) -> int:
        return self._server_info(False).id

    def list_rooms(self, timeout: float = 10.0) -> list[RoomInfo]:
        """The server's rooms, from SERVER_INFO (allowed before AUTH): the
        default room first, then by name."""
        return self._call(self._server_info(True, "rooms"), timeout)

    def list_rooms_nowait(self) -> int:
        """:meth:`list_rooms`; a :class:`Reply` of kind ``"rooms"`` carries
        the list."""
        return self._server_info(False, "rooms").id

    def _server_info(self, blocking: bool, kind: str = "server_info") -> Request:
        self.connect()
        req = self._new_request(kind, blocking)
        self._send(Channel.COMMANDS, [[pack(message("SERVER_INFO", id=req.id))]])
        return req

    def authenticate(self, timeout: float = 10.0) -> AuthInfo:
        """AUTH. Returns the session's details (``status`` LOBBY or RUNNING);
        raises :class:`AuthenticationError` with the server's code and reason."""
        return self._call(self._authenticate(True), timeout)

    def authenticate_nowait(self) -> int:
        return self._authenticate(False).id

    def _authenticate(self, blocking: bool) -> Request:
        self.connect()
        req = self._new_request("auth", blocking)
        header = message(
            "AUTH",
            id=req.id,
            user=self.user,
            role="ADMIN" if self.is_admin else "CLIENT",
            admin_password=self.admin_password if self.is_admin else None,
            server_password=self.server_password,
            protocol_version=PROTOCOL_VERSION,
            metadata=self.metadata,
            room=self.initial_room,
            room_password=self.room_password,
            batches=True if self.batches else None,
        )
        self._send(Channel.COMMANDS, [[pack(header)]])
        return req

    # ------------------------------------------------------------ rooms

    def join_room(
        self,
        room: str,
        password: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> RoomJoined:
        """JOIN_ROOM: leaves the current room (the server releases your
        locks there) for ``room``, which is created when it does not exist
        and you may create rooms (then you are its admin and it waits for
        your upload). ``password`` is the room's (it sets one on a room you
        create); ``metadata`` is your presence there (default: the
        session's initial ``metadata``).

        The server checks everything first: a refusal raises
        :class:`RequestRefused` (``unknown_room``, ``wrong_room_password``,
        ``name_taken``, ``session_full``, ``limit_exceeded``,
        ``invalid_message`` when already in that room) and leaves you where
        you were. On success the replica is empty and :attr:`synced` false:
        call :meth:`download` (or :meth:`upload`, for a room you created)
        as after AUTH. Nothing the old room still sends is applied.

        Before sending, it waits until the server has applied (or refused)
        your pushes (:meth:`wait_applied`): once you have switched, the
        server drops those still on their way (they never reach the new
        room)."""
        deadline = time.monotonic() + timeout
        self.wait_applied(timeout=timeout)
        req = self._join_room(room, password, metadata, True)
        return self._call(req, max(0.0, deadline - time.monotonic()))

    def join_room_nowait(
        self,
        room: str,
        password: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """:meth:`join_room` without waiting: a :class:`Reply` of kind
        ``"join_room"`` (result a :class:`RoomJoined`) or a
        :class:`RequestFailed` answers; a :class:`RoomChanged` event comes
        with the Reply. It does not wait for your pushes: those the server
        has not applied when it switches are dropped and fail with
        :class:`RoomLeft`; call it once :meth:`pending_pushes` is empty to
        keep them."""
        return self._join_room(room, password, metadata, False).id

    def _join_room(
        self,
        room: str,
        password: str | None,
        metadata: dict[str, Any] | None,
        blocking: bool,
    ) -> Request:
        self._require_session()
        req = self._new_request("join_room", blocking)
        header = message(
            "JOIN_ROOM",
            id=req.id,
            room=room,
            room_password=password,
            metadata=metadata if metadata is not None else self.metadata,
        )
        self._send(Channel.COMMANDS, [[pack(header)]])
        return req

    def leave_room(self, timeout: float = 10.0) -> None:
        """LEAVE_ROOM: leaves the current room (your locks there are
        released) and stays connected. The replica is emptied. Until
        :meth:`join_room`, requests that need a room are refused with
        ``not_in_room``; :meth:`server_info`, :meth:`list_rooms`,
        :meth:`join_room` and :meth:`leave` still work. Waits for your
        pushes first, as :meth:`join_room` does."""
        deadline = time.monotonic() + timeout
        self.wait_applied(timeout=timeout)
        self._call(self._leave_room(True), max(0.0, deadline - time.monotonic()))

    def leave_room_nowait(self) -> int:
        """:meth:`leave_room` without waiting: a :class:`Reply` of kind
        ``"leave_room"`` (result None) or a :class:`RequestFailed`. Your
        pushes are not waited for, as with :meth:`join_room_nowait`."""
        return self._leave_room(False).id

    def _leave_room(self, blocking: bool) -> Request:
        self._require_session()
        req = self._new_request("leave_room", blocking)
        self._send(Channel.COMMANDS, [[pack(message("LEAVE_ROOM", id=req.id))]])
        return req

    def set_keep_open(self, keep_open: bool, timeout: float = 10.0) -> dict[str, Any]:
        """ROOM_SETTINGS (admins of the room): whether the current room stays
        when its last user leaves (otherwise it is closed and its data
        removed). Returns the reply (``room``, ``keep_open``); raises
        :class:`RequestRefused` (``not_admin``, ``not_in_room``)."""
        return self._call(self._room_settings(keep_open, True), timeout)

    def set_keep_open_nowait(self, keep_open: bool) -> int:
        return self._room_settings(keep_open, False).id

    def _room_settings(self, keep_open: bool, blocking: bool) -> Request:
        self._require_session()
        req = self._new_request("room_settings", blocking)
        header = message("ROOM_SETTINGS", id=req.id, keep_open=bool(keep_open))
        self._send(Channel.COMMANDS, [[pack(header)]])
        return req

    def upload(self, blocks: Iterable[Datablock], timeout: float = 60.0) -> int:
        """Uploads the initial scene (admins, session WAITING): INIT, one SET
        per datablock, END. Returns the number of datablocks the session
        holds. Raises :class:`RequestRefused` if INIT is rejected, and
        :class:`UploadIncomplete` if some datablocks were refused."""
        up = self._start_upload(blocks, blocking=True)
        if not self._wait(up.done, timeout):
            raise Timeout(f"upload not finished within {timeout} s")
        self._dispatch(None)
        return up.result()

    def upload_nowait(self, blocks: Iterable[Datablock]) -> int:
        """Starts an upload; an :class:`UploadDone` event reports the end."""
        return self._start_upload(blocks, blocking=False).id

    def _start_upload(self, blocks: Iterable[Datablock], blocking: bool) -> Upload:
        self._require_session()
        up = Upload(next(self._ids), list(blocks), blocking, self.user)
        for block in up.blocks:
            set_id = next(self._ids)
            header = message(
                "SERVER_SNAPSHOT",
                id=set_id,
                step="SET",
                uuid=block.uuid,
                type_id=block.type_id,
                owner=block.owner,
                deps=list(block.deps) if block.deps else None,
            )
            transfer = next(self._transfers)
            payload = pack(block.data)
            msgs = payload_messages(header, payload, self._chunk_bytes, transfer)
            up.add_set(set_id, block.uuid, payload, transfer if len(msgs) > 1 else None, msgs)
        up.end_id = next(self._ids)
        for rid in up.ids():
            self._uploads[rid] = up
        self._send(Channel.COMMANDS, [[pack(message("SERVER_SNAPSHOT", id=up.id, step="INIT"))]])
        return up

    def subscribe(self, window: int | None = None) -> None:
        """SNAPSHOT: asks for the scene, then live traffic. Send it right
        after AUTH, even in the lobby: the download starts when the upload
        ends. Progress arrives as events; :attr:`synced` turns true at the end.
        ``window`` asks for a smaller window in messages than the server's.
        With :attr:`batches`, the datablocks may come several in one
        message (DATABLOCKS); each still arrives as its own event, in the
        same order."""
        self._require_session()
        if self._subscribed:
            return
        self._subscribed = True
        header = message("SNAPSHOT", window=window, batches=True if self.batches else None)
        self._send(Channel.SUBSCRIBER, [[pack(header)]])

    def download(
        self,
        timeout: float = 60.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Datablock]:
        """Subscribes and polls until the snapshot is complete, calling
        ``progress(done, total)`` per datablock. Returns the replica. Raises
        :class:`RequestRefused` if the server refuses the SNAPSHOT (for
        example ``not_in_room`` after :meth:`leave_room`)."""
        self.subscribe()
        cb = None
        if progress is not None:
            cb = self.on(SnapshotProgress, lambda e: progress(e.done, e.total))
        try:
            deadline = time.monotonic() + timeout
            while not self._synced:
                if self.ended is not None:
                    raise self.ended.error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Timeout(f"download not finished within {timeout} s")
                for event in self.poll(min(remaining, 0.05), budget=1.0):
                    if isinstance(event, ServerError) and event.refers_to.get("type") == "SNAPSHOT":
                        self._subscribed = False
                        raise event.error
        finally:
            if cb is not None:
                self.off(SnapshotProgress, cb)
        return self.blocks

    def push(
        self,
        uuid: str,
        data: Any,
        *,
        type_id: str | None = None,
        owner: str | None = None,
        deps: Iterable[str] | None = None,
        base_revision: int | None = None,
    ) -> int:
        """UPDATE with the datablock's full data: creates it (``type_id``
        required; ``owner`` defaults to you, or ``COMMON``) or replaces it.
        The replica is changed at once. Returns the UPDATE's request id at
        once: the server's ACK arrives as a :class:`Reply` (kind
        ``"update"``, result the new revision), a refusal as a
        :class:`ServerError` whose ``request_id`` is this id (the replica
        then fetches the datablock again). :meth:`push_confirmed` waits."""
        update = FullUpdate(uuid, data, type_id, owner, deps, base_revision)
        return self._push_many([update], False)[0].id

    def push_confirmed(
        self,
        uuid: str,
        data: Any,
        *,
        type_id: str | None = None,
        owner: str | None = None,
        deps: Iterable[str] | None = None,
        base_revision: int | None = None,
        timeout: float = 10.0,
    ) -> int:
        """:meth:`push`, then waits for the ACK and returns the datablock's
        revision after the update. Raises :class:`RequestRefused` with the
        server's code (``not_owner``, ``stale_revision``, ...)."""
        update = FullUpdate(uuid, data, type_id, owner, deps, base_revision)
        return self._confirmed(self._push_many([update], True)[0], timeout)

    def push_patch(
        self,
        uuid: str,
        ops: Iterable[dict[str, Any]],
        *,
        base_revision: int | None = AUTO,
        deps: Iterable[str] | None = None,
        check: bool = True,
    ) -> int:
        """UPDATE with a patch (see :mod:`replication_client.patch`). By
        default it is conditional on the replica's revision, so it is never
        applied to a state it was not computed for. It is applied to the
        replica first: if it does not apply there, :class:`PatchError` is
        raised and nothing is sent. ``check=False`` sends it as given,
        unvalidated and without touching the replica (for tools and tests;
        the replica fetches the datablock once the server has applied it).
        Returns the request id at once, as :meth:`push` does;
        :meth:`push_patch_confirmed` waits."""
        update = PatchUpdate(uuid, ops, base_revision, deps, check)
        return self._push_many([update], False)[0].id

    def push_patch_confirmed(
        self,
        uuid: str,
        ops: Iterable[dict[str, Any]],
        *,
        base_revision: int | None = AUTO,
        deps: Iterable[str] | None = None,
        check: bool = True,
        timeout: float = 10.0,
    ) -> int:
        """:meth:`push_patch`, then waits for the ACK and returns the
        datablock's revision after the patch. Raises :class:`RequestRefused`
        (``stale_revision``, ``patch_failed``, ...)."""
        update = PatchUpdate(uuid, ops, base_revision, deps, check)
        return self._confirmed(self._push_many([update], True)[0], timeout)

    def push_many(self, updates: Iterable[FullUpdate | PatchUpdate]) -> list[int]:
        """Several updates at once, in order: each :class:`FullUpdate` is
        what :meth:`push` sends, each :class:`PatchUpdate` what
        :meth:`push_patch` sends, with the same effect on the replica and
        its own request id. Returns the ids, in order, at once; each update
        is then answered on its own, as a push is (a :class:`Reply` or a
        :class:`ServerError` with its id), and a refused one does not stop
        the others. :meth:`push_many_confirmed` waits.

        When the server granted batches (``auth.batches``), the updates
        travel together as UPDATES messages (protocol section 15), as many
        as their number (at most 1,024 each), ``chunk_bytes`` and
        ``max_header_bytes`` require; an update whose payload is larger
        than ``chunk_bytes`` goes alone, chunked. Otherwise each goes as a
        single UPDATE. The server applies them in order either way, so a
        patch may follow another update of the same datablock: its
        ``base_revision=AUTO`` is the revision that update makes.

        All or nothing on this side: if a patch does not apply to the
        replica (:class:`PatchError`) or data cannot be encoded, nothing is
        sent and the replica is left as it was."""
        return [push.id for push in self._push_many(updates, False)]

    def push_many_confirmed(
        self, updates: Iterable[FullUpdate | PatchUpdate], *, timeout: float = 10.0
    ) -> list[int]:
        """:meth:`push_many`, then waits for every ACK and returns each
        update's revision after it, in order. Raises
        :class:`PushIncomplete` when some were refused (the others were
        applied; no event repeats the refusals), and :class:`Timeout` when
        some are not answered within ``timeout`` (those are still tracked,
        and their answers arrive as events)."""
        pushes = self._push_many(updates, True)
        self._await_pushes(pushes, timeout)
        for push in pushes:
            if push.error is not None and not isinstance(push.error, RequestRefused):
                raise push.error  # Disconnected, RoomLeft: it will never be answered
        errors = [push.error for push in pushes if isinstance(push.error, RequestRefused)]
        revisions = [
            None if push.answer is None else int(push.answer.header["revision"]) for push in pushes
        ]
        if errors:
            raise PushIncomplete(revisions, errors)
        return [revision for revision in revisions if revision is not None]

    def _push_many(self, updates: Iterable[FullUpdate | PatchUpdate], blocking: bool) -> list[Push]:
        """Shows the updates in the replica, in order, then sends them. If
        one cannot be prepared, or they cannot be sent, the replica is put
        back as it was and nothing is sent."""
        self._require_session()
        undo: list[Callable[[], object]] = []
        try:
            outgoing = [self._stage(update, undo) for update in updates]
            return self._publish(outgoing, blocking) if outgoing else []
        except BaseException:
            for step in reversed(undo):
                step()
            raise

    def _stage(
        self, update: FullUpdate | PatchUpdate, undo: list[Callable[[], object]]
    ) -> _Outgoing:
        """Prepares one update and applies it to the replica, as push and
        push_patch always have; ``undo`` receives the steps that revert
        that, to run in reverse order."""
        if not isinstance(update, (FullUpdate, PatchUpdate)):
            raise TypeError(f"not a FullUpdate or a PatchUpdate: {update!r:.200}")
        uuid = update.uuid
        deps_list = list(update.deps) if update.deps is not None else None
        if isinstance(update, FullUpdate):
            payload = pack(update.data)
            # The replica mirrors it when it has a copy, or can create one.
            mirrored = uuid in self._replica.blocks or update.type_id is not None
            fields = dict(
                uuid=uuid,
                type_id=update.type_id,
                owner=update.owner,
                deps=deps_list,
                base_revision=update.base_revision,
            )
            self._keep(uuid, undo)
            self._replica.pushed(
                uuid, unpack(payload), update.type_id, update.owner, deps_list, self.user
            )
            return _Outgoing(uuid, fields, payload, mirrored, patch=False)
        payload = pack(list(update.ops))
        local = self._replica.blocks.get(uuid)
        base_revision = update.base_revision
        if base_revision is AUTO:
            base_revision = local.revision if local is not None and local.revision else None
        fields = dict(uuid=uuid, patch=True, base_revision=base_revision, deps=deps_list)
        if not update.check:
            return _Outgoing(uuid, fields, payload, mirrored=False, patch=True)
        normalized = unpack(payload)
        validate_patch(normalized)
        if local is not None:
            self._keep(uuid, undo)
            self._replica.patch_preview(uuid, normalized, undo)
            local.revision += 1
            if deps_list is not None:
                local.deps = deps_list
        return _Outgoing(uuid, fields, payload, mirrored=local is not None, patch=True)

    def _keep(self, uuid: str, undo: list[Callable[[], object]]) -> None:
        """Adds to ``undo`` the step that puts the replica's ``uuid`` back
        as it is now (its contents are put back by the patches' own steps)."""
        blocks = self._replica.blocks
        block = blocks.get(uuid)
        if block is None:
            undo.append(lambda: blocks.pop(uuid, None))
            return
        saved = (block.data, block.revision, block.deps)

        def restore() -> None:
            blocks[uuid] = block
            block.data, block.revision, block.deps = saved

        undo.append(restore)

    def _publish(self, outgoing: list[_Outgoing], blocking: bool) -> list[Push]:
        """Sends UPDATEs, each with a request id, tracked until its ACK or
        ERROR: together in UPDATES when the server reads them, otherwise
        one by one. The token is read under the lock the wire half holds to
        change it on a room switch, so a push that carries the old token is
        tracked by then: answered before the switch's answer, or failed by
        it."""
        headers = [message("UPDATE", id=next(self._ids), **out.fields) for out in outgoing]
        if self._batches:
            updates = [(h, out.payload) for h, out in zip(headers, outgoing, strict=True)]
            groups = batch_groups(updates, self._chunk_bytes, self._max_header_bytes)
        else:
            groups = [[i] for i in range(len(outgoing))]
        pushes: list[Push] = []
        chunked: dict[int, Push] = {}  # transfer -> push
        msgs: list[list[bytes]] = []
        for group in groups:
            transfer = None
            if len(group) == 1:
                i = group[0]
                transfer = next(self._transfers)
                parts = payload_messages(
                    headers[i], outgoing[i].payload, self._chunk_bytes, transfer
                )
                if len(parts) == 1:
                    transfer = None
                msgs.extend(parts)
            else:
                msgs.append(batch_message([(headers[i], outgoing[i].payload) for i in group]))
            for i in group:
                out = outgoing[i]
                push = Push(
                    headers[i]["id"],
                    blocking,
                    out.uuid,
                    transfer,
                    mirrored=out.mirrored,
                    patch=out.patch,
                )
                pushes.append(push)
                if transfer is not None:
                    chunked[transfer] = push
        with self._requests_lock:
            token = self._token
            if token is None:
                raise NotAuthenticated("the session ended")
            for push in pushes:
                self._requests[push.id] = push
            if chunked:
                self._push_transfers.update(chunked)
                if len(self._push_transfers) > 1000:  # refused ones, kept to match CHUNK ERRORs
                    for t, p in list(self._push_transfers.items()):
                        if p.done.is_set():
                            del self._push_transfers[t]
        for push in pushes:
            self._pushes[push.id] = push
        try:
            self._send(Channel.PUBLISHER, [[token, *m] for m in msgs])
        except BaseException:
            with self._requests_lock:
                for push in pushes:
                    self._pushes.pop(push.id, None)
                    self._requests.pop(push.id, None)
                    if push.transfer is not None:
                        self._push_transfers.pop(push.transfer, None)
            raise
        return pushes

    def _confirmed(self, push: Push, timeout: float) -> int:
        """Waits for a blocking push's ACK and returns its revision."""
        self._await_pushes([push], timeout)
        if push.error is not None:
            raise push.error
        assert push.answer is not None
        return int(push.answer.header["revision"])

    def _await_pushes(self, pushes: list[Push], timeout: float) -> None:
        """Waits until blocking pushes are answered (ACK, ERROR or the end),
        then dispatches what arrived. On :class:`Timeout` the unanswered
        ones become non-blocking: still tracked (wait_applied waits for
        them), answered by events."""
        deadline = time.monotonic() + timeout
        for push in pushes:
            if self._wait(push.done, max(0.0, deadline - time.monotonic())):
                continue
            with self._requests_lock:
                late = [p for p in pushes if not p.done.is_set()]
                for p in late:
                    p.blocking = False
            if late:
                what = f"the update of {late[0].uuid}"
                if len(late) > 1:
                    what = f"{len(late)} updates ({what}, ...)"
                raise Timeout(f"no ACK for {what} within {timeout} s")
            break
        self._dispatch(None)

    def lock(self, uuids: Iterable[str], timeout: float = 10.0) -> dict[str, Any]:
        """RIGHT to yourself (allowed while the datablocks are COMMON)."""
        return self.change_owner(uuids, self.user, timeout=timeout)

    def lock_nowait(self, uuids: Iterable[str]) -> int:
        return self.change_owner_nowait(uuids, self.user)

    def unlock(self, uuids: Iterable[str], timeout: float = 10.0) -> dict[str, Any]:
        """RIGHT to COMMON."""
        return self.change_owner(uuids, COMMON, timeout=timeout)

    def unlock_nowait(self, uuids: Iterable[str]) -> int:
        return self.change_owner_nowait(uuids, COMMON)

    def change_owner(
        self, uuids: Iterable[str], owner: str, force: bool = False, timeout: float = 10.0
    ) -> dict[str, Any]:
        """RIGHT: gives datablocks to ``owner`` (all or nothing). Admins may
        ``force``. Raises :class:`RequestRefused` (``not_owner``, ...).

        Your own updates of these datablocks are confirmed applied first
        (:meth:`wait_applied`), so that a release never overtakes them."""
        uuids = list(uuids)
        self.wait_applied(uuids, timeout)
        return self._call(self._right(uuids, owner, force, True), timeout)

    def change_owner_nowait(self, uuids: Iterable[str], owner: str, force: bool = False) -> int:
        return self._right(list(uuids), owner, force, False).id

    def _right(self, uuids: list[str], owner: str, force: bool, blocking: bool) -> Request:
        self._require_session()
        req = self._new_request("right", blocking)
        header = message(
            "RIGHT", id=req.id, uuids=uuids, owner=owner, force=True if force else None
        )
        self._send(Channel.COMMANDS, [[pack(header)]])
        return req

    def delete(self, uuid: str, force: bool = False, timeout: float = 10.0) -> dict[str, Any]:
        """DELETE one datablock. Your own updates of it are acknowledged first
        (:meth:`wait_applied`), so that the DELETE never overtakes them."""
        self.wait_applied([uuid], timeout)
        return self._call(self._delete(uuid, force, True), timeout)

    def delete_nowait(self, uuid: str, force: bool = False) -> int:
        return self._delete(uuid, force, False).id

    def _delete(self, uuid: str, force: bool, blocking: bool) -> Request:
        self._require_session()
        req = self._new_request("delete", blocking)
        header = message("DELETE", id=req.id, uuid=uuid, force=True if force else None)
        self._send(Channel.COMMANDS, [[pack(header)]])
        return req

    def fetch(self, uuid: str, timeout: float = 10.0) -> Datablock:
        """FETCH: the server's current state of a datablock; the replica is
        refreshed with it and the replica's copy is returned."""
        return self._call(self._fetch(uuid, True), timeout)

    def fetch_nowait(self, uuid: str) -> int:
        return self._fetch(uuid, False).id

    def _fetch(self, uuid: str, blocking: bool) -> Request:
        self._require_session()
        req = self._new_request("fetch", blocking)
        self._send(Channel.SUBSCRIBER, [[pack(message("FETCH", id=req.id, uuid=uuid))]])
        return req

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        """UPDATE_USER_METADATA: merges into your presence map (a None value
        removes a key). Everyone sees it in the next CLIENTS_STATE; a refusal
        arrives as a :class:`ServerError` event."""
        self._require_session()
        header = message("UPDATE_USER_METADATA", id=next(self._ids), metadata=metadata)
        self._send(Channel.COMMANDS, [[pack(header)]])

    def kick(self, user: str, reason: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """KICK (admins only)."""
        return self._call(self._kick(user, reason, True), timeout)

    def kick_nowait(self, user: str, reason: str | None = None) -> int:
        return self._kick(user, reason, False).id

    def _kick(self, user: str, reason: str | None, blocking: bool) -> Request:
        self._require_session()
        req = self._new_request("kick", blocking)
        self._send(Channel.COMMANDS, [[pack(message("KICK", id=req.id, user=user, reason=reason))]])
        return req

    def wait_applied(self, uuids: Iterable[str] | None = None, timeout: float = 10.0) -> None:
        """Waits until every UPDATE you have sent (of ``uuids``, or all) is
        acknowledged or refused by the server.

        UPDATEs travel on the publisher channel, which has no order with the
        commands channel: a RIGHT, DELETE or DISCONNECT sent right after an
        UPDATE may be processed before it. Each push carries a request id and
        the server answers it with an ACK once applied, so call this before
        anything that must come after your edits (``change_owner``, ``lock``,
        ``unlock``, ``delete`` and ``leave`` do it themselves). A refused push
        counts as done: its :class:`ServerError` has been (or will be)
        delivered. Raises :class:`Timeout`, or :class:`Disconnected` when
        the session ended before the server answered. Costs nothing when no
        push is outstanding; :meth:`pending_pushes` is the non-blocking
        check."""
        wanted = self._outstanding(uuids)
        if not wanted:
            return
        deadline = time.monotonic() + timeout
        for push in wanted:
            if not self._wait(push.done, max(0.0, deadline - time.monotonic())):
                raise Timeout(
                    f"update {push.id} of {push.uuid} not acknowledged within {timeout} s"
                )
        self._dispatch(None)
        for push in wanted:
            if isinstance(push.error, Disconnected):
                raise push.error

    def pending_pushes(self, uuids: Iterable[str] | None = None) -> list[int]:
        """The request ids of your pushes (of ``uuids``, or all) whose ACK or
        refusal :meth:`poll` has not delivered yet, oldest first. Empty
        means the server has applied (or refused) everything you sent: the
        non-blocking form of :meth:`wait_applied`, for timers."""
        return [push.id for push in self._outstanding(uuids)]

    def _outstanding(self, uuids: Iterable[str] | None) -> list[Push]:
        if uuids is None:
            return list(self._pushes.values())
        wanted = set(uuids)
        return [push for push in self._pushes.values() if push.uuid in wanted]

    def list_users(self) -> tuple[User, ...]:
        """The users of the latest CLIENTS_STATE (it arrives about every
        heartbeat, and shortly after any change)."""
        return self.users

    def leave(self, reason: str = "leaving", timeout: float = 2.0) -> None:
        """DISCONNECT and close. Your updates not yet acknowledged are waited
        for first (up to ``timeout``, :meth:`wait_applied`): the server
        forgets the token on DISCONNECT and would drop those still on their
        way. Then waits (up to ``timeout``) for the server's goodbye."""
        if self._token is not None and self._transport is not None:
            try:
                self.wait_applied(timeout=timeout)
            except (Timeout, ReplicationError) as e:
                log.warning("leaving with updates not acknowledged: %s", e)
            self._send(Channel.COMMANDS, [[pack(message("DISCONNECT", reason=reason))]])
            try:
                self.wait_until(lambda: self.ended is not None, timeout)
            except Timeout:
                log.warning("no goodbye from the server within %s s", timeout)
        self.close()

    # ------------------------------------------------------------ plumbing

    def _require_session(self) -> bytes:
        token = self._token
        if token is None:
            raise NotAuthenticated("authenticate first")
        return token

    def _new_request(self, kind: str, blocking: bool) -> Request:
        req = Request(next(self._ids), kind, blocking)
        with self._requests_lock:
            self._requests[req.id] = req
        return req

    def _send(self, channel: Channel, msgs: list[list[bytes]]) -> None:
        transport = self._transport
        if transport is None:
            raise NotAuthenticated("the session is closed")
        for frames in msgs:
            transport.enqueue(channel, frames)
        if self._bg is None:
            transport.flush()

    def _wait(self, done: threading.Event, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._bg is not None:
                done.wait(min(remaining, 0.1))
            else:
                self._pump(min(remaining, 0.05), 0.5)
        return True

    def _call(self, req: Request, timeout: float) -> Any:
        """Waits for a blocking request, then dispatches what arrived so the
        replica reflects the answer, and returns its result or raises."""
        try:
            if not self._wait(req.done, timeout):
                raise Timeout(f"no answer to {req.kind} within {timeout} s")
        finally:
            with self._requests_lock:
                self._requests.pop(req.id, None)
        self._dispatch(None)
        if req.error is not None:
            raise req.error
        assert req.answer is not None
        return self._result(req, req.answer)
