"""Protocol version 2 constants and message framing (docs/protocol.md)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, NamedTuple

from .codec import pack
from .errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_BATCH",
    "BATCH_KINDS",
    "BatchKind",
    "Channel",
    "new_identity",
    "message",
    "payload_messages",
    "batch_groups",
    "batch_message",
    "split_batch",
]

PROTOCOL_VERSION = 2
DEFAULT_CHUNK_BYTES = 1 << 20
"""Used only until the AUTH reply announces ``chunk_bytes``."""
MAX_BATCH = 1024
"""Most updates one UPDATES message may carry (section 15), and most
datablocks one DATABLOCKS may carry (section 16)."""
CHUNK_KEYS = ("transfer", "chunks", "size")
"""The header keys that announce a chunked payload (section 5)."""


class BatchKind(NamedTuple):
    """How a batch message carries its items: the key of the list of their
    headers, the ``type`` each of those headers has, and the keys none of
    them may have (chunk keys included)."""

    items: str
    element: str
    forbidden: tuple[str, ...]


BATCH_KINDS = {
    # Section 15: forwarded updates.
    "UPDATES": BatchKind("updates", "UPDATE", CHUNK_KEYS),
    # Section 16: datablocks of the snapshot stream, never a FETCH answer.
    "DATABLOCKS": BatchKind("datablocks", "DATABLOCK", ("id", *CHUNK_KEYS)),
}
"""The batch messages the server sends, by ``type``: each means exactly
its items sent one by one, in order."""


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


def batch_groups(
    updates: Sequence[tuple[dict[str, Any], bytes]], chunk_bytes: int, max_header_bytes: int
) -> list[list[int]]:
    """Splits UPDATEs (header, payload), in order, into the messages that
    carry them: the indices of each message's updates. A group of one is
    sent as a single UPDATE (chunked when its payload is over
    ``chunk_bytes``), a larger group as one UPDATES (section 15) of at most
    :data:`MAX_BATCH` updates whose data frame stays within ``chunk_bytes``
    and whose header stays within ``max_header_bytes``."""
    groups: list[list[int]] = []
    current: list[int] = []
    data = header = 0
    for i, (h, payload) in enumerate(updates):
        if len(payload) > chunk_bytes:
            if current:
                groups.append(current)
                current = []
            groups.append([i])
            continue
        # An update's share of the UPDATES header: its own header, plus at
        # most 9 bytes for its length; 64 bytes cover the rest of the map.
        share = len(pack(h)) + 9
        if current and (
            len(current) == MAX_BATCH
            or data + len(payload) > chunk_bytes
            or header + share > max_header_bytes
        ):
            groups.append(current)
            current = []
        if not current:
            data, header = 0, 64
        current.append(i)
        data += len(payload)
        header += share
    if current:
        groups.append(current)
    return groups


def batch_message(
    items: Sequence[tuple[dict[str, Any], bytes]], kind: str = "UPDATES"
) -> list[bytes]:
    """The frames ``[header, data]`` of a batch of ``kind`` (UPDATES by
    default) carrying ``items`` (headers without chunk keys, with their
    payloads), in order."""
    return [
        pack(
            {
                "type": kind,
                BATCH_KINDS[kind].items: [h for h, _ in items],
                "lengths": [len(p) for _, p in items],
            }
        ),
        b"".join(p for _, p in items),
    ]


def split_batch(header: dict[str, Any], data: bytes | None) -> list[tuple[dict[str, Any], bytes]]:
    """The items a batch from the server carries (the forwarded UPDATEs of
    an UPDATES, the DATABLOCKs of a DATABLOCKS), as (header, payload) pairs
    in order, each exactly as it would have come alone. Raises
    :class:`ProtocolError`, before anything is handed out, when the batch is
    not as sections 15 and 16 describe it: items and ``lengths`` of
    different sizes, lengths that do not add up to the data frame, an
    element that is not a header of the right type, or that has a key the
    batch forbids (chunk keys; for a DATABLOCK, ``id`` too). A batch always
    has its data frame."""
    kind = header.get("type")
    spec = BATCH_KINDS.get(kind)
    if spec is None:
        raise ProtocolError(f"not a batch: {kind!r:.200}")
    items, lengths = header.get(spec.items), header.get("lengths")
    if not isinstance(items, list) or not isinstance(lengths, list) or not items:
        raise ProtocolError(f"{kind} without a list of {spec.items} and a list of lengths")
    if len(items) != len(lengths):
        raise ProtocolError(f"{kind} with {len(items)} {spec.items} but {len(lengths)} lengths")
    # Each item's data or patch is one MessagePack value: at least a byte.
    if not all(type(n) is int and n >= 1 for n in lengths):
        raise ProtocolError(f"{kind} with invalid lengths: {lengths!r:.200}")
    if data is None:
        raise ProtocolError(f"{kind} without a data frame")
    if sum(lengths) != len(data):
        raise ProtocolError(
            f"{kind} lengths add up to {sum(lengths)} bytes, its data frame has {len(data)}"
        )
    out: list[tuple[dict[str, Any], bytes]] = []
    offset = 0
    for i, (h, n) in enumerate(zip(items, lengths, strict=True)):
        if not isinstance(h, dict) or h.get("type") != spec.element:
            raise ProtocolError(f"{kind} element {i} is not a {spec.element} header: {h!r:.200}")
        bad = next((key for key in spec.forbidden if key in h), None)
        if bad is not None:
            what = "announces chunks" if bad in CHUNK_KEYS else f"has {bad!r}"
            raise ProtocolError(f"{kind} element {i} {what}")
        out.append((h, data[offset : offset + n]))
        offset += n
    return out
