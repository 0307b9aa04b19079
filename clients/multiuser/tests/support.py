"""What the tests share: the real replication-serve binary, and the
Multi-User add-on packaged with this project's ``replication`` package.

The add-on release is read from ``../shared/third_party/multi-user/``
beside the repository (``$MULTIUSER_RELEASES`` elsewhere); tests that need
it are skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from installs import pip_into

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
RELEASES = Path(
    os.environ.get("MULTIUSER_RELEASES") or REPO.parent / "shared/third_party/multi-user"
)
TOOL = HERE.parent / "tools" / "package_addon.py"
T = 30.0


def _load(name: str, path: Path):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The Python client's test fixtures know how to find the binary and free ports.
_client = _load("replication_client_test_support", REPO / "clients/python/tests/conftest.py")
free_base_port = _client.free_base_port
server_binary = _client.server_binary
ADMIN_PASSWORD = _client.ADMIN_PASSWORD


def release(version: str) -> Path:
    path = RELEASES / version
    if not (path / "multi_user" / "__init__.py").is_file():
        pytest.skip(
            f"the Multi-User {version} release is not at {path} "
            "(set MULTIUSER_RELEASES to the folder holding 0.5.8/ and 0.6.9/)"
        )
    return path


class Server:
    """replication-serve on free ports, recording into ``data_dir`` (or in
    memory), which can be killed and started again on the same ports."""

    def __init__(self, workdir: Path, data_dir: Path | None, *args: str) -> None:
        self.workdir = workdir
        self.data_dir = data_dir
        self.args = list(args)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"
        self._log_start = 0

    def start(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATION_")}
        storage = ["--data-dir", str(self.data_dir)] if self.data_dir else ["--in-memory"]
        for _ in range(20):
            self.port = self.port or free_base_port()
            self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        str(server_binary()),
                        "-p",
                        str(self.port),
                        "-pwd",
                        ADMIN_PASSWORD,
                        "--bind",
                        "127.0.0.1",
                        *storage,
                        *self.args,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env=env,
                )
            if self._ready():
                return self
            if "already in use" not in self.log():
                break
            self.port = 0
        pytest.fail(f"the server did not start:\n{self.log()}")

    def _ready(self) -> bool:
        """Until the server says it listens (False if it exits first)."""
        deadline = time.monotonic() + T
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if re.search(rf"listening .*commands={self.port}\b", self.log()[self._log_start :]):
                return True
            time.sleep(0.05)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no goodbye, nothing flushed beyond what was recorded."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def package(source: Path, output: Path, *options: str) -> Path:
    """Runs the packaging tool as a user would."""
    done = subprocess.run(
        [sys.executable, str(TOOL), str(source), "-o", str(output), *options],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"packaging failed:\n{done.stdout}\n{done.stderr}"
    return output


REFERENCE = "replication==0.9.9"
"""The library the Multi-User 0.5.8 release was made with (GPL-3, from PyPI),
run as the baseline the same scenarios can be compared against; nothing of
it is part of this project."""


def reference_package(source: Path, output: Path, python: str) -> Path:
    """The unmodified add-on with its own library, installed as the add-on
    would install it (pip into its ``libs`` folder)."""
    work = output.parent / "reference-build"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source / "multi_user", work / "multi_user")
    libs = work / "multi_user" / "libs"
    binary = ["--python-version", python, "--only-binary=:all:", "--no-deps", REFERENCE, "pyzmq"]
    for args in (binary, ["--no-deps", "deepdiff==5.7.0", "ordered-set==4.0.2"]):
        done = pip_into(libs, *args)
        assert done.returncode == 0, done.stderr
    shutil.make_archive(str(output.with_suffix("")), "zip", work)
    return output


def library() -> str:
    """Which ``replication`` the Blender tests run: this project's drop-in
    ("ours", the default) or the add-on's own ("reference", the baseline:
    MULTIUSER_LIBRARY=reference)."""
    chosen = os.environ.get("MULTIUSER_LIBRARY", "ours")
    if chosen not in ("ours", "reference"):
        pytest.fail(f"MULTIUSER_LIBRARY must be 'ours' or 'reference', not {chosen!r}")
    return chosen


ENFORCED = pytest.mark.xfail(
    library() == "reference",
    reason="the reference server leaves ownership to the clients and refuses nothing",
)
"""Marks a test whose expectations only hold where the server enforces."""
