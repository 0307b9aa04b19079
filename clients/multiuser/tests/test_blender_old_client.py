"""An artist whose Multi-User still has its own library (pickled frames)
connects to replication-serve: the server recognises the pickled login
without unpickling it and answers with bytes that add-on displays, so the
artist reads why and where to look instead of "server not found" 5 s
later."""

from __future__ import annotations

import time
from pathlib import Path

from blender_harness import Blender, blender_python
from support import REFERENCE, Server, reference_package, release

INITIAL = 0


def test_an_unconverted_add_on_is_told_what_to_install(tmp_path: Path, servers):
    zip_path = reference_package(release("0.5.8"), tmp_path / "old.zip", blender_python())
    server = Server(tmp_path, None).start()
    servers.append(server)
    blender = Blender("old", zip_path, tmp_path).start()
    try:
        blender.run("artist.setup_user('old')")
        start = time.monotonic()
        blender.run(f"artist.connect({server.port})")
        blender.wait_until(f"artist.state() == {INITIAL}", what="the old add-on's session ends")
        elapsed = time.monotonic() - start
        log = blender.log()
        assert "authentification refused [FAILED: this server is replication-serve" in log, log
        assert "see docs/blender.md" in log
        assert "server not found" not in log
        # The add-on gives up on its own after its 5 s connection timeout;
        # the answer came well before.
        assert elapsed < 5, f"{REFERENCE} took {elapsed:.1f} s to be answered"
    finally:
        blender.stop()
    assert "an old Multi-User client tried to log in" in server.log()
