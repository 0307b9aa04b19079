"""Is a server online, and is it private? (SERVER_INFO, before any login.)

The add-on's refresh button asks this of every server in its list."""

from __future__ import annotations

import logging
from typing import Any

from replication_client import ReplicationError, Session

__all__ = ["server_info"]

log = logging.getLogger(__name__)


def server_info(address: str, timeout_ms: float) -> dict[str, Any] | None:
    """The server's SERVER_INFO answer with ``version`` added, or None when
    ``address`` ("host:port") does not answer within ``timeout_ms``."""
    host, _, port = address.rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        log.error("not a server address (host:port): %r", address)
        return None
    probe = Session(host or "127.0.0.1", port_number, "probe")
    try:
        info = probe.server_info(timeout=max(timeout_ms, 1) / 1000)
    except ReplicationError as e:
        log.debug("no answer from %s: %s", address, e)
        return None
    finally:
        probe.close()
    info["version"] = info.get("server_version")
    return info
