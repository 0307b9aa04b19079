"""Incoming stream bookkeeping: chunk reassembly and snapshot acknowledgement.

Both run on the thread that reads the sockets, because the server waits for
SNAPSHOT_ACK: acknowledging cannot depend on the add-on polling.
"""

from __future__ import annotations

from typing import Any

from .errors import ProtocolError
from .transport import Frame

__all__ = ["Reassembler", "SnapshotWindow"]


class Reassembler:
    """Joins DATABLOCK/UPDATE payloads the server sends as CHUNKs (section 5)."""

    def __init__(self) -> None:
        # Per transfer: the announcing header, the chunks so far and their size.
        self._partial: dict[int, tuple[dict[str, Any], list[Frame], list[int]]] = {}

    def header(self, header: dict[str, Any]) -> bool:
        """Registers a header that announces a transfer; True if it did."""
        transfer = header.get("transfer")
        if transfer is None:
            return False
        size = header.get("size")
        if type(size) is not int or size < 1:
            raise ProtocolError(f"transfer {transfer} announces an invalid size {size!r}")
        self._partial[transfer] = (header, [], [0])
        return True

    def chunk(
        self, header: dict[str, Any], data: Frame | None
    ) -> tuple[dict[str, Any], bytes] | None:
        """Adds a CHUNK; returns (announcing header, payload) when complete.

        The chunks are kept as they came (views of libzmq's buffers when
        large) and copied once, into the whole payload."""
        transfer = header.get("transfer")
        entry = self._partial.get(transfer)  # type: ignore[arg-type]
        if entry is None:
            raise ProtocolError(f"CHUNK of unknown transfer {transfer!r}")
        announced, parts, received = entry
        if data:
            parts.append(data)
            received[0] += len(data)
        size = announced["size"]
        if received[0] < size:
            return None
        del self._partial[transfer]  # type: ignore[arg-type]
        if received[0] > size:
            raise ProtocolError(f"transfer {transfer} sent {received[0]} bytes, announced {size}")
        return announced, b"".join(parts)

    def drop(self, transfer: Any) -> dict[str, Any] | None:
        """Forgets a transfer under way; returns its announcing header."""
        entry = self._partial.pop(transfer, None)
        return entry[0] if entry is not None else None

    def clear(self) -> None:
        self._partial.clear()


class SnapshotWindow:
    """Counts the snapshot stream and says when to send SNAPSHOT_ACK.

    Every subscriber message from BEGIN to END counts, CHUNKs included, and
    a DATABLOCKS once, with all its bytes, however many datablocks it
    carries (section 16); an acknowledgement is due whenever what arrived
    since the last one reaches half the window in messages or in bytes
    (section 3), which never stalls the stream.
    """

    def __init__(self) -> None:
        self.active = False
        self._received = self._bytes = self._acked = self._acked_bytes = 0
        self._window = self._window_bytes = 1

    def count(self, header: dict[str, Any], size: int) -> int | None:
        """Counts one subscriber message of ``size`` bytes (header plus data
        frame). Returns the cumulative count to acknowledge, if one is due."""
        kind, step = header.get("type"), header.get("step")
        if kind == "SNAPSHOT" and step == "BEGIN":
            self.active = True
            self._received = self._bytes = self._acked = self._acked_bytes = 0
            self._window = max(1, int(header.get("window") or 1))
            self._window_bytes = max(1, int(header.get("window_bytes") or 1))
        if not self.active:
            return None
        self._received += 1
        self._bytes += size
        if kind == "SNAPSHOT" and step == "END":
            self.active = False  # END needs no acknowledgement
            return None
        if (self._received - self._acked) * 2 >= self._window or (
            self._bytes - self._acked_bytes
        ) * 2 >= self._window_bytes:
            self._acked, self._acked_bytes = self._received, self._bytes
            return self._received
        return None
