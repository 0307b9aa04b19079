"""The operations the add-on performs on a repository.

Local ones (``add``, ``commit``, ``apply``) work on the nodes; the others
go to the session through the remote's link (:mod:`serve.link`). Requests
to the server return at once, as the add-on calls them from Blender's main
thread: answers and refusals arrive through ``session.listen()``, and a
refusal is logged (and, for a refused change, the session's version comes
back and is applied over it).
"""

from __future__ import annotations

import logging
from typing import Any

from .constants import ADDED, COMMITED, FETCHED, RP_COMMON, UP
from .exception import ContextError, NonAuthorizedOperationError, UnsupportedTypeError
from .objects import Node
from .repository import Remote, Repository
from .serve import probe
from .serve.diffing import PatchDelta, Pending
from .serve.values import normalize

__all__ = [
    "add",
    "apply",
    "commit",
    "evaluate_node_dependencies",
    "kick",
    "lock",
    "purge_orphan_nodes",
    "push",
    "remote_add",
    "request_session_info",
    "rm",
    "unlock",
    "update_user_metadata",
]

log = logging.getLogger("replication")


def _link(repository: Repository) -> Any:
    remote = repository.remote
    if remote is None or remote.link is None:
        raise ContextError("not connected to a session")
    return remote.link


def _as_list(node_ids: Any) -> list[str]:
    return list(node_ids) if isinstance(node_ids, (list, tuple, set)) else [node_ids]


def add(
    repostitory: Repository,
    datablock: Any,
    owner: str | None = None,
    dependencies: list[str] | None = None,
    stamp: bool = True,
) -> str:
    """Registers a Blender datablock (and, recursively, those it uses) as a
    node in the ADDED state; returns its uuid."""
    repository = repostitory
    rdp = repository.rdp
    if rdp is None or rdp.get_implementation(datablock) is None:
        raise UnsupportedTypeError(f"{type(datablock).__name__} not supported, skipping.")
    node = Node(
        owner=owner or RP_COMMON, instance=datablock, dependencies=dependencies, state=ADDED
    )
    if stamp:
        try:
            datablock.uuid = node.uuid
        except AttributeError:
            log.debug("cannot stamp a uuid on %s", type(datablock).__name__)
    # Stored before its dependencies are walked, so that a datablock that
    # uses itself through others is found instead of added again.
    repository.do_commit(node)
    node.dependencies = _dependencies(repository, datablock, node.dependencies, node.owner)
    return node.uuid


def apply(repository: Repository, node_id: str, force: bool = False, stamp: bool = True) -> None:
    """Loads the node, and the nodes it depends on, into Blender: those
    FETCHED (or all, with ``force``), dependencies first."""
    rdp = repository.rdp
    assert rdp is not None
    graph = repository.graph
    for uuid in graph.rbfs_from(node_id):
        node = graph.get(uuid)
        if node is None or node.data is None or not (force or node.state == FETCHED):
            continue
        if node.instance is None:
            node.instance = rdp.resolve(node.data)
            if node.instance is None:
                node.instance = rdp.construct(node.data)
            if stamp:
                try:
                    node.instance.uuid = node.uuid
                except AttributeError:
                    log.debug("cannot stamp a uuid on %s", type(node.instance).__name__)
        try:
            rdp.load(node.data, node.instance)
            node.state = UP
        except ReferenceError:
            # The Blender datablock was deleted (an undo): find it again.
            log.error("%s is gone from Blender; resolving it again", uuid)
            node.instance = rdp.resolve(node.data)


def evaluate_node_dependencies(repository: Repository, node_id: str) -> None:
    """Recomputes the node's dependencies from its Blender datablock, adding
    nodes for datablocks it uses that have none yet."""
    node = repository.graph.get(node_id)
    if node is None or node.instance is None:
        return
    node.dependencies = _dependencies(repository, node.instance, [], node.owner)


def _dependencies(
    repository: Repository, datablock: Any, known: list[str], owner: Any
) -> list[str]:
    """``known`` and the uuids of the datablocks ``datablock`` uses, in
    order, adding a node for each that has none yet. A scene or collection
    may use tens of thousands: the list is built once, not searched per
    dependency."""
    rdp = repository.rdp
    assert rdp is not None
    out = dict.fromkeys(known)
    for dependency in rdp.resolve_deps(datablock):
        if not dependency:
            continue
        node = repository.get_node_by_datablock(dependency)
        if node is not None:
            out[node.uuid] = None
            continue
        try:
            out[add(repository, dependency, owner=owner)] = None
        except UnsupportedTypeError:
            log.warning("skipping %s", type(dependency).__name__)
    return list(out)


def commit(repository: Repository, node_id: str) -> None:
    """Dumps the node (and its new dependencies) from Blender; a node that
    changed becomes COMMITED, ready for ``push``. Raises ContextError when
    Blender cannot dump it now (a mesh in edit mode)."""
    node = repository.graph.get(node_id)
    if node is None:
        raise KeyError(node_id)
    if node.state not in (ADDED, UP):
        log.debug("commit skipped: %s is in state %s", node_id, node.state)
        return
    evaluate_node_dependencies(repository, node_id)
    graph = repository.graph
    queue = [uuid for uuid in graph.rbfs_from(node_id) if _state(graph, uuid) == ADDED]
    if node_id not in queue:
        queue.append(node_id)
    rdp = repository.rdp
    assert rdp is not None
    for uuid in queue:
        current = graph[uuid]
        added = current.state == ADDED
        if not added and not rdp.needs_update(current.instance, current.data):
            continue
        new = normalize(rdp.dump(current.instance, stamp_uuid=current.uuid))
        if added:
            current.data = new
            current.last_commit = Pending(None, None)
            current.state = COMMITED
            continue
        delta = rdp.compute_delta(current.data, new)
        if not (delta is not None and delta.diff):
            continue
        impl = rdp.get_implementation(current.instance)
        base = current.data
        if isinstance(delta, PatchDelta):
            current.data = new
            ops = delta.ops
        else:
            # The add-on's own delta may leave parts out (render settings it
            # does not replicate): the committed state is the last one plus
            # that delta, and the patch is worked out from the two at push.
            current.data = normalize(base + delta) if impl is not None and impl.use_delta else new
            ops = None
        current.last_commit = Pending(base, ops)
        current.state = COMMITED


