"""Fixtures of the Multi-User compatibility tests (helpers in support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Server


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """Servers a test starts; stopped at teardown."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()
