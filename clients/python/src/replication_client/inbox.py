"""What the wire half hands to the consumer half of a session."""

from __future__ import annotations

import threading
from typing import Any

from .codec import unpack
from .errors import ReplicationError
from .protocol import Channel

__all__ = ["ANSWERS", "Message", "Request", "Push", "Ended", "Abandoned"]

ANSWERS = {
    "SERVER_INFO",
    "AUTH",
    "RIGHT",
    "DELETE",
    "KICK",
    "DATABLOCK",
    "ACK",
    "ROOM",
    "ROOM_SETTINGS",
}
"""Server messages that carry the id of the request they answer."""


class Message:
    """One whole server message (chunks already joined)."""

    __slots__ = ("channel", "header", "payload", "claimed", "rid", "_data")

    def __init__(self, channel: Channel, header: dict[str, Any], payload: bytes | None) -> None:
        self.channel = channel
        self.header = header
        self.payload = payload
        # An ERROR already reported elsewhere (raised by a blocking call,
        # or part of an upload's result), so not repeated as ServerError.
        self.claimed = False
        # The id of the request this answers or refuses, as the wire half
        # found it (an ERROR about a CHUNK of a push gets the push's id).
        self.rid: int | None = None
        self._data: Any = None

    def data(self) -> Any:
        if self._data is None and self.payload is not None:
            self._data = unpack(self.payload)
        return self._data


class Request:
    """A request waiting for its answer (or ERROR), matched by id."""

    __slots__ = ("id", "kind", "blocking", "done", "answer", "error")

    def __init__(self, rid: int, kind: str, blocking: bool) -> None:
        self.id = rid
        self.kind = kind
        self.blocking = blocking
        self.done = threading.Event()
        self.answer: Message | None = None
        self.error: ReplicationError | None = None


class Push(Request):
    """One of our own UPDATEs, waiting for its ACK (or ERROR).

    ``transfer`` is set when its payload is chunked, so that an ERROR about
    one of its CHUNKs can be traced back to it; ``mirrored`` tells whether
    the replica already holds the change (push, and push_patch with
    ``check``) or not (``check=False``); ``patch`` whether it is a patch."""

    __slots__ = ("uuid", "transfer", "mirrored", "patch")

    def __init__(
        self,
        rid: int,
        blocking: bool,
        uuid: str,
        transfer: int | None,
        *,
        mirrored: bool,
        patch: bool,
    ) -> None:
        super().__init__(rid, "update", blocking)
        self.uuid = uuid
        self.transfer = transfer
        self.mirrored = mirrored
        self.patch = patch


class Ended:
    """The session ended; posted by the wire half for the consumer."""

    def __init__(self, reason: str, by_server: bool, failed: list[Request]) -> None:
        self.reason = reason
        self.by_server = by_server
        self.failed = failed


class Abandoned:
    """Requests of a room the client has left that will get no answer
    there (pushes the server dropped, FETCHes whose answer was dropped),
    failed with :class:`RoomLeft`; posted by the wire half so that the
    consumer forgets the pushes and reports the non-blocking requests as
    :class:`RequestFailed`."""

    def __init__(self, failed: list[Request]) -> None:
        self.failed = failed
