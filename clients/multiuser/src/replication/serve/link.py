"""The connection to a replication-serve session, through the Python client
(``replication_client``): requests out, and what the server says turned
into changes of the repository's nodes.

Nothing here is pickled: data travels as MessagePack values
(:mod:`serve.values`) and every change as a protocol patch from the state
the server has (:mod:`serve.diffing`), or as the whole data when that is
smaller or when the server refused the patch.

Node data and the client's replica share their values: a node's ``data``
is the very object the replica holds for its datablock, so a scene is kept
once in memory, and a pushed patch is applied to it in place by the
client, exactly as the server applies it.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from typing import Any, Protocol

from replication_client import (
    AUTO,
    COMMON,
    Datablock,
    Deleted,
    Event,
    LocalError,
    OwnerChanged,
    PatchError,
    Reply,
    RequestFailed,
    ServerError,
    ServerKeyError,
    Session,
    SessionEnded,
    SnapshotDone,
    SnapshotProgress,
    Updated,
    UploadDone,
    UsersChanged,
)

from ..constants import ERROR, FETCHED, UP
from ..objects import Node
from .diffing import diff
from .users import online_users
from .values import normalize

__all__ = ["Link", "Listener"]

log = logging.getLogger("replication")

LEAVE_TIMEOUT = 1.0
"""Seconds a user leaving waits for the server to confirm their last edits:
long enough on any network a session is usable on, short enough for a
click."""
_RETRIED_ONE_BY_ONE = ("not_owner", "unknown_datablock")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FULL_AFTER = ("stale_revision", "patch_failed")
_HEADER_OVERHEAD = 1024
"""Bytes of an UPDATE header besides its dependency list: its keys, a uuid
and a type id of at most 128 bytes each, an owner, a revision."""


class Listener(Protocol):
    """What the session (interface.Session) hears from the link."""

    active: bool

    def on_authenticated(self, status: str) -> None: ...
    def on_progress(self, done: int, total: int) -> None: ...
    def on_synced(self) -> None: ...
    def on_uploaded(self, datablocks: int, refused: tuple[Any, ...], error: Any) -> None: ...
    def on_ended(self, reason: str) -> None: ...


class Link:
    def __init__(self, repository: Any, remote: Any, listener: Listener) -> None:
        self.repository = repository
        self.remote = remote
        self.listener = listener
        self.user = repository.username
        self.client = Session(
            remote.address,
            remote.port,
            self.user,
            admin_password=remote.admin_password,
            server_password=remote.server_password or None,
        )
        self.client.on(Event, self._on_event)
        # RIGHTs and DELETEs in the order asked, each sent once the server
        # has acknowledged the pushes of its datablocks: a release must not
        # overtake the edits it follows (the channels have no order).
        self._waiting: deque[tuple[str, list[str], str | None]] = deque()
        self._pushes: dict[int, tuple[str, bool]] = {}  # request id -> (uuid, created)
        self._rights: dict[int, tuple[list[str], str]] = {}
        self._refused_creations: set[str] = set()
        self._logged_in = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connects and sends AUTH; the answer arrives through :meth:`poll`.
        The client's own thread reads the sockets, so a download goes on
        while Blender is busy."""
        self.client.start_background()
        self.client.authenticate_nowait()

    def poll(self, budget: float) -> None:
        """Handles what has arrived (for at most about ``budget`` seconds),
        then sends the RIGHTs and DELETEs whose pushes are acknowledged."""
        self.client.poll(0.0, budget=budget)
        self._send_waiting()

    def close(self, reason: str) -> None:
        if self.client.ended is None and self.client.authenticated:
            self.client.leave(reason, timeout=LEAVE_TIMEOUT)
        else:
            self.client.close()

    # ------------------------------------------------------------ requests

    def subscribe(self) -> None:
        self.client.subscribe()

    def upload(self, nodes: list[Node]) -> None:
        blocks = [
            Datablock(
                node.uuid, _type_id(node), node.data, self._owner(node), list(node.dependencies)
            )
            for node in nodes
            if self._fits(node)
        ]
        self.client.upload_nowait(blocks)

    def push(self, node: Node, force: bool) -> bool:
        """Sends the node's committed data: a patch from the state the
        server has, or the whole data (a new datablock, ``force``, or a
        change the patch cannot express). False when it cannot be sent."""
        block = self.client.blocks.get(node.uuid)
        pending, node.last_commit = node.last_commit, None
        if not self._fits(node):
            return False
        deps = list(node.dependencies)
        if block is None:
            rid = self.client.push(
                node.uuid, node.data, type_id=_type_id(node), owner=self._owner(node), deps=deps
            )
            self._pushes[rid] = (node.uuid, True)
            return True
        new_deps = deps if deps != block.deps else None
        ops = None
        # A patch is computed against ``pending.base``; it is only right for
        # the replica when that is still the replica's own value.
        if not force and pending is not None and pending.base is block.data:
            ops = pending.ops if pending.ops is not None else diff(pending.base, node.data)
        if ops is not None:
            if not ops and new_deps is None:
                return True
            try:
                rid = self.client.push_patch(node.uuid, ops, base_revision=AUTO, deps=new_deps)
                log.debug("pushed %s: a patch of %d operations", _name(node), len(ops))
            except PatchError as e:
                log.debug("patch of %s does not apply locally (%s); sending it whole", node.uuid, e)
            else:
                self._pushes[rid] = (node.uuid, False)
                node.data = block.data  # the replica's value, now patched to the same state
                return True
        rid = self.client.push(node.uuid, node.data, deps=new_deps)
        self._pushes[rid] = (node.uuid, False)
        log.debug("pushed %s whole", _name(node))
        return True

    def change_owner(self, uuids: list[str], owner: str) -> None:
        known = [u for u in dict.fromkeys(uuids) if u in self.client.blocks]
        if known:
            self._waiting.append(("right", known, owner))
            self._send_waiting()

    def delete(self, uuid: str) -> None:
        if uuid in self.client.blocks:
            self._waiting.append(("delete", [uuid], None))
            self._send_waiting()
        else:  # never reached the server: only ours to forget
            _remove_node(self.repository.graph, uuid)

    def kick(self, user: str) -> None:
        self.client.kick_nowait(user)

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        if self.client.authenticated:
            self.client.set_metadata(normalize(metadata))

    def pending(self) -> int:
        """Requests not yet sent or answered: pushes, RIGHTs and DELETEs."""
        return len(self.client.pending_pushes()) + len(self._waiting)

    def _send_waiting(self) -> None:
        while self._waiting and self.client.authenticated:
            kind, uuids, owner = self._waiting[0]
            if self.client.pending_pushes(uuids):
                return
            self._waiting.popleft()
            if kind == "right":
                assert owner is not None
                self._rights[self.client.change_owner_nowait(uuids, owner)] = (uuids, owner)
            else:
                self.client.delete_nowait(uuids[0])

    def _fits(self, node: Node) -> bool:
        """Whether the node's header fits the server's limit. Its dependency
        list travels in the header: a collection of tens of thousands of
        objects may not fit, and the add-on needs every dependency on the
        other side, so such a node is not sent, and says why."""
        auth = self.client.auth
        limit = auth.max_header_bytes if auth is not None else 1 << 20
        size = _HEADER_OVERHEAD + sum(len(d.encode()) + 3 for d in node.dependencies)
        if size <= limit:
            return True
        node.state = ERROR
        log.error(
            "%s uses %d datablocks, more than one datablock's header can list "
            "(%d bytes; the server's max_header_bytes is %d): it is not sent",
            _name(node),
            len(node.dependencies),
            size,
            limit,
        )
        return False

    def _readable(self, message: str) -> str:
        """The server's message with the uuids it names replaced by the
        names artists know the datablocks by."""
        graph = self.repository.graph
        return _UUID.sub(
            lambda m: _name(graph.get(m.group(0))) if m.group(0) in graph else m.group(0), message
        )

    def _owner(self, node: Node) -> str:
        # A new datablock may belong to its creator or to everyone.
        return node.owner if node.owner == self.user else COMMON

    # ------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _reply(self, event: Reply) -> None:
        if event.kind == "auth":
            self._logged_in = True
            self.listener.on_authenticated(event.result.status)
        elif event.kind == "update":
            self._pushes.pop(event.request_id, None)
        elif event.kind == "right":
            self._rights.pop(event.request_id, None)
        elif event.kind == "kick":
            log.info("kicked %s", (event.result or {}).get("user"))

    def _failed(self, event: RequestFailed) -> None:
        error = event.error
        if event.kind == "auth" and isinstance(error, ServerKeyError):
            # A changed or wrong server key, or a client key not admitted:
            # the message says what may be happening and what to do, and
            # the add-on shows it in its dialog.
            self.listener.on_ended(f"Failed to connect: {error}")
        elif event.kind == "auth":
            reason = getattr(error, "reason", None) or str(error)
            self.listener.on_ended(f"Failed to connect, authentication refused: {reason}")
        elif event.kind == "right":
            uuids, owner = self._rights.pop(event.request_id, ([], COMMON))
            code = getattr(error, "code", "")
            if code in _RETRIED_ONE_BY_ONE and len(uuids) > 1:
                # RIGHT is all or nothing; the add-on asks for each datablock
                # on its own account, so the others are asked for one by one.
                for uuid in uuids:
                    self._rights[self.client.change_owner_nowait([uuid], owner)] = ([uuid], owner)
            else:
                log.warning("refused: %s", self._readable(str(error)))
        elif event.kind == "update":
            self._pushes.pop(event.request_id, None)
        elif event.kind in ("delete", "kick"):
            log.warning("refused: %s", self._readable(str(error)))

    def _server_error(self, event: ServerError) -> None:
        pushed = self._pushes.pop(event.request_id, None) if event.request_id is not None else None
        if pushed is None:
            message = self._readable(event.message)
            log.warning("the server refused a request: %s (%s)", message, event.code)
            return
        uuid, created = pushed
        node = self.repository.graph.get(uuid)
        if event.code in _FULL_AFTER and node is not None and not created:
            # Someone else's change came first: the last writer wins, as it
            # always has in this add-on; the whole data replaces theirs.
            log.info("%s changed meanwhile (%s); sending it whole", _name(node), event.code)
            self._pushes[self.client.push(uuid, node.data)] = (uuid, False)
            return
        if created:
            self._refused_creations.add(uuid)
            if node is not None:
                node.state = ERROR
            log.error(
                "the server refused %s: %s",
                _name(node) if node is not None else uuid,
                self._readable(event.message),
            )
        else:
            # The server's copy comes back (the client fetches it) and is
            # applied over the refused local change.
            message = self._readable(event.message)
            log.warning("refused: %s; restoring the session's version", message)

    def _uploaded(self, event: UploadDone) -> None:
        self.listener.on_uploaded(event.datablocks, event.refused, event.error)

    def _progress(self, event: SnapshotProgress) -> None:
        self.listener.on_progress(event.done, event.total)

    def _synced(self, event: SnapshotDone) -> None:
        self.listener.on_synced()

    def _updated(self, event: Updated) -> None:
        if not self.listener.active:
            return  # the snapshot is turned into nodes when it is complete
        if event.source == "fetch" and self.client.pending_pushes([event.uuid]):
            return  # our newer change is on its way; the client fetches again if it must
        block = event.block
        self._refused_creations.discard(event.uuid)
        node = self.repository.graph.get(event.uuid)
        if node is None:
            node = Node(uuid=event.uuid)
            self.repository.graph[event.uuid] = node
        node.data = block.data
        node.owner = block.owner
        node.dependencies = list(block.deps)
        node.sender = event.sender
        node.last_commit = None
        node.state = FETCHED
        log.debug("%s changed by %s (%s)", _name(node), event.sender or "the server", event.source)

    def _deleted(self, event: Deleted) -> None:
        if event.sender is None and event.uuid in self._refused_creations:
            return  # the server never had it: keep the node, marked ERROR
        _remove_node(self.repository.graph, event.uuid)

    def _owner_changed(self, event: OwnerChanged) -> None:
        graph = self.repository.graph
        for uuid in event.uuids:
            node = graph.get(uuid)
            if node is not None:
                if event.owner == self.user or node.owner == self.user:
                    log.debug("%s now belongs to %s", _name(node), event.owner)
                node.owner = event.owner

    def _users(self, event: UsersChanged) -> None:
        self.remote.online_users = online_users(event.users)

    def _ended(self, event: SessionEnded) -> None:
        # Before the login was answered, the session never began: the
        # connection failed (a changed server key, say), as the add-on says.
        if self._logged_in:
            self.listener.on_ended(event.reason)
        else:
            self.listener.on_ended(f"Failed to connect: {event.reason}")

    def _local_error(self, event: LocalError) -> None:
        log.error("replication: %s", event.error)


