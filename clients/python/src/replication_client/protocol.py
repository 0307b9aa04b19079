"""Protocol version 1 constants and message framing (docs/protocol.md)."""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Any

from .codec import pack

__all__ = [
    "PROTOCOL_VERSION",
    "Channel",
    "new_identity",
    "message",
    "payload_messages",
]

PROTOCOL_VERSION = 1
DEFAULT_CHUNK_BYTES = 1 << 20
"""Used only until the AUTH reply announces ``chunk_bytes``."""


class Channel(IntEnum):
    """The four channels; the value is the offset from the base port."""

    COMMANDS = 0
    SUBSCRIBER = 1
    PUBLISHER = 2
    HEARTBEAT = 3


def new_identity() -> bytes:
    """16 random bytes for ZMQ_ROUTING_ID. libzmq reserves identities whose
    first byte is zero, so the first byte is forced non-zero."""
    raw = bytearray(os.urandom(16))
    raw[0] |= 1
    return bytes(raw)


def message(kind: str, **fields: Any) -> dict[str, Any]:
    """A header map. Optional keys passed as None are left out, as the
    protocol allows, so callers can pass every optional key unconditionally."""
    header: dict[str, Any] = {"type": kind}
    header.update((k, v) for k, v in fields.items() if v is not None)
    return header


def payload_messages(
    header: dict[str, Any], payload: bytes, chunk_bytes: int, transfer: int
) -> list[list[bytes]]:
    """The messages (frame lists) that carry ``header`` with ``payload``.

    A payload up to ``chunk_bytes`` travels inline as the data frame. A
    larger one is announced with ``transfer``, ``chunks`` and ``size`` on a
    header without data frame, and follows in CHUNK messages of
    ``chunk_bytes`` each (the last one shorter), as section 5 asks.
    """
    if len(payload) <= chunk_bytes:
        return [[pack(header), payload]]
    slices = [payload[i : i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)]
    announced = dict(header, transfer=transfer, chunks=len(slices), size=len(payload))
    out = [[pack(announced)]]
    out.extend(
        [pack({"type": "CHUNK", "transfer": transfer, "index": i}), piece]
        for i, piece in enumerate(slices)
    )
    return out
