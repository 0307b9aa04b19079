"""The Python side of tests/python_interop.rs (run by that test, not by pytest).

Usage: interop_peer.py PORT

A Rust client has hosted the scene below. This peer joins, checks what it
downloaded exactly, then edits: a patch, a full chunked update, a lock and
presence. It prints ``downloaded`` and ``edited`` on stdout as it goes, so
the Rust side knows when to look. Then it waits for the Rust side's patch,
checks it was applied here exactly as the Rust side computed it, and prints
``verified``. Exit status 0 means every check passed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from replication_client import (  # noqa: E402
    COMMON,
    Event,
    Session,
    SnapshotProgress,
    Updated,
)
from replication_client import patch as P  # noqa: E402

T = 20.0

# What the Rust host uploads (the same values are written in the Rust test).
MAT = {"name": "Red", "color": [1.0, 0.0, 0.0]}
MESH = {
    "vertices": [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]],
    "blob": bytes(i % 251 for i in range(10_000)),  # larger than chunk_bytes
}
CUBE = {
    "name": "Cube",
    "location": [0.0, 0.0, 0.0],
    "tags": ["a"],
    "props": {1: "int key", "é": "unicode"},
}
# This peer's edits and what they give.
PY_PATCH = [
    P.set_op(["location", 1], 2.5),
    P.splice_op(["tags"], 1, 0, ["b"]),
    P.set_op(["props", 2], "new int key"),
    P.splice_op(["name"], 0, 1, "Ć"),
]
NEW_MESH = {
    "vertices": [[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]],
    "blob": bytes(i * 7 % 256 for i in range(9_000)),
}
# The state after the Rust side's patch.
FINAL_CUBE = {
    "name": "Ćübe",
    "location": [-1.0, 2.5, 0.0],
    "tags": ["b"],
    "props": {"é": "changed", 2: "new int key"},
}


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"interop peer: {what}")


def typed(v: object) -> object:
    """Keeps types and map order in comparisons (1.0 is not 1)."""
    if isinstance(v, dict):
        return ("map", [(typed(k), typed(x)) for k, x in v.items()])
    if isinstance(v, list):
        return ("array", [typed(x) for x in v])
    return (type(v).__name__, v)


def say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    port = int(sys.argv[1])
    session = Session("127.0.0.1", port, "py")
    events: list[Event] = []
    session.on(Event, events.append)
    auth = session.authenticate(timeout=T)
    check(auth.status == "RUNNING", f"status {auth.status}")
    check(auth.chunk_bytes == 4096, f"chunk_bytes {auth.chunk_bytes}")
    session.download(timeout=T)

    order = [e.uuid for e in events if isinstance(e, Updated) and e.source == "snapshot"]
    check(order == ["mat", "mesh", "cube"], f"snapshot order {order}")
    check(SnapshotProgress(3, 3) in events, "download progress up to 3 of 3")
    blocks = session.blocks
    for uuid, type_id, deps, data in (
        ("mat", "Material", [], MAT),
        ("mesh", "Mesh", ["mat"], MESH),
        ("cube", "Object", ["mesh"], CUBE),
    ):
        b = blocks[uuid]
        check(typed(b.data) == typed(data), f"{uuid} data {b.data!r:.200}")
        check(
            (b.type_id, b.deps, b.owner, b.revision) == (type_id, deps, COMMON, 1),
            f"{uuid} header {b}",
        )
    say("downloaded")

    session.set_metadata({"ready": True, "lang": "python"})
    session.push_patch("cube", PY_PATCH)  # base_revision 1, from the replica
    session.push("mesh", NEW_MESH)  # 9 KB: chunked on the publisher channel
    session.lock(["mat"], timeout=T)
    say("edited")

    session.wait_until(lambda: blocks["cube"].revision == 3, T)
    update = [e for e in events if isinstance(e, Updated) and e.uuid == "cube"][-1]
    check(
        update.source == "update" and update.sender == "rust" and update.patch is not None,
        f"the Rust patch was not applied here: {update}",
    )
    check(
        typed(blocks["cube"].data) == typed(FINAL_CUBE),
        f"cube after the Rust patch {blocks['cube'].data}",
    )
    fetched = session.fetch("cube", timeout=T)
    check(typed(fetched.data) == typed(FINAL_CUBE) and fetched.revision == 3, "server state")
    say("verified")
    session.leave()


if __name__ == "__main__":
    main()
