"""``session``: the add-on's one session, its states and its callbacks.

The add-on calls :meth:`Session.connect` (join) or :meth:`Session.host`
(start a local server and join it as its admin), then calls
:meth:`Session.listen` from a timer every few milliseconds, and reads
``state``, ``state_progress`` and ``online_users`` to draw its panels. It
registers two callbacks: ``on_connection`` once the scene is there (the
upload accepted, or the download complete) and ``on_exit(reason)`` when the
session ends, for any reason.

States, as the add-on shows them::

    INITIAL -> CONNECTING -> AUTH -> LOBBY -> SYNCING ---> ACTIVE
                                         \\-> SRV_SYNC -/    |
    any -> QUITTING -> INITIAL  (on_exit with the reason) <-/

LOBBY is a logged-in user whose session has no scene yet; an admin
uploads theirs from there (``init``; a host does it at once), everyone else
waits and downloads it when it arrives.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from . import porcelain
from .constants import (
    ADDED,
    CONNECTING,
    FETCHED,
    STATE_ACTIVE,
    STATE_AUTH,
    STATE_INITIAL,
    STATE_LOBBY,
    STATE_QUITTING,
    STATE_SRV_SYNC,
    STATE_SYNCING,
)
from .exception import ContextError, DataError, StateError
from .objects import Node
from .repository import Remote, Repository
from .serve.link import Link, mark_uploaded
from .serve.local_server import LocalServer

__all__ = ["Session", "session"]

log = logging.getLogger("replication")

LISTEN_BUDGET = 0.02
"""Seconds of work one ``listen()`` may do: the add-on calls it from a timer
between frames, and a big download is spread over many calls."""


class Session:
    def __init__(self) -> None:
        self.repository: Repository | None = None
        self.remote: Remote | None = None
        self.callbacks: dict[str, Callable[..., Any]] = {}
        self._state = STATE_INITIAL
        self._state_progress = {"current": -1, "total": -1}
        self._link: Link | None = None
        self._server: LocalServer | None = None
        self._auth_deadline = 0.0
        self._timeout_ms = 0
        self._end_reason: str | None = None

    # ------------------------------------------------------------ callbacks

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@session.register("on_connection")``."""

        def func_wrapper(func: Callable[..., Any]) -> Callable[..., Any]:
            self.callbacks[name] = func
            return func

        return func_wrapper

    def call_registered(self, name: str | None = None, **kwargs: Any) -> Any:
        func = self.callbacks.get(name or "")
        if func is None:
            log.info("no function registered for %s", name)
            return None
        return func(**kwargs)

    # ------------------------------------------------------------ the add-on's calls

    def connect(
        self,
        repository: Repository | None = None,
        remote: str = "origin",
        timeout: int = 1000,
        server_password: str | None = None,
        admin_password: str | None = None,
        subprocess_python_args: Any = None,
    ) -> None:
        """Joins the session at the repository's remote ``remote``. Returns
        at once; ``listen`` moves it on."""
        if repository is None or repository.remotes.get(remote) is None:
            raise StateError(f"no remote {remote!r}: call porcelain.remote_add first")
        if self._link is not None:
            raise StateError("already in a session: disconnect first")
        self.repository = repository
        self.remote = repository.remotes[remote]
        if admin_password is not None:
            self.remote.admin_password = admin_password
        if server_password is not None:
            self.remote.server_password = server_password
        self._state_progress = {"current": -1, "total": -1}
        self._end_reason = None
        self._set_state(CONNECTING)
        self._timeout_ms = int(timeout)
        self._link = Link(repository, self.remote, self)
        self.remote.link = self._link
        self._link.start()
        self._auth_deadline = time.monotonic() + max(self._timeout_ms, 1000) / 1000
        self._set_state(STATE_AUTH)

    def host(
        self,
        id: str = "Default",
        repository: Repository | None = None,
        remote: str = "origin",
        timeout: int = 5000,
        server_password: str | None = None,
        admin_password: str | None = None,
        cache_directory: str = "",
        server_log_level: str = "INFO",
        subprocess_python_args: Any = None,
    ) -> None:
        """Starts a replication-serve on the remote's port, then joins it as
        its admin and uploads the repository's nodes (added beforehand with
        ``porcelain.add``). Without an admin password the host still needs
        one to upload and kick: a random one is made for this session."""
        if repository is None or repository.remotes.get(remote) is None:
            raise StateError(f"no remote {remote!r}: call porcelain.remote_add first")
        admin = admin_password or secrets.token_urlsafe(16)
        target = repository.remotes[remote]
        self._server = LocalServer.start(
            target.port, timeout, admin, server_password, cache_directory, server_log_level
        )
        try:
            self.connect(repository, remote, timeout, server_password, admin)
        except Exception:
            self._server.stop()
            self._server = None
            raise

    def init(self) -> None:
        """Uploads the repository's nodes as the session's scene (an admin in
        the lobby; the add-on's "Init" button)."""
        if self._link is None or self.repository is None:
            raise StateError("not connected")
        nodes = self._commit_all()
        if not nodes:
            log.error("nothing to upload: add some data first")
            return
        self._set_state(STATE_SRV_SYNC)
        self._state_progress = {"current": len(nodes), "total": len(nodes)}
        self._link.upload(nodes)

    def disconnect(self, reason: str = "None") -> None:
        """Leaves the session (a user's own edits still on their way are
        waited for, briefly), stops a hosted server, and calls ``on_exit``."""
        if self._state == STATE_QUITTING:
            return
        was_connected = self._link is not None
        self._set_state(STATE_QUITTING)
        log.info("exiting the session: %s", reason)
        link, self._link = self._link, None
        if self.remote is not None:
            self.remote.link = None
        try:
            if link is not None:
                link.close(reason)
        finally:
            if self._server is not None:
                self._server.stop()
                self._server = None
            if was_connected:
                self.call_registered("on_exit", reason=reason)
            self._set_state(STATE_INITIAL)

    def listen(self, timeout: int = 0) -> None:
        """Takes in what the server said, for a bounded time. Called from a
        timer; also ends a login that gets no answer, and a hosted session
        whose server stopped."""
        if self._link is None or self._state in (STATE_INITIAL, STATE_QUITTING):
            return
        self._link.poll(LISTEN_BUDGET)
        if self._end_reason is not None:
            self.disconnect(reason=self._end_reason)
            return
        if self._server is not None:
            stopped = self._server.exited()
            if stopped:
                self.disconnect(reason=stopped)
                return
        if self._state == STATE_AUTH and time.monotonic() > self._auth_deadline:
            assert self.remote is not None
            where, port = self.remote.address, self.remote.port
            self.disconnect(
                reason=f"Connection failed: no answer from {where}:{port} within "
                f"{self._timeout_ms / 1000:g} s (is the server running, and are ports "
                f"{port}-{port + 3} open?)"
            )

    @property
    def state(self) -> int:
        return self._state

    @property
    def state_progress(self) -> dict[str, int]:
        """``{"current": n, "total": m}`` of the download or upload."""
        return self._state_progress

    @property
    def online_users(self) -> dict[str, dict[str, Any]]:
        return self.remote.online_users if self.remote is not None else {}

    # ------------------------------------------------------------ what the link hears

    @property
    def active(self) -> bool:
        return self._state == STATE_ACTIVE

    def on_authenticated(self, status: str) -> None:
        self._set_state(STATE_LOBBY)
        assert self._link is not None
        # Asked for at once, even in the lobby: the download then starts as
        # soon as an admin's upload ends. It changes nothing for an uploader.
        self._link.subscribe()
        if status == "LOBBY" and self._server is not None:
            self.init()

    def on_progress(self, done: int, total: int) -> None:
        if self._state in (STATE_LOBBY, STATE_SYNCING):
            self._set_state(STATE_SYNCING)
            self._state_progress = {"current": done, "total": total}

    def on_synced(self) -> None:
        """The whole scene arrived: it becomes the repository's nodes."""
        if self._link is None or self.repository is None or self._state == STATE_SRV_SYNC:
            return
        graph = self.repository.graph
        for uuid, block in self._link.client.blocks.items():
            graph[uuid] = Node(
                uuid=uuid,
                owner=block.owner,
                data=block.data,
                dependencies=list(block.deps),
                state=FETCHED,
            )
        self._activate()

    def on_uploaded(self, datablocks: int, refused: tuple[Any, ...], error: Any) -> None:
        if self._link is None or self.repository is None:
            return
        if error is not None:
            log.error("the server refused the upload: %s", error)
            self._set_state(STATE_LOBBY)
            return
        for failure in refused:
            log.error("the server refused %s: %s", failure.refers_to.get("uuid"), failure.message)
        refused_uuids = {f.refers_to.get("uuid") for f in refused}
        mark_uploaded(self.repository.graph, self._link.client.blocks, refused_uuids)
        log.info("scene uploaded: %d datablocks", datablocks)
        self._activate()

    def on_ended(self, reason: str) -> None:
        # Heard while the client delivers events: the session is ended by
        # listen() once they are all handled, not from inside the client.
        if self._end_reason is None:
            self._end_reason = reason

    # ------------------------------------------------------------ internals

    def _activate(self) -> None:
        self._set_state(STATE_ACTIVE)
        self.call_registered("on_connection")

    def _set_state(self, state: int) -> None:
        self._state = state
        if self.remote is not None:
            self.remote.connection_status = state

    def _commit_all(self) -> list[Node]:
        """Dumps every node for the upload (committing a node may add nodes
        for datablocks it uses, which are dumped in turn)."""
        assert self.repository is not None
        graph = self.repository.graph
        done: set[str] = set()
        while True:
            todo = [uuid for uuid in list(graph) if uuid not in done]
            if not todo:
                break
            for uuid in todo:
                done.add(uuid)
                node = graph.get(uuid)
                if node is None:
                    continue
                try:
                    porcelain.commit(self.repository, uuid)
                except (ContextError, ReferenceError, DataError) as e:
                    log.error("cannot upload %s: %s", uuid, e)
        return [n for n in graph.values() if n.data is not None and n.state != ADDED]


session = Session()
"""The add-on's session."""
