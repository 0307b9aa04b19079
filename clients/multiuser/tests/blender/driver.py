"""Runs inside a real Blender: installs the Multi-User add-on from a zip, as
an artist would (Preferences > Add-ons > Install), and then does what the
test asks, from Blender's main loop.

The test listens on a local TCP port and passes it after ``--``; this script
connects to it and registers a ``bpy.app.timers`` function that reads the
test's requests, one JSON object per line, and answers each on its own line:

- ``{"id": n, "exec": source}`` runs ``source`` (``result = ...`` sets the
  answer's value);
- ``{"id": n, "eval": expression}`` answers the expression's value.

Both run on Blender's main thread between frames, where an artist's clicks
run too, with ``bpy``, ``mathutils``, the helpers below and ``artist`` (the
artist's actions, artist.py) in scope. What a test does to the add-on goes
through its operators and properties only.

Usage: blender [--factory-startup] --python driver.py -- PORT ADDON_ZIP NAME
"""

import json
import os
import socket
import sys
import traceback

import bpy
import mathutils

PORT, ADDON_ZIP, NAME = sys.argv[sys.argv.index("--") + 1 :][:3]


def plain(value):
    """A JSON-friendly copy of what Blender or the add-on returns."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(
        value, (mathutils.Vector, mathutils.Color, mathutils.Euler, mathutils.Quaternion)
    ):
        return [float(v) for v in value]
    if isinstance(value, mathutils.Matrix):
        return [[float(v) for v in row] for row in value]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "bpy_prop_array":
        return [plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return repr(value)


NAMESPACE = {
    "bpy": bpy,
    "mathutils": mathutils,
    "plain": plain,
    "NAME": NAME,
}


class Channel:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
        self.sock.setblocking(False)
        self.buffer = b""

    def send(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def requests(self):
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                raise ConnectionError("the test closed the control connection")
            self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            yield json.loads(line)


def answer(request):
    try:
        if "eval" in request:
            value = eval(request["eval"], NAMESPACE)
        else:
            NAMESPACE.pop("result", None)
            exec(request["exec"], NAMESPACE)
            value = NAMESPACE.get("result")
        return {"id": request["id"], "ok": True, "value": plain(value)}
    except Exception:
        return {"id": request["id"], "ok": False, "error": traceback.format_exc()}


def tick():
    try:
        for request in channel.requests():
            if request.get("quit"):
                channel.send({"id": request["id"], "ok": True, "value": None})
                bpy.ops.wm.quit_blender()
                return None
            channel.send(answer(request))
    except ConnectionError:
        bpy.ops.wm.quit_blender()
        return None
    return 0.01


bpy.ops.preferences.addon_install(filepath=ADDON_ZIP, overwrite=True)
bpy.ops.preferences.addon_enable(module="multi_user")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import artist  # noqa: E402  (needs the add-on enabled)

NAMESPACE["artist"] = artist
channel = Channel(PORT)
channel.send({"hello": NAME, "blender": list(bpy.app.version), "background": bpy.app.background})
bpy.app.timers.register(tick, first_interval=0.0, persistent=True)
