"""The server's list of users (CLIENTS_STATE) in the form the add-on reads.

The add-on's user list, its viewport overlays (other users' views,
selections, names and modes) and its kick and snap operators all read
``session.online_users``: user name -> ``{"id", "admin", "latency",
"status", "metadata"}``, ``latency`` in whole milliseconds and ``status``
one of the session states of :mod:`replication.constants`.
"""

from __future__ import annotations

from typing import Any

from replication_client import User

from ..constants import STATE_ACTIVE, STATE_LOBBY, STATE_SRV_SYNC, STATE_SYNCING

__all__ = ["online_users", "UNMEASURED_LATENCY"]

STATUS = {
    "LOBBY": STATE_LOBBY,
    "UPLOADING": STATE_SRV_SYNC,
    "SYNCING": STATE_SYNCING,
    "ACTIVE": STATE_ACTIVE,
}
UNMEASURED_LATENCY = 999
"""Shown until the server has measured a user's round trip, as the add-on
has always shown it."""


def online_users(users: tuple[User, ...]) -> dict[str, dict[str, Any]]:
    return {user.name: _entry(user) for user in users}


def _entry(user: User) -> dict[str, Any]:
    latency = UNMEASURED_LATENCY if user.latency_ms is None else round(user.latency_ms)
    return {
        "id": user.name,
        "admin": user.admin,
        "latency": latency,
        "status": STATUS.get(user.status, STATE_LOBBY),
        "metadata": dict(user.metadata) if isinstance(user.metadata, dict) else {},
    }
