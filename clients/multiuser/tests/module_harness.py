"""Blender 4.5 LTS and 5.0 driven by a test, as Python modules (PyPI's
``bpy``, installed by bpy_module.py), each with the Multi-User extension
installed from a zip.

The control connection and the artist's actions are those of the Blender
3.4 tests (blender_harness.py, blender/control.py, blender/artist.py);
only the process differs: a Python running ``blender/module_driver.py``,
which turns Blender's main loop by hand (blender/pump.py).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import bpy_module
from blender_harness import Blender, T, blender_path

MODULE_DRIVER = Path(__file__).resolve().parent / "blender" / "module_driver.py"


class ModuleBlender(Blender):
    """Blender ``line`` ("4.5", "5.0") as a Python module, with the
    extension installed from ``addon_zip``."""

    startup_deadline = 3 * T  # a cold start reads a 1 GB installation

    def __init__(self, name: str, line: str, addon_zip: Path, workdir: Path) -> None:
        super().__init__(name, addon_zip, workdir)
        self.site = bpy_module.require(line)

    def command(self, port: int) -> list[str]:
        # -S: none of the test's own site-packages; the extension's wheels
        # must be what the add-on gets.
        return [
            sys.executable,
            "-S",
            "-u",
            str(MODULE_DRIVER),
            str(port),
            str(self.addon_zip),
            self.name,
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BLENDER_"))}
        env.update(
            PATH=blender_path(),
            PYTHONPATH=str(self.site),
            TMPDIR=str(self.workdir),
            # Preferences, extensions and their wheels: this Blender's own.
            BLENDER_USER_RESOURCES=str(self.workdir / "resources"),
        )
        return env

    def stop(self) -> None:
        super().stop()
        if self.proc is not None:
            # Whatever the driver left behind (a hosted server, were the
            # driver to fail before leaving its session) goes with it.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
