"""Blender's main loop, as far as an add-on sees it, for Blender running as
a Python module (the ``bpy`` wheel), which has no main loop of its own.

In module mode ``bpy.app.timers.register`` accepts functions but nothing
ever calls them, and nothing evaluates the scene after a change, so the
``depsgraph_update_post`` handlers that notice an artist's edits never
run. The pump stands in for both: it takes the place of
``bpy.app.timers``' functions (before the add-on is enabled, so that it
captures every timer the add-on registers) and, on each turn, calls the
timers that are due, as Blender's main loop does, then evaluates every
window's view layer, as Blender does after handling events.
"""

import time
import traceback

import bpy


class Pump:
    def __init__(self):
        self.due = {}  # function -> monotonic time it is next due
        timers = bpy.app.timers
        timers.register = self.register
        timers.unregister = self.unregister
        timers.is_registered = self.is_registered

    def register(self, function, first_interval=0.0, persistent=False):
        self.due[function] = time.monotonic() + first_interval

    def unregister(self, function):
        if function not in self.due:
            raise ValueError("Error: function is not registered")
        del self.due[function]

    def is_registered(self, function):
        return function in self.due

    def next_in(self):
        """Seconds until the next timer is due (0 when one is late)."""
        if not self.due:
            return 1.0
        return max(0.0, min(self.due.values()) - time.monotonic())

    def turn(self):
        """One turn of the main loop: due timers, then the scene's evaluation."""
        now = time.monotonic()
        for function in [f for f, at in self.due.items() if at <= now]:
            if function not in self.due:  # unregistered by an earlier timer
                continue
            try:
                interval = function()
            except Exception:
                # As Blender does: the traceback, and the timer is dropped.
                traceback.print_exc()
                interval = None
            if function not in self.due:  # it unregistered itself
                continue
            if interval is None:
                del self.due[function]
            else:
                self.due[function] = time.monotonic() + interval
        for window in bpy.context.window_manager.windows:
            window.view_layer.update()
