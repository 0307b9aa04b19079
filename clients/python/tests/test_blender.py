"""End to end in real, headless Blender: two Blender processes share a scene.

- ``blender/host_scene.py`` runs in ``blender -b``: it builds a mesh object
  with bpy, uploads it, then moves it and edits a vertex.
- ``blender/viewer_addon.py`` is driven only by a ``bpy.app.timers``
  function that polls the session, as an add-on is. It turns what it
  receives into real bpy objects and reports what those objects looked like.

How timers run headless: Blender executes ``bpy.app.timers`` callbacks only
from its window-manager main loop, and ``blender -b`` never enters that loop
(background mode exits once its scripts have run; no operator runs the
timers either). So the viewer runs Blender in its normal mode, with its real
main loop, on a virtual X display: ``xvfb-run blender --python ...``. The
host needs no timers and stays in ``-b``.

pyzmq and msgpack are installed with ``pip install --target`` into a
directory that the Blender scripts put first on ``sys.path``; Blender's own
Python and the system's are left untouched. The directory is
``$REPLICATION_BLENDER_SITE`` (scripts/test.sh keeps it in .venv) or a
temporary one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
TIMEOUT = 120


def require_tools() -> str:
    blender = shutil.which("blender")
    if blender is None:
        pytest.skip(
            "blender is not installed (Debian: apt-get install blender; .ci/run installs it)"
        )
    if shutil.which("xvfb-run") is None or shutil.which("xauth") is None:
        pytest.skip(
            "xvfb-run is not installed (Debian: apt-get install xvfb xauth; .ci/run installs it): "
            "bpy.app.timers only run in Blender's main loop, which `blender -b` never enters"
        )
    return blender


def blender_python(blender: str) -> str:
    """The version of the Python inside Blender, e.g. "3.11"."""
    out = subprocess.run(
        [
            blender,
            "-b",
            "--factory-startup",
            "--python-expr",
            "import sys; print('PYTHON=%d.%d' % sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout
    match = re.search(r"PYTHON=(\d+\.\d+)", out)
    assert match, f"cannot tell Blender's Python version:\n{out}"
    return match.group(1)


def site_for_blender(blender: str, tmp_path: Path) -> Path:
    """pyzmq and msgpack for Blender's Python, in a directory of their own."""
    version = blender_python(blender)
    base = os.environ.get("REPLICATION_BLENDER_SITE")
    site = Path(base) / f"py{version}" if base else tmp_path / "site"
    marker = site / ".installed"
    if marker.is_file():
        return site
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--upgrade",
        "--target",
        str(site),
        "--only-binary=:all:",
        "pyzmq",
        "msgpack",
    ]
    if version != f"{sys.version_info[0]}.{sys.version_info[1]}":
        command += ["--python-version", version, "--implementation", "cp"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"cannot install pyzmq and msgpack for Blender:\n{done.stderr}"
    marker.write_text(version)
    return site


def test_a_scene_edited_in_one_blender_appears_in_another(server, tmp_path):
    blender = require_tools()
    site = site_for_blender(blender, tmp_path)
    env = dict(
        os.environ,
        TMPDIR=str(tmp_path),
        BLENDER_USER_CONFIG=str(tmp_path / "config"),
        BLENDER_USER_SCRIPTS=str(tmp_path / "scripts"),
    )
    host_result, viewer_result = tmp_path / "host.json", tmp_path / "viewer.json"

    def args(script: str, result: Path) -> list[str]:
        return [
            "--python-exit-code",
            "1",
            "--python",
            str(HERE / "blender" / script),
            "--",
            str(server.port),
            str(site),
            str(SRC),
            str(result),
        ]

    host_log, viewer_log = tmp_path / "host.log", tmp_path / "viewer.log"
    with open(host_log, "w") as hl, open(viewer_log, "w") as vl:
        host = subprocess.Popen(
            [blender, "-b", "--factory-startup", *args("host_scene.py", host_result)],
            stdin=subprocess.DEVNULL,
            stdout=hl,
            stderr=subprocess.STDOUT,
            env=env,
        )
        viewer = subprocess.Popen(
            [
                "xvfb-run",
                "-a",
                "-s",
                "-screen 0 1024x768x24",
                blender,
                "--factory-startup",
                "-noaudio",
                *args("viewer_addon.py", viewer_result),
            ],
            stdin=subprocess.DEVNULL,
            stdout=vl,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            codes = (host.wait(TIMEOUT), viewer.wait(TIMEOUT))
        finally:
            for proc in (host, viewer):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    logs = f"host:\n{host_log.read_text()}\nviewer:\n{viewer_log.read_text()}"
    assert codes == (0, 0), logs
    assert host_result.is_file() and viewer_result.is_file(), logs
    hosted = json.loads(host_result.read_text())
    seen = json.loads(viewer_result.read_text())
    assert hosted["background"] is True
    assert seen["error"] is None, f"{seen['error']}\n{logs}"
    # Three states, each only after the host saw the previous one: three ticks at least.
    assert seen["background"] is False and seen["timer_calls"] >= 3

    first_vertex = hosted["first_vertex"]
    states = [s["SharedCube"] for s in seen["observed"]]
    expected = [
        ([1.0, 2.0, 3.0], first_vertex),  # appeared where the host created it
        ([4.0, 5.0, 6.0], first_vertex),  # moved
        ([4.0, 5.0, 6.0], [9.0, 9.0, 9.0]),  # one vertex edited
    ]
    assert [(s["location"], s["vertex0"]) for s in states] == expected
    final = seen["final"]["SharedCube"]
    assert final["mesh"] == "SharedMesh" and final["vertices"] == 8 and final["in_scene"]
