"""Runs inside a real Blender: installs the Multi-User add-on from a zip, as
an artist would (Preferences > Add-ons > Install), and then does what the
test asks (control.py), from Blender's main loop: a ``bpy.app.timers``
function serves the control connection between frames, where an artist's
clicks run too. What a test does to the add-on goes through its operators
and properties only.

Usage: blender [--factory-startup] --python driver.py -- PORT ADDON_ZIP NAME
"""

import os
import sys

import bpy

PORT, ADDON_ZIP, NAME = sys.argv[sys.argv.index("--") + 1 :][:3]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from control import Channel  # noqa: E402


def tick():
    if channel.serve():
        return 0.01
    bpy.ops.wm.quit_blender()
    return None


bpy.ops.preferences.addon_install(filepath=ADDON_ZIP, overwrite=True)
bpy.ops.preferences.addon_enable(module="multi_user")
import artist  # noqa: E402  (needs the add-on enabled)

channel = Channel(PORT, NAME)
channel.namespace["artist"] = artist
channel.send({"hello": NAME, "blender": list(bpy.app.version), "background": bpy.app.background})
bpy.app.timers.register(tick, first_interval=0.0, persistent=True)
