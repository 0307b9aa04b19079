"""Exceptions. Every refusal carries the server's own code and reason, so an
add-on can show the user what the server said instead of a guess."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ReplicationError",
    "ProtocolError",
    "Timeout",
    "NotAuthenticated",
    "ServerRefused",
    "AuthenticationError",
    "RequestRefused",
    "UploadIncomplete",
    "PushIncomplete",
    "Disconnected",
    "RoomLeft",
    "PatchError",
    "PatchMalformed",
    "PatchFailed",
    "ServerKeyError",
    "WrongServerKey",
    "ChangedServerKey",
    "ClientKeyRefused",
]


class ReplicationError(Exception):
    """Base class of every error this package raises."""


class ProtocolError(ReplicationError):
    """The server sent something protocol version 2 does not allow."""


class Timeout(ReplicationError):
    """No answer arrived within the given time. The request may still be
    answered later; the answer is then ignored, except for a push, whose
    ACK or refusal then arrives as an event (:class:`Reply` or
    :class:`ServerError`)."""


class NotAuthenticated(ReplicationError):
    """The call needs a session: authenticate first (again after a
    disconnection)."""


class ServerRefused(ReplicationError):
    """The server refused something; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AuthenticationError(ServerRefused):
    """AUTH was answered with status FAILED (wrong password, version
    mismatch, name taken, too many attempts, ...)."""

    @property
    def reason(self) -> str:
        return self.message


class RequestRefused(ServerRefused):
    """A request was refused: an ERROR about it, or a REJECTED upload INIT.
    ``refers_to`` is the ERROR's description of the refused message."""

    def __init__(self, code: str, message: str, refers_to: dict[str, Any] | None = None) -> None:
        super().__init__(code, message)
        self.refers_to = dict(refers_to or {})


class UploadIncomplete(ReplicationError):
    """The upload finished (the session is ACTIVE) but some SETs were refused;
    ``errors`` holds one :class:`RequestRefused` per refused datablock."""

    def __init__(self, datablocks: int, errors: list[RequestRefused]) -> None:
        refused = ", ".join(f"{e.refers_to.get('uuid', '?')} ({e.code})" for e in errors)
        super().__init__(
            f"{len(errors)} datablock(s) refused: {refused}; the session holds {datablocks}"
        )
        self.datablocks = datablocks
        self.errors = errors


class PushIncomplete(ReplicationError):
    """Some updates of :meth:`Session.push_many_confirmed` were refused and
    the others applied. ``revisions`` holds each update's revision after it,
    in order (None for a refused one); ``errors`` holds one
    :class:`RequestRefused` per refused update, whose ``refers_to["id"]`` is
    that update's request id."""

    def __init__(self, revisions: list[int | None], errors: list[RequestRefused]) -> None:
        refused = ", ".join(f"{e.refers_to.get('uuid', '?')} ({e.code})" for e in errors)
        super().__init__(f"{len(errors)} of {len(revisions)} update(s) refused: {refused}")
        self.revisions = revisions
        self.errors = errors


class Disconnected(ReplicationError):
    """The session ended: the server's DISCONNECT reason (``goodbye``,
    ``timed out``, ``too slow``, ``kicked by NAME[: REASON]``, ``server
    shutting down``), or a local reason when the server went silent."""

    def __init__(self, reason: str, by_server: bool = True) -> None:
        super().__init__(f"disconnected: {reason}")
        self.reason = reason
        self.by_server = by_server

    @property
    def kicked(self) -> bool:
        return self.reason.startswith("kicked by ")

    @property
    def timed_out(self) -> bool:
        return self.reason == "timed out"


class RoomLeft(ReplicationError):
    """The request belonged to a room this client has left and got no
    answer there: a push the server had not applied when it switched (it
    drops UPDATEs carrying the old token), a FETCH answered by the old room
    after the switch, or an upload under way. Ask again in the new room."""

    def __init__(self, room: str | None) -> None:
        where = f"room {room!r}" if room is not None else "its room"
        super().__init__(f"the client left {where} before the answer arrived")
        self.room = room


class PatchError(ReplicationError):
    """A patch could not be applied; ``op`` is the operation's index (from 0)
    or None when the patch as a whole is wrong."""

    def __init__(self, op: int | None, reason: str) -> None:
        where = "the patch" if op is None else f"patch operation {op}"
        super().__init__(f"{where}: {reason}")
        self.op = op
        self.reason = reason


class PatchMalformed(PatchError):
    """The patch is not well-formed (the server would answer patch_failed)."""


class PatchFailed(PatchError):
    """An operation failed on the value; nothing was changed."""


class ServerKeyError(ReplicationError):
    """Encryption could not be set up as asked: the message says why and
    what to do (``reason`` is the same text, as for refused logins)."""

    @property
    def reason(self) -> str:
        return str(self)


class WrongServerKey(ServerKeyError):
    """The server presents another key than the one given."""


class ChangedServerKey(ServerKeyError):
    """The server presents another key than the one pinned for its host and
    port on first use: someone may be in the middle, or the server has a
    new key. The message says how to accept a new key deliberately."""


class ClientKeyRefused(ServerKeyError):
    """The server admits only the client keys its admin listed, and not
    this client's; the message carries the public key to send the admin."""
