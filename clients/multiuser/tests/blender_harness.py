"""Real Blender processes driven by a test, each with the Multi-User add-on
installed from a zip.

Each Blender runs in its normal mode on a virtual X display (``xvfb-run``):
add-on timers and viewport drawing only run in Blender's main loop, which
``blender -b`` never enters. ``blender/driver.py`` runs inside it and
answers the test's requests over a local TCP connection (see its
docstring). Every wait has a deadline and polls a condition; nothing
sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "blender" / "driver.py"
T = 60.0
"""Deadline for anything that should happen in Blender: generous, because
two Blenders, a server and the test share two cores."""


def require_blender() -> str:
    blender = shutil.which("blender")
    if blender is None:
        pytest.skip(
            "blender is not installed (Debian: apt-get install blender; .ci/run installs it)"
        )
    if shutil.which("xvfb-run") is None or shutil.which("xauth") is None:
        pytest.skip(
            "xvfb-run is not installed (Debian: apt-get install xvfb xauth; .ci/run installs it): "
            "add-on timers only run in Blender's main loop, which `blender -b` never enters"
        )
    return blender


def blender_python() -> str:
    """The version of the Python inside Blender, e.g. "3.11"."""
    blender = require_blender()
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
        timeout=T,
        env=dict(os.environ, PATH=blender_path()),
    ).stdout
    match = re.search(r"PYTHON=(\d+\.\d+)", out)
    assert match, f"cannot tell Blender's Python version:\n{out}"
    return match.group(1)


def blender_path() -> str:
    """PATH for Blender without the test's own Python: Debian's Blender runs
    the system's Python, which takes its standard library from the first
    ``python3`` on PATH, and a virtual environment's or pyenv's has neither
    numpy nor the system's packages. The server binary's directory comes
    first, so that hosting finds ``replication-serve`` as an artist's PATH
    would."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    system = [d for d in dirs if d.startswith(("/usr/", "/bin", "/sbin")) and "/.pyenv" not in d]
    server = os.environ.get("REPLICATION_SERVE_BIN")
    return os.pathsep.join(([str(Path(server).parent)] if server else []) + system)


class BlenderError(AssertionError):
    """Code sent to Blender raised; the message holds Blender's traceback."""


class Blender:
    """One Blender process with the add-on installed from ``addon_zip``."""

    startup_deadline = T
    """Seconds for Blender to start and install the add-on."""

    def __init__(self, name: str, addon_zip: Path, workdir: Path) -> None:
        self.name = name
        self.addon_zip = addon_zip
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "blender.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: socket.socket | None = None
        self.buffer = b""
        self.ids = 0
        self.info: dict[str, Any] = {}

    def command(self, port: int) -> list[str]:
        """The command that starts this Blender with its driver, which
        connects back to ``port``."""
        return [
            "xvfb-run",
            "-a",
            "-s",
            "-screen 0 1024x768x24",
            require_blender(),
            "--factory-startup",
            "-noaudio",
            "-p",
            "0",
            "0",
            "640",
            "480",
            "--python",
            str(DRIVER),
            "--",
            str(port),
            str(self.addon_zip),
            self.name,
        ]

    def environment(self) -> dict[str, str]:
        return dict(
            os.environ,
            PATH=blender_path(),
            TMPDIR=str(self.workdir),
            BLENDER_USER_CONFIG=str(self.workdir / "config"),
            BLENDER_USER_SCRIPTS=str(self.workdir / "scripts"),
            BLENDER_USER_DATAFILES=str(self.workdir / "datafiles"),
        )

    def start(self) -> Blender:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            listener.settimeout(1.0)
            command = self.command(listener.getsockname()[1])
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    cwd=self.workdir,
                    start_new_session=True,
                )
            deadline = time.monotonic() + self.startup_deadline
            self._accept(listener, deadline)
        assert self.conn is not None
        self.conn.settimeout(1.0)
        self.info = self._receive(deadline)
        return self

    def _accept(self, listener: socket.socket, deadline: float) -> None:
        assert self.proc is not None
        while self.conn is None:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: Blender exited early\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: Blender did not start in time\n{self.log()}")
            try:
                self.conn, _ = listener.accept()
            except TimeoutError:
                continue

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def _receive(self, deadline: float) -> dict[str, Any]:
        assert self.conn is not None and self.proc is not None
        while b"\n" not in self.buffer:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no answer from Blender in time\n{self.log()}")
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: Blender exited\n{self.log()}")
            try:
                chunk = self.conn.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"{self.name}: Blender closed the connection\n{self.log()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def _request(self, request: dict[str, Any], timeout: float = T) -> Any:
        assert self.conn is not None
        self.ids += 1
        request["id"] = self.ids
        self.conn.sendall((json.dumps(request) + "\n").encode())
        reply = self._receive(time.monotonic() + timeout)
        assert reply.get("id") == self.ids, reply
        if not reply["ok"]:
            raise BlenderError(f"{self.name}: {reply['error']}")
        return reply["value"]

    def run(self, source: str, timeout: float = T) -> Any:
        """Runs ``source`` in Blender; returns what it assigned to ``result``."""
        return self._request({"exec": source}, timeout)

    def eval(self, expression: str, timeout: float = T) -> Any:
        return self._request({"eval": expression}, timeout)

    def wait_until(self, expression: str, timeout: float = T, what: str | None = None) -> Any:
        """Evaluates ``expression`` in Blender until it is true; returns it."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            # Blender may be busy for long (building a large scene it received):
            # each question may wait as long as the whole wait.
            last = self.eval(expression, timeout=max(T, deadline - time.monotonic()))
            if last:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: {what or expression} still false after {timeout} s "
                    f"(last value {last!r})\n{self.log()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None and self.conn is not None:
            try:
                self._request({"quit": True}, timeout=10.0)
            except (AssertionError, OSError):
                pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