_HANDLERS = {
    Reply: Link._reply,
    RequestFailed: Link._failed,
    ServerError: Link._server_error,
    UploadDone: Link._uploaded,
    SnapshotProgress: Link._progress,
    SnapshotDone: Link._synced,
    Updated: Link._updated,
    Deleted: Link._deleted,
    OwnerChanged: Link._owner_changed,
    UsersChanged: Link._users,
    SessionEnded: Link._ended,
    LocalError: Link._local_error,
}


def _type_id(node: Node) -> str:
    type_id = node.data.get("type_id") if isinstance(node.data, dict) else None
    return type_id or type(node.instance).__name__


def _name(node: Node | None) -> str:
    if node is not None and isinstance(node.data, dict) and isinstance(node.data.get("name"), str):
        return f"'{node.data['name']}'"
    return node.uuid if node is not None else "a datablock"


def _remove_node(graph: Any, uuid: str) -> None:
    """Forgets a node, and every other node's dependency on it."""
    if graph.pop(uuid, None) is None:
        return
    for node in graph.values():
        if uuid in node.dependencies:
            node.dependencies.remove(uuid)


def mark_uploaded(graph: Any, blocks: dict[str, Datablock], refused: set[str]) -> None:
    """After the initial upload: every node the server took is UP and shares
    its value with the replica; a refused one is marked ERROR."""
    for uuid, node in graph.items():
        block = blocks.get(uuid)
        if uuid in refused or block is None:
            node.state = ERROR
        else:
            node.data = block.data
            node.state = UP
