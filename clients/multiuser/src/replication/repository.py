"""The local graph of replicated datablocks, and the remote it replicates to."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any
from uuid import uuid4

from . import backup
from .constants import RP_COMMON, STATE_INITIAL
from .exception import NonAuthorizedOperationError
from .objects import Node
from .protocol import DataTranslationProtocol

__all__ = ["GraphObjectStore", "Remote", "Repository"]

log = logging.getLogger(__name__)


class GraphObjectStore(MutableMapping[str, Node]):
    """uuid -> :class:`Node`, with the walks the add-on needs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.store: dict[str, Node] = {}
        self.update(dict(*args, **kwargs))

    def __getitem__(self, key: str) -> Node:
        return self.store[key]

    def __setitem__(self, key: str, value: Node) -> None:
        self.store[key] = value

    def __delitem__(self, key: str) -> None:
        del self.store[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return f"GraphObjectStore({len(self.store)} nodes)"

    def get_parents(self, target: str) -> list[Node]:
        """The nodes that depend on ``target``."""
        return [node for node in self.store.values() if target in node.dependencies]

    def rbfs_from(self, node: str | list[str]) -> list[str]:
        """Breadth-first from ``node`` (a uuid or a list of them) along
        dependencies, reversed: dependencies come before what needs them,
        the order in which the add-on loads and pushes."""
        visited: dict[str, None] = {}
        queue = collections.deque(node if isinstance(node, list) else [node])
        while queue:
            current = queue.popleft()
            if current in visited:
                continue
            visited[current] = None
            ref = self.store.get(current)
            if ref is not None and ref.dependencies:
                queue.extend(ref.dependencies)
        return list(reversed(visited))


class Remote:
    """Where the session is: an address, a port and the passwords to use.

    ``link`` is the live connection (a :class:`serve.link.Link`) while
    connected, None otherwise."""

    def __init__(
        self,
        name: str = "origin",
        address: str = "127.0.0.1",
        port: int = 5555,
        server_password: str | None = None,
        admin_password: str | None = None,
        realtime: bool = False,
    ) -> None:
        self.name = name
        self.address = address
        self.port = int(port)
        self.realtime = realtime
        self.server_password = server_password
        self.admin_password = admin_password
        self.online_users: dict[str, dict[str, Any]] = {}
        """user name -> {'id', 'admin', 'latency', 'status', 'metadata'}."""
        self.connection_status = STATE_INITIAL
        self.uuid = uuid4()
        self.link: Any = None

    def is_admin(self) -> bool:
        return self.admin_password is not None

    def is_private(self) -> bool:
        return bool(self.server_password)


class Repository:
    """The session's datablocks as nodes, the local user, and the remotes."""

    def __init__(
        self,
        rdp: DataTranslationProtocol | None = None,
        username: str | None = None,
        bare: bool = False,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.username = username
        self.object_store = GraphObjectStore()
        self.rdp = rdp
        self.remotes: dict[str, Remote] = {}
        self.remote: Remote | None = None

    @property
    def graph(self) -> GraphObjectStore:
        return self.object_store

    def _type_id(self, node: Node) -> str | None:
        if isinstance(node.data, dict) and isinstance(node.data.get("type_id"), str):
            return node.data["type_id"]
        if node.instance is not None:
            return type(node.instance).__name__
        return None

    @property
    def heads(self) -> list[str]:
        """The nodes whose kind heads the graph (scenes)."""
        out = []
        for node in self.object_store.values():
            impl = self.rdp.get_implementation(self._type_id(node) or "") if self.rdp else None
            if impl is not None and impl.is_root:
                out.append(node.uuid)
        return out

    @property
    def index_sorted(self) -> list[str]:
        """Every node reachable from the heads, dependencies first."""
        return self.object_store.rbfs_from(self.heads)

    def get_orphans_nodes(self) -> list[str]:
        """Nodes no head leads to."""
        return list(set(self.object_store).difference(self.index_sorted))

    def get_node_by_datablock(self, datablock: Any, default: Any = None) -> Any:
        """The node of a Blender datablock: found by the uuid stamped on it,
        or else by comparing instances. Every datablock a node holds is
        stamped, so one whose stamp is empty has no node: hosting a scene of
        thousands of objects then costs no scan per object."""
        uuid = getattr(datablock, "uuid", None)
        if isinstance(uuid, str):
            if not uuid:
                return default
            node = self.object_store.get(uuid)
            if node is not None and node.instance == datablock:
                return node
        for node in self.object_store.values():
            if node.instance is not None and node.instance == datablock:
                return node
        return default

    def do_commit(self, node: Node) -> None:
        """Stores ``node``, or takes its data and dependencies into the node
        already stored under its uuid."""
        existing = self.object_store.get(node.uuid)
        if existing is None:
            self.object_store[node.uuid] = node
        else:
            existing.data = node.data
            existing.dependencies = node.dependencies

    def assert_modification_rights(self, node_id: str) -> None:
        node = self.object_store.get(node_id)
        if node is None or node.owner not in (self.username, RP_COMMON):
            owner = node.owner if node is not None else "nobody (unknown datablock)"
            raise NonAuthorizedOperationError(f"{node_id} belongs to {owner}")

    def is_node_readonly(self, node_id: str) -> Any:
        """Whether the local user may change the node, despite the name: the
        add-on hides from selection what this returns false for. None for
        an unknown node."""
        node = self.object_store.get(node_id)
        return node and (node.owner in (self.username, RP_COMMON))

    def dumps(self, filepath: str) -> str:
        """Writes the session to a backup next to ``filepath`` (its name
        gets the date and time); returns the file written."""
        users = self.remote.online_users if self.remote is not None else {}
        return backup.write(filepath, self.object_store.values(), users)

    def loads(self, filepath: str) -> None:
        """Replaces the graph with the nodes of a backup file."""
        nodes = backup.read(filepath)
        self.object_store.clear()
        for node in nodes:
            self.do_commit(node)
        log.info("loaded %d datablocks from %s", len(nodes), filepath)
