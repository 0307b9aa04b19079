"""pip, installing into a folder of its own (the tests' Blender libraries,
the add-on's own library for the baseline, the bpy modules)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip_into(target: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``pip install --target target ARGS...`` with this Python; the caller
    checks ``returncode`` and reports ``stderr``."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["--target", str(target), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
