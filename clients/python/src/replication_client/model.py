"""Plain data the session hands out: datablocks, users, login details."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Datablock", "User", "AuthInfo", "COMMON"]

COMMON = "COMMON"
"""The owner of datablocks that everyone may edit."""


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
    """One entry of CLIENTS_STATE."""

    name: str
    admin: bool
    status: str
    metadata: Any
    latency_ms: float | None = None


@dataclass(frozen=True)
class AuthInfo:
    """A successful AUTH reply: where the session stands and the limits the
    server announced."""

    status: str
    state: str
    token: str
    heartbeat_ms: int
    timeout_ms: int
    chunk_bytes: int
    max_header_bytes: int


def user_from_wire(entry: dict[str, Any]) -> User:
    return User(
        name=entry["name"],
        admin=bool(entry.get("admin", False)),
        status=entry.get("status", ""),
        metadata=entry.get("metadata", {}),
        latency_ms=entry.get("latency_ms"),
    )
