"""Second Blender process of test_blender.py: the add-on pattern.

Usage: blender --factory-startup -noaudio --python-exit-code 1 --python viewer_addon.py
       -- PORT SITE_DIR SRC_DIR RESULT_JSON

The script only creates a Session, registers callbacks and one
``bpy.app.timers`` function, and returns. From then on everything happens in
that timer, as in an add-on: it calls ``session.poll(0.0)`` (never waits)
and returns 0.05 to run again. Requests use the non-blocking forms; their
answers arrive as events. Received datablocks become real bpy meshes and
objects; the viewer reports the state of those bpy objects as presence
metadata (so the host knows what it has seen) and, at the end, in
RESULT_JSON.

Blender runs timers only in its window-manager loop, which ``blender -b``
never enters, so test_blender.py runs this process in Blender's normal
(non-background) mode on a virtual X display (xvfb-run).
"""

from __future__ import annotations

import json
import sys
import time
import traceback

argv = sys.argv[sys.argv.index("--") + 1 :]
PORT, SITE, SRC, RESULT = int(argv[0]), argv[1], argv[2], argv[3]
sys.path[:0] = [SITE, SRC]

import bpy  # noqa: E402

from replication_client import (  # noqa: E402
    Reply,
    RequestFailed,
    Session,
    SessionEnded,
    Updated,
    UsersChanged,
)

DEADLINE = time.monotonic() + 90.0
session = Session("127.0.0.1", PORT, "viewer")
objects: dict[str, str] = {}  # datablock uuid -> bpy object name
meshes: dict[str, str] = {}  # datablock uuid -> bpy mesh name
result: dict = {"observed": [], "timer_calls": 0, "background": bpy.app.background, "error": None}
finished = False


def bpy_state() -> dict:
    """What the real bpy objects look like now."""
    state = {}
    for uuid, name in objects.items():
        obj = bpy.data.objects[name]
        state[name] = {
            "uuid": uuid,
            "location": list(obj.location),
            "mesh": obj.data.name,
            "vertex0": list(obj.data.vertices[0].co),
            "vertices": len(obj.data.vertices),
            "in_scene": obj.name in bpy.context.scene.objects,
        }
    return state


def apply_mesh(uuid: str, data: dict) -> None:
    mesh = bpy.data.meshes.get(meshes.get(uuid, ""))
    if mesh is None or len(mesh.vertices) != len(data["vertices"]):
        mesh = mesh or bpy.data.meshes.new(data["name"])
        mesh.clear_geometry()
        mesh.from_pydata(data["vertices"], [], data["polygons"])
        meshes[uuid] = mesh.name
    else:
        for vertex, co in zip(mesh.vertices, data["vertices"], strict=True):
            vertex.co = co
    mesh.update()


def apply_object(uuid: str, data: dict) -> None:
    obj = bpy.data.objects.get(objects.get(uuid, ""))
    if obj is None:
        # The snapshot sends dependencies first: the mesh is already here.
        obj = bpy.data.objects.new(data["name"], bpy.data.meshes[meshes[data["mesh"]]])
        bpy.context.scene.collection.objects.link(obj)
        objects[uuid] = obj.name
    obj.location = data["location"]


def on_updated(event: Updated) -> None:
    if event.block.type_id == "Mesh":
        apply_mesh(event.uuid, event.block.data)
    elif event.block.type_id == "Object":
        apply_object(event.uuid, event.block.data)
    state = bpy_state()
    if state and (not result["observed"] or result["observed"][-1] != state):
        result["observed"].append(state)
        first = next(iter(state.values()))
        session.set_metadata({"location": first["location"], "vertex0": first["vertex0"]})


def on_reply(event: Reply) -> None:
    if event.kind == "auth":
        session.subscribe()  # at once, whether the session is in the lobby or running


def on_users(event: UsersChanged) -> None:
    if any(u.name == "host" and u.metadata.get("done") for u in event.users):
        finish()


def on_failure(event: RequestFailed | SessionEnded) -> None:
    if not finished:
        finish(f"{event}")


def finish(error: str | None = None) -> None:
    global finished
    finished = True
    result["error"] = error
    result["final"] = bpy_state()
    with open(RESULT, "w") as f:
        json.dump(result, f)


def tick() -> float | None:
    """The bpy.app.timers function: poll without waiting, come back soon."""
    result["timer_calls"] += 1
    try:
        if not finished:
            session.poll(0.0)
            if time.monotonic() > DEADLINE:
                finish("deadline passed")
    except Exception:
        finish(traceback.format_exc())
    if finished:
        session.leave(timeout=0.5)
        bpy.context.preferences.view.use_save_prompt = False
        bpy.ops.wm.quit_blender()
        return None
    return 0.05


session.on(Updated, on_updated)
session.on(Reply, on_reply)
session.on(UsersChanged, on_users)
session.on(RequestFailed, on_failure)
session.on(SessionEnded, on_failure)
session.authenticate_nowait()
bpy.app.timers.register(tick, first_interval=0.0)