def _state(graph: Any, uuid: str) -> int | None:
    node = graph.get(uuid)
    return node.state if node is not None else None


def push(repository: Repository, remote: str, node_id: str, force: bool = False) -> None:
    """Sends the node's committed change (and the new datablocks it uses) to
    the session. Raises NonAuthorizedOperationError when the node belongs
    to someone else; the server refuses it too, should the local owner be
    out of date."""
    repository.assert_modification_rights(node_id)
    if repository.remotes.get(remote) is None:
        raise ContextError(f"no remote {remote!r}")
    node = repository.graph.get(node_id)
    if node is None:
        raise KeyError(node_id)
    if node.state != COMMITED and not force:
        log.debug("nothing to push for %s", node_id)
        return
    if node.data is None:
        raise ContextError(f"{node_id} was never committed")
    link = _link(repository)
    graph = repository.graph
    for uuid in graph.rbfs_from(node_id):
        dep = graph.get(uuid)
        if dep is None or dep.data is None:
            continue
        if (dep.state in (ADDED, COMMITED) or (uuid == node_id and force)) and link.push(
            dep, force and uuid == node_id
        ):
            dep.state = UP


def lock(
    repository: Repository,
    node_ids: Any,
    new_owner: str | None = None,
    ignore_warnings: bool = True,
    affect_dependencies: bool = True,
) -> None:
    """Asks for the nodes (and the dependencies this user may change) to
    belong to ``new_owner`` (default: this user). The server refuses what
    someone else holds; a refusal is logged."""
    owner = repository.username if new_owner is None else new_owner
    _link(repository).change_owner(
        _with_dependencies(repository, node_ids, affect_dependencies), owner
    )


def unlock(
    repository: Repository,
    node_ids: Any,
    ignore_warnings: bool = True,
    affect_dependencies: bool = True,
) -> None:
    """Releases the nodes (and dependencies) to everyone, once the server
    has taken this user's last changes of them."""
    _link(repository).change_owner(
        _with_dependencies(repository, node_ids, affect_dependencies), RP_COMMON
    )


def _with_dependencies(repository: Repository, node_ids: Any, deep: bool) -> list[str]:
    uuids = _as_list(node_ids)
    if not deep:
        return uuids
    out = dict.fromkeys(uuids)
    for uuid in uuids:
        for dependency in repository.graph.rbfs_from(uuid):
            if dependency in out:
                continue
            try:
                repository.assert_modification_rights(dependency)
            except NonAuthorizedOperationError:
                continue  # someone else holds it; leave it to them
            out[dependency] = None
    return list(out)


def kick(repository: Repository, username: str) -> None:
    """Disconnects a user (admins only)."""
    if username == repository.username:
        log.error("you cannot kick yourself")
        return
    if repository.remote is None or not repository.remote.is_admin():
        log.error("only an admin may kick")
        return
    _link(repository).kick(username)


def rm(repository: Repository, node_id: str, remove_dependencies: bool = True) -> None:
    """Deletes the node (and, by default, its dependencies) from the
    session. Raises NonAuthorizedOperationError when it belongs to someone
    else, KeyError when there is no such node."""
    repository.assert_modification_rights(node_id)
    if repository.graph.get(node_id) is None:
        raise KeyError("Cannot unregister key")
    uuids = repository.graph.rbfs_from(node_id) if remove_dependencies else []
    link = _link(repository)
    for uuid in dict.fromkeys([*uuids, node_id]):
        link.delete(uuid)


def update_user_metadata(repository: Repository, metadata_fieds: dict[str, Any]) -> None:
    """Merges ``metadata_fieds`` into this user's presence (view, selection,
    frame, mode...), which every user sees in ``online_users``."""
    _link(repository).set_metadata(metadata_fieds)


def purge_orphan_nodes(repository: Repository) -> None:
    """Deletes the nodes no scene leads to any more (and this user may
    delete)."""
    for uuid in repository.get_orphans_nodes():
        try:
            repository.assert_modification_rights(uuid)
        except NonAuthorizedOperationError:
            log.debug("skipping %s: someone else holds it", uuid)
            continue
        rm(repository, uuid, remove_dependencies=False)


def remote_add(
    repository: Repository,
    name: str,
    address: str,
    port: int,
    server_password: str | None = None,
    admin_password: str | None = None,
    realtime: bool = False,
) -> None:
    """Adds a remote; the first one becomes the repository's remote."""
    if name in repository.remotes:
        log.error("remote %s already exists", name)
        return
    log.info("adding remote %s (%s:%s)", name, address, port)
    repository.remotes[name] = Remote(
        name, address, port, server_password, admin_password, realtime
    )
    if repository.remote is None:
        repository.remote = repository.remotes[name]


def request_session_info(address: str, timeout: int = 100) -> dict[str, Any] | None:
    """``{"private": ..., "version": ..., ...}`` of the server at
    ``address`` ("host:port"), or None when it does not answer within
    ``timeout`` milliseconds."""
    return probe.server_info(address, timeout)
