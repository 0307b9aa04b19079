"""Multi-User in real Blender: replication-serve with this project's
package, against the add-on's own library and server, same scene, same run.

For each library, two Blenders (Debian's Blender 3.4 under xvfb-run, as
in the tests) and a dedicated server:

1. Alice builds the scene (a 1,000,000-vertex mesh and 10,000 small
   objects), connects as the admin and clicks "Init"; the upload is timed.
2. Bob connects late: the time from his click to the session being ACTIVE
   (the library's part), and to every datablock built in his Blender (the
   add-on's part after it).
3. Alice holds an object and moves it 200 times: each move is timed from
   the change in her Blender to the moment Bob's library has it and to the
   moment his viewport's object is there (the add-on applies received
   changes on a one-second timer, which the second figure includes).
4. Alice moves one vertex of the big mesh: the bytes her Blender sends to
   the server for it (every channel but the heartbeat), counted by a relay.

Usage: scripts/bench-multiuser.sh [--moves N] [--vertices N] [--objects N]
[--only ours|reference] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(TESTS))

from blender_harness import Blender, blender_python  # noqa: E402
from relay import Relay  # noqa: E402
from steps import settle  # noqa: E402
from support import (  # noqa: E402
    ADMIN_PASSWORD,
    free_base_port,
    package,
    reference_package,
    release,
    server_binary,
)

BUILD_SCENE = """
import numpy as np
n = int({side})
xs, ys = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32))
co = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n, np.float32)], axis=1).ravel()
mesh = bpy.data.meshes.new('Big')
mesh.vertices.add(n * n)
mesh.vertices.foreach_set('co', co)
i = np.arange(n - 1)
a = (i[:, None] * n + i[None, :]).ravel()
quads = np.stack([a, a + 1, a + n + 1, a + n], axis=1).ravel().astype(np.int32)
faces = (n - 1) ** 2
mesh.loops.add(4 * faces)
mesh.loops.foreach_set('vertex_index', quads)
mesh.polygons.add(faces)
mesh.polygons.foreach_set('loop_start', np.arange(0, 4 * faces, 4, dtype=np.int32))
mesh.polygons.foreach_set('loop_total', np.full(faces, 4, np.int32))
mesh.update(calc_edges=True)
big = bpy.data.objects.new('Big', mesh)
big.display_type = 'BOUNDS'  # software GL under xvfb draws a million faces slowly
bpy.context.scene.collection.objects.link(big)
small = bpy.data.meshes.new('Small')
small.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
crowd = bpy.data.collections.new('Crowd')
bpy.context.scene.collection.children.link(crowd)
for k in range(int({objects})):
    o = bpy.data.objects.new(f'Obj{{k:05d}}', small)
    o.location = (k % 100, k // 100, 0)
    o.display_type = 'BOUNDS'
    crowd.objects.link(o)
result = (len(mesh.vertices), len(bpy.data.objects))
"""

# Bob's watcher: a timer that notes when each move reaches his library
# (the node's data) and his viewport (the object), on the clock both
# Blenders share (CLOCK_MONOTONIC).
WATCH = """
import time
from replication.interface import session
watch = {'uuid': bpy.data.objects['Obj00000'].uuid, 'want': None, 'received': {}, 'shown': {}}
def watcher():
    want = watch['want']
    if want is not None:
        node = session.repository.graph.get(watch['uuid'])
        now = time.monotonic()
        if want not in watch['received'] and node is not None and node.data:
            if node.data['transforms']['matrix_basis'][0][3] == want:
                watch['received'][want] = now
        if want not in watch['shown'] and bpy.data.objects['Obj00000'].location.x == want:
            watch['shown'][want] = now
    return 0.0
bpy.app.timers.register(watcher, persistent=True)
"""


def start_server(library: str, port: int, work: Path, libs: Path | None) -> subprocess.Popen:
    log = open(work / f"server-{library}.log", "wb")
    if library == "ours":
        binary = server_binary().parent.parent / "release" / "replication-serve"
        binary = binary if binary.is_file() else server_binary()
        command = [str(binary), "-p", str(port), "-pwd", ADMIN_PASSWORD, "-t", "60000"]
        command += ["--bind", "127.0.0.1", "--in-memory"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATION_")}
    else:
        assert libs is not None
        # The Python Blender runs (Debian's), for which the libraries were
        # installed; deepdiff 5.7 does not import under numpy 2.
        command = ["/usr/bin/python3", "-c", "from replication.server import cli; cli()"]
        command += ["-p", str(port), "-apwd", ADMIN_PASSWORD, "-spwd", "", "-t", "60000"]
        env = dict(os.environ, PYTHONPATH=str(libs))
    # The reference server writes multi_user_server.log where it runs.
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=work
    )


def addon(library: str, work: Path, python: str) -> Path:
    out = work / f"multi_user-{library}.zip"
    if library == "reference":
        return reference_package(release("0.5.8"), out, python)
    return package(release("0.5.8"), out, "--python", python)


def run(library: str, args: argparse.Namespace, work: Path, python: str) -> dict:
    zip_path = addon(library, work, python)
    libs = work / "reference-build" / "multi_user" / "libs" if library == "reference" else None
    port = free_base_port()
    server = start_server(library, port, work, libs)
    relays = [Relay(port).start(), Relay(port).start()]
    alice = Blender("alice", zip_path, work / library).start()
    bob = Blender("bob", zip_path, work / library).start()
    result: dict = {"library": library}
    try:
        side = round(args.vertices**0.5)
        built = alice.run(BUILD_SCENE.format(side=side, objects=args.objects), timeout=600)
        result["scene"] = {"vertices": built[0], "objects": built[1]}
        alice.run("artist.setup_user('alice'); artist.prefs().logging_level = 'INFO'")
        alice.run(f"artist.connect({relays[0].port}, admin_password={ADMIN_PASSWORD!r})")
        alice.wait_until("artist.state() == 10", timeout=120, what="the lobby")
        start = time.monotonic()
        alice.run("bpy.ops.session.init(init_method='BLEND')", timeout=1800)
        alice.wait_until("artist.state() == 2", timeout=1800, what="the upload")
        result["upload_s"] = time.monotonic() - start

        bob.run("artist.setup_user('bob'); artist.prefs().logging_level = 'INFO'")
        start = time.monotonic()
        bob.run(f"artist.connect({relays[1].port})")
        bob.wait_until("artist.state() == 2", timeout=1800, what="the late join")
        result["join_active_s"] = time.monotonic() - start
        bob.wait_until(
            "len(bpy.data.objects) >= "
            f"{args.objects + 1} and all(n.instance is not None for n in "
            "artist.session().repository.graph.values())",
            timeout=1800,
            what="the scene built",
        )
        result["join_built_s"] = time.monotonic() - start

        alice.run("artist.select('Obj00000')")
        alice.wait_until("artist.owner('Obj00000') == 'alice'", timeout=120)
        bob.wait_until("artist.owner('Obj00000') == 'alice'", timeout=120)
        bob.run(WATCH)
        settle(alice, bob)
        received, shown = [], []
        for i in range(1, args.moves + 1):
            want = float(1000 + i)
            bob.run(f"watch['want'] = {want}")
            sent = alice.run(
                f"bpy.data.objects['Obj00000'].location.x = {want}\n"
                "result = __import__('time').monotonic()"
            )
            bob.wait_until(f"{want} in watch['shown'] and {want} in watch['received']", timeout=120)
            got = bob.eval(f"(watch['received'][{want}], watch['shown'][{want}])")
            received.append(got[0] - sent)
            shown.append(got[1] - sent)
            settle(alice, bob)
        result["move_received_s"] = summary(received)
        result["move_shown_s"] = summary(shown)

        alice.run("artist.select('Big')")
        alice.wait_until("artist.owner('Big') == 'alice'", timeout=120)
        time.sleep(2)  # let the selection's own traffic pass before counting
        before = relays[0].sent()
        middle = built[0] // 2
        alice.run(f"m = bpy.data.objects['Big'].data; m.vertices[{middle}].co.z += 1.0; m.update()")
        bob.wait_until(f"bpy.data.objects['Big'].data.vertices[{middle}].co.z == 1.0", timeout=600)
        after = relays[0].sent()
        result["vertex_edit_bytes"] = {
            name: after[c] - before[c] for c, name in enumerate(("commands", "data", "publisher"))
        }
        result["vertex_edit_bytes"]["total"] = sum(result["vertex_edit_bytes"].values())
    finally:
        for blender in (bob, alice):
            blender.stop()
        for relay in relays:
            relay.stop()
        server.terminate()
        server.wait(30)
    return result


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=200)
    parser.add_argument("--vertices", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--only", choices=("ours", "reference"))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", help="work in this directory and keep it (logs of every process)")
    args = parser.parse_args()
    python = blender_python()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for library in ("ours", "reference"):
            if args.only in (None, library):
                results.append(run(library, args, work, python))
                print(json.dumps(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
