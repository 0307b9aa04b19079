"""Runs Blender as a Python module (the ``bpy`` wheel): installs the
Multi-User extension from a zip, as an artist's "Install from Disk" does,
and does what the test asks (control.py), turning Blender's main loop by
hand (pump.py) between requests.

Run with ``python -S``, the ``bpy`` wheel's directory alone on PYTHONPATH:
the test's own site-packages (with its numpy and this project's packages)
must not shadow what the extension brings in its wheels.

Usage: python -S module_driver.py PORT ADDON_ZIP NAME
"""

import os
import select
import sys

import bpy

PORT, ADDON_ZIP, NAME = sys.argv[1:4]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import blender5  # noqa: E402
from control import Channel  # noqa: E402
from pump import Pump  # noqa: E402

blender5.restore()
pump = Pump()
done = bpy.ops.extensions.package_install_files(
    filepath=ADDON_ZIP, repo="user_default", enable_on_install=True
)
if done != {"FINISHED"}:
    raise SystemExit(f"installing {ADDON_ZIP} failed: {done}")
import artist  # noqa: E402  (needs the add-on enabled)

channel = Channel(PORT, NAME)
channel.namespace["artist"] = artist
channel.namespace["pump"] = pump
channel.send({"hello": NAME, "blender": list(bpy.app.version), "background": bpy.app.background})
while channel.serve():
    pump.turn()
    # Wait for the test or the next timer, like an idle main loop.
    select.select([channel.sock], [], [], min(pump.next_in(), 0.01))
# As an artist closing Blender: the session ends first (a hosted server
# with it).
artist.disconnect()
sys.stdout.flush()
sys.stderr.flush()
# Then leave at once: the bpy module's interpreter exit hangs while Python
# handlers (the add-on's) are registered.
os._exit(0)
