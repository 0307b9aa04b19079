"""What the wire half hands to the consumer half of a session."""

from __future__ import annotations

import threading
from typing import Any

from .codec import unpack
from .errors import ReplicationError
from .protocol import Channel

__all__ = ["ANSWERS", "Message", "Request", "Ended"]

ANSWERS = {"SERVER_INFO", "AUTH", "RIGHT", "DELETE", "KICK", "DATABLOCK"}
"""Server messages that carry the id of the request they answer."""


class Message:
    """One whole server message (chunks already joined)."""

    __slots__ = ("channel", "header", "payload", "claimed", "_data")

    def __init__(self, channel: Channel, header: dict[str, Any], payload: bytes | None) -> None:
        self.channel = channel
        self.header = header
        self.payload = payload
        # An ERROR already reported elsewhere (raised by a blocking call,
        # or part of an upload's result), so not repeated as ServerError.
        self.claimed = False
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


class Ended:
    """The session ended; posted by the wire half for the consumer."""

    def __init__(self, reason: str, by_server: bool, failed: list[Request]) -> None:
        self.reason = reason
        self.by_server = by_server
        self.failed = failed
