"""Blender as a Python module (PyPI's ``bpy``), for the tests of the
Multi-User extension in Blender 4.5 LTS and 5.0, which Debian does not
package.

Each version is installed once with ``pip install --target`` into a
directory of its own, ``bpy-VERSION`` under ``$REPLICATION_BLENDER_SITE``
(scripts/test.sh keeps it in .venv; .ci/run in a cache that outlives the
checkout), or else under the running virtual environment, and reused by
every later run: the wheels are large (about 370 MB each, 1 GB installed).
A version is only visible once its installation is complete.

Run as a script, it installs every version the tests use and fails when
one cannot be installed (.ci/run does this before the tests, so that they
never skip there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from installs import pip_into

VERSIONS = {"4.5": "4.5.15", "5.0": "5.0.1"}
"""The ``bpy`` release the tests run for each Blender line (both are built
for Python 3.11 only)."""
PYTHON = (3, 11)


def base() -> Path:
    configured = os.environ.get("REPLICATION_BLENDER_SITE")
    if configured:
        return Path(configured)
    if sys.prefix != sys.base_prefix:  # a virtual environment
        return Path(sys.prefix) / "blender-site"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "replication-serve" / "blender-site"


class InstallError(Exception):
    pass


def install(line: str) -> Path:
    """The directory holding ``bpy`` for Blender ``line`` ("4.5", "5.0"),
    installed there first if it is not yet."""
    version = VERSIONS[line]
    site = base() / f"bpy-{version}"
    if (site / "bpy").is_dir():
        return site
    if sys.version_info[:2] != PYTHON:
        raise InstallError(
            f"bpy {version} is built for Python {PYTHON[0]}.{PYTHON[1]} only; "
            f"this is Python {sys.version_info[0]}.{sys.version_info[1]}"
        )
    partial = site.with_name(f"{site.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    done = pip_into(partial, "--only-binary=:all:", f"bpy=={version}", timeout=1800)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise InstallError(f"pip could not install bpy=={version}:\n{done.stderr[-2000:]}")
    try:
        partial.rename(site)
    except OSError:
        # Another run finished first; its copy is as good.
        shutil.rmtree(partial, ignore_errors=True)
        if not (site / "bpy").is_dir():
            raise
    return site


def require(line: str) -> Path:
    """``install``, or the test is skipped with the reason."""
    import pytest

    try:
        return install(line)
    except InstallError as e:
        pytest.skip(f"Blender {line} as a Python module is not available: {e}")


def main() -> int:
    status = 0
    for line in VERSIONS:
        try:
            print(f"bpy for Blender {line}: {install(line)}")
        except (InstallError, OSError, subprocess.TimeoutExpired) as e:
            print(f"error: bpy for Blender {line}: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
