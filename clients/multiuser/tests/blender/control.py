"""The test's control connection, as both drivers serve it (driver.py in
Blender's own main loop, module_driver.py in a Python running Blender as a
module).

The test listens on a local TCP port; the driver connects to it and reads
the test's requests, one JSON object per line, answering each on its own
line:

- ``{"id": n, "exec": source}`` runs ``source`` (``result = ...`` sets the
  answer's value);
- ``{"id": n, "eval": expression}`` answers the expression's value;
- ``{"id": n, "quit": true}`` is answered, then the driver ends Blender.

Both run on Blender's main thread, where an artist's clicks run too, with
``bpy``, ``mathutils``, ``plain`` and ``artist`` (the artist's actions,
artist.py) in scope.
"""

import json
import socket
import traceback

import bpy
import mathutils


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


class Channel:
    """The connection to the test, read without blocking Blender."""

    def __init__(self, port, name):
        self.sock = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
        self.sock.setblocking(False)
        self.buffer = b""
        self.namespace = {"bpy": bpy, "mathutils": mathutils, "plain": plain, "NAME": name}

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

    def answer(self, request):
        try:
            if "eval" in request:
                value = eval(request["eval"], self.namespace)
            else:
                self.namespace.pop("result", None)
                exec(request["exec"], self.namespace)
                value = self.namespace.get("result")
            return {"id": request["id"], "ok": True, "value": plain(value)}
        except Exception:
            return {"id": request["id"], "ok": False, "error": traceback.format_exc()}

    def serve(self):
        """Answers what the test asked since the last call. False once the
        test asked to quit or went away: the driver then ends Blender."""
        try:
            for request in self.requests():
                if request.get("quit"):
                    self.send({"id": request["id"], "ok": True, "value": None})
                    return False
                self.send(self.answer(request))
        except ConnectionError:
            return False
        return True
