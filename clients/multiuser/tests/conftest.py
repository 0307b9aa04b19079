"""Fixtures of the Multi-User compatibility tests (helpers in support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from blender_harness import blender_python
from support import Server, library, package, reference_package, release


@pytest.fixture(scope="session", autouse=True)
def client_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Known servers, client keys and the key of a server hosted from
    Blender go to folders of the test run, never the user's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REPLICATION_CONFIG_DIR", str(tmp_path_factory.mktemp("client-config")))
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))
        yield


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """Servers a test starts; stopped at teardown."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multi-User 0.5.8 as an artist installs it: with this project's
    library (or the add-on's own, with MULTIUSER_LIBRARY=reference)."""
    out = tmp_path_factory.mktemp("addon") / "multi_user-0.5.8.zip"
    python = blender_python()
    if library() == "reference":
        return reference_package(release("0.5.8"), out, python)
    return package(release("0.5.8"), out, "--python", python)


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Multi-User 0.6.9 extension as an artist installs it, with this
    project's library in its wheels."""
    out = tmp_path_factory.mktemp("extension") / "multi_user-0.6.9.zip"
    return package(release("0.6.9"), out)
