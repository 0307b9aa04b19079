"""Events: what :meth:`Session.poll` returns and passes to callbacks.

Every event is a frozen dataclass deriving from :class:`Event`, so an
add-on can ``match`` on them or register a callback per class with
:meth:`Session.on`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import Disconnected, ReplicationError, RequestRefused
from .model import Datablock, User

__all__ = [
    "Event",
    "Updated",
    "Deleted",
    "OwnerChanged",
    "UsersChanged",
    "RoomChanged",
    "SnapshotProgress",
    "SnapshotDone",
    "UploadDone",
    "Reply",
    "RequestFailed",
    "ServerError",
    "SessionEnded",
    "LocalError",
]


@dataclass(frozen=True)
class Event:
    """Base class of all events."""


@dataclass(frozen=True)
class Updated(Event):
    """A datablock in the replica changed.

    ``source`` is ``"snapshot"`` (downloaded), ``"update"`` (another user's
    UPDATE; ``patch`` holds the operations when it was a patch, already
    applied to ``block.data``) or ``"fetch"`` (the server's state, fetched
    on request or to repair the replica). ``sender`` is the author of an
    update.
    """

    uuid: str
    block: Datablock
    source: str
    sender: str | None = None
    patch: list[Any] | None = None


@dataclass(frozen=True)
class Deleted(Event):
    """A datablock left the session. ``sender`` is who deleted it (this user
    for its own DELETE) or None when the replica found it gone."""

    uuid: str
    sender: str | None


@dataclass(frozen=True)
class OwnerChanged(Event):
    """Datablocks got a new owner: a lock, a release, a forced take-over, or
    the release of a departed user's datablocks (``sender`` is who left)."""

    uuids: tuple[str, ...]
    owner: str
    sender: str | None


@dataclass(frozen=True)
class UsersChanged(Event):
    """A CLIENTS_STATE or a PRESENCE: the complete list of users with their
    presence, after the change."""

    users: tuple[User, ...]


@dataclass(frozen=True)
class RoomChanged(Event):
    """The client left its room: JOIN_ROOM (``room`` is the new room) or
    LEAVE_ROOM (``room`` is None) was answered. The replica was emptied and
    :attr:`Session.synced` is false: discard what was built from the old
    room's datablocks, then download the new room's scene (or upload it,
    when ``status`` is LOBBY and the client ``created`` the room). Nothing
    of the old room is applied after this event. ``status``, ``state``,
    ``created`` and ``admin`` are those of :class:`RoomJoined` (empty and
    false after LEAVE_ROOM)."""

    room: str | None
    status: str = ""
    state: str = ""
    created: bool = False
    admin: bool = False


@dataclass(frozen=True)
class SnapshotProgress(Event):
    """Download progress in datablocks (``done`` of ``total``)."""

    done: int
    total: int


@dataclass(frozen=True)
class SnapshotDone(Event):
    """The snapshot is complete; live traffic follows."""

    datablocks: int


@dataclass(frozen=True)
class UploadDone(Event):
    """An upload started with ``upload_nowait`` ended. ``error`` is set when
    it did not happen at all (INIT rejected, session ended); ``refused``
    lists datablocks the server refused while the rest was uploaded."""

    request_id: int
    datablocks: int
    refused: tuple[RequestRefused, ...] = ()
    error: ReplicationError | None = None


@dataclass(frozen=True)
class Reply(Event):
    """The answer to a ``*_nowait`` request, or the ACK of a push (``kind``
    ``"update"``). ``result`` is what the blocking form would have returned
    (for a push: the datablock's revision after it)."""

    request_id: int
    kind: str
    result: Any


@dataclass(frozen=True)
class RequestFailed(Event):
    """A ``*_nowait`` request was refused (``error`` is a
    :class:`RequestRefused` or :class:`AuthenticationError` with the server's
    code and reason) or could not be answered (:class:`Disconnected`, also
    for pushes still waiting for their ACK when the session ended). A
    refused push is a :class:`ServerError` instead, as it always was."""

    request_id: int
    kind: str
    error: ReplicationError


@dataclass(frozen=True)
class ServerError(Event):
    """An ERROR that no blocking call raised: typically a refused push
    (``refers_to["uuid"]``; ``request_id`` is the id :meth:`Session.push` or
    :meth:`Session.push_patch` returned), a refused CHUNK or presence
    update. The replica re-fetches a datablock whose update was refused.

    ``request_id`` is the id of the request the ERROR is about, when it had
    one: ``refers_to["id"]``, or for a refused CHUNK of a chunked push, that
    push's id."""

    code: str
    message: str
    refers_to: dict[str, Any] = field(default_factory=dict)
    request_id: int | None = None

    @property
    def error(self) -> RequestRefused:
        return RequestRefused(self.code, self.message, self.refers_to)


@dataclass(frozen=True)
class SessionEnded(Event):
    """The session is over (DISCONNECT from the server, or silence).
    Authenticate again to continue."""

    reason: str
    by_server: bool = True

    @property
    def error(self) -> Disconnected:
        return Disconnected(self.reason, self.by_server)

    @property
    def kicked(self) -> bool:
        return self.error.kicked

    @property
    def timed_out(self) -> bool:
        return self.error.timed_out


@dataclass(frozen=True)
class LocalError(Event):
    """Something went wrong on this side (for example a message the protocol
    does not allow); the session goes on."""

    error: BaseException
