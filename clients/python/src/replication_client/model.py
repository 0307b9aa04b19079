"""Plain data the session hands out (datablocks, users, login details) and
takes in (the updates of :meth:`Session.push_many`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "Datablock",
    "User",
    "AuthInfo",
    "RoomInfo",
    "RoomJoined",
    "FullUpdate",
    "PatchUpdate",
    "AUTO",
    "COMMON",
    "DEFAULT_ROOM",
]

COMMON = "COMMON"
"""The owner of datablocks that everyone may edit."""

DEFAULT_ROOM = "default"
"""The room of clients that name none; it always exists."""


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()
"""``base_revision=AUTO``: use the replica's revision of the datablock."""


@dataclass
class Datablock:
    """One datablock: the unit of replication.

    ``data`` is the decoded MessagePack value. In the session's replica
    (:attr:`Session.blocks`) it is kept up to date in place, so treat it as
    read-only and change it with :meth:`Session.push` or
    :meth:`Session.push_patch`. ``revision`` is 0 for a datablock that is not
    (yet) known to be on the server.
    """

    uuid: str
    type_id: str
    data: Any = None
    owner: str | None = None
    deps: list[str] = field(default_factory=list)
    revision: int = 0


@dataclass(frozen=True)
class User:
    """One user of the room, as CLIENTS_STATE and PRESENCE describe it."""

    name: str
    admin: bool
    status: str
    metadata: Any
    latency_ms: float | None = None


@dataclass(frozen=True)
class AuthInfo:
    """A successful AUTH reply: where the session stands and the limits the
    server announced. ``room`` is the room joined (None from a server
    without rooms) and ``created`` whether this login created it.
    ``batches`` is true when the client asked for batches and the server
    may send them (UPDATES, protocol section 15); only then does
    :meth:`Session.push_many` send batches too."""

    status: str
    state: str
    token: str
    heartbeat_ms: int
    timeout_ms: int
    chunk_bytes: int
    max_header_bytes: int
    room: str | None = None
    created: bool = False
    batches: bool = False


@dataclass(frozen=True)
class RoomJoined:
    """The answer to JOIN_ROOM: the room the client is in now. ``status`` is
    LOBBY (upload the scene, or wait for it) or RUNNING (download it);
    ``state`` the room's WAITING, SRV_SYNC or ACTIVE; ``created`` whether
    this request created the room, and ``admin`` whether the client is an
    admin of it (a server admin, or its creator)."""

    room: str
    status: str
    state: str
    created: bool
    admin: bool


@dataclass(frozen=True)
class RoomInfo:
    """One room as SERVER_INFO lists it. ``private``: joining needs a
    password (the server's or the room's); ``keep_open``: it stays when its
    last user leaves (always true for the default room)."""

    name: str
    users_online: int
    private: bool
    state: str
    datablocks: int
    bytes: int
    keep_open: bool


@dataclass(frozen=True)
class FullUpdate:
    """One update of :meth:`Session.push_many` with the datablock's full
    data: the arguments of :meth:`Session.push`."""

    uuid: str
    data: Any
    type_id: str | None = None
    owner: str | None = None
    deps: Iterable[str] | None = None
    base_revision: int | None = None


@dataclass(frozen=True)
class PatchUpdate:
    """One update of :meth:`Session.push_many` with a patch: the arguments
    of :meth:`Session.push_patch`. With ``base_revision=AUTO`` a patch
    that follows another update of the same datablock in the same call is
    conditional on the revision that update makes."""

    uuid: str
    ops: Iterable[dict[str, Any]]
    base_revision: int | None = AUTO
    deps: Iterable[str] | None = None
    check: bool = True


def user_from_wire(entry: dict[str, Any]) -> User:
    return User(
        name=entry["name"],
        admin=bool(entry.get("admin", False)),
        status=entry.get("status", ""),
        metadata=entry.get("metadata", {}),
        latency_ms=entry.get("latency_ms"),
    )


def apply_presence(users: tuple[User, ...], h: dict[str, Any]) -> tuple[User, ...]:
    """The user list after a PRESENCE (protocol section 8): who left, who
    joined, the changed statuses and metadata keys (a nil value removes the
    key), and new latencies."""
    left = set(h.get("left") or [])
    joined = [user_from_wire(u) for u in h.get("joined") or []]
    names = left | {u.name for u in joined}
    changed = {c["name"]: c for c in h.get("changed") or [] if isinstance(c, dict)}
    latency = h.get("latency") or {}
    result = []
    for user in [u for u in users if u.name not in names] + joined:
        change = changed.get(user.name, {})
        metadata = user.metadata
        keys = change.get("metadata")
        if isinstance(keys, dict):
            metadata = dict(metadata) if isinstance(metadata, dict) else {}
            for key, value in keys.items():
                if value is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
        result.append(
            replace(
                user,
                status=change.get("status", user.status),
                metadata=metadata,
                latency_ms=latency.get(user.name, user.latency_ms),
            )
        )
    return tuple(result)


def room_info_from_wire(entry: dict[str, Any]) -> RoomInfo:
    return RoomInfo(
        name=entry["name"],
        users_online=int(entry.get("users_online", 0)),
        private=bool(entry.get("private", False)),
        state=entry.get("state", ""),
        datablocks=int(entry.get("datablocks", 0)),
        bytes=int(entry.get("bytes", 0)),
        keep_open=bool(entry.get("keep_open", False)),
    )


def room_joined_from_wire(header: dict[str, Any]) -> RoomJoined:
    return RoomJoined(
        room=header["room"],
        status=header.get("status", ""),
        state=header.get("state", ""),
        created=bool(header.get("created", False)),
        admin=bool(header.get("admin", False)),
    )
