"""First Blender process of test_blender.py, run with ``blender -b``.

Usage: blender -b --factory-startup --python-exit-code 1 --python host_scene.py
       -- PORT SITE_DIR SRC_DIR RESULT_JSON

Builds a real mesh object with bpy, serialises it to two datablocks (the
mesh, and the object that depends on it), uploads them as the admin, then
moves the object and edits one vertex, sending each change as a patch. It
waits for the viewer's presence metadata to show each state before making
the next change, so the viewer sees every step, not only the last one.
This process is an ordinary script: blocking calls are fine here.
"""

from __future__ import annotations

import json
import sys

argv = sys.argv[sys.argv.index("--") + 1 :]
PORT, SITE, SRC, RESULT = int(argv[0]), argv[1], argv[2], argv[3]
sys.path[:0] = [SITE, SRC]

import bmesh  # noqa: E402
import bpy  # noqa: E402

from replication_client import COMMON, Datablock, Session  # noqa: E402
from replication_client import patch as P  # noqa: E402

T = 60.0
START = (1.0, 2.0, 3.0)
MOVED = (4.0, 5.0, 6.0)
VERTEX = (9.0, 9.0, 9.0)


def build_cube() -> bpy.types.Object:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    mesh = bpy.data.meshes.new("SharedMesh")
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=2.0)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new("SharedCube", mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = START
    return obj


def mesh_data(mesh: bpy.types.Mesh) -> dict:
    return {
        "name": mesh.name,
        "vertices": [list(v.co) for v in mesh.vertices],
        "polygons": [list(p.vertices) for p in mesh.polygons],
    }


def object_data(obj: bpy.types.Object) -> dict:
    return {"name": obj.name, "location": list(obj.location), "mesh": "mesh-1"}


def viewer_shows(session: Session, location: tuple, vertex0: list) -> bool:
    """Whether the viewer's presence reports this state of its bpy objects."""
    for user in session.users:
        if user.name == "viewer" and isinstance(user.metadata, dict):
            seen = user.metadata
            return seen.get("location") == list(location) and seen.get("vertex0") == vertex0
    return False


def main() -> None:
    obj = build_cube()
    mesh = obj.data
    first_vertex = list(mesh.vertices[0].co)
    session = Session("127.0.0.1", PORT, "host", admin_password="admin")
    session.authenticate(timeout=T)
    session.upload(
        [
            Datablock("obj-1", "Object", object_data(obj), owner=COMMON, deps=["mesh-1"]),
            Datablock("mesh-1", "Mesh", mesh_data(mesh), owner=COMMON),
        ],
        timeout=T,
    )
    session.wait_until(lambda: viewer_shows(session, START, first_vertex), T)

    obj.location = MOVED
    session.push_patch("obj-1", [P.set_op(["location"], list(obj.location))])
    session.wait_until(lambda: viewer_shows(session, MOVED, first_vertex), T)

    mesh.vertices[0].co = VERTEX
    session.push_patch("mesh-1", [P.set_op(["vertices", 0], list(mesh.vertices[0].co))])
    session.wait_until(lambda: viewer_shows(session, MOVED, list(VERTEX)), T)

    session.set_metadata({"done": True})  # the viewer may stop now
    session.wait_until(lambda: all(u.name != "viewer" for u in session.users), T)
    with open(RESULT, "w") as f:
        json.dump({"background": bpy.app.background, "first_vertex": first_vertex}, f)
    session.leave()


main()
