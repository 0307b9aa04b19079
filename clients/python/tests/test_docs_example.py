"""The complete example of docs/python-client.md, run as a reader would:
a viewer, then the host, against the real server; and all of it a second
time against the same server, which by then holds the scene."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import REPO, ServerProcess, T


def example_source(port: int) -> str:
    text = (REPO / "docs/python-client.md").read_text()
    section = text.split("## A complete example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "no python block under 'A complete example'"
    return code.group(1).replace("5555", str(port))


class Lines:
    """A child's stdout, line by line, read by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        self.reader = threading.Thread(
            target=lambda: [self.lines.put(line) for line in stream], daemon=True
        )
        self.reader.start()

    def wait_for(self, needle: str) -> str:
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} within {T} s; got:\n{''.join(self.seen)}")

    def rest(self) -> list[str]:
        """Every line, once the child has ended and its output is read."""
        self.reader.join(T)
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return self.seen


#: Runs the example as its viewer, with Ctrl-C raising KeyboardInterrupt as
#: in a terminal: a test run started in the background (``cmd &`` in a
#: script) has SIGINT ignored, which Python, and so the viewer, would keep.
VIEWER = (
    "import runpy, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = [sys.argv[1], 'viewer']; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_once(script: Path) -> str:
    viewer = subprocess.Popen(
        [sys.executable, "-u", "-X", "faulthandler", "-c", VIEWER, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = Lines(viewer)
        seen.wait_for("joined:")
        host = subprocess.run(
            [sys.executable, "-u", str(script), "host"],
            capture_output=True,
            text=True,
            timeout=T * 3,
        )
        assert host.returncode == 0, host.stdout + host.stderr
        assert "mat is at revision" in host.stdout, host.stdout
        seen.wait_for("Blue")
        viewer.send_signal(signal.SIGINT)
        try:
            viewer.wait(T)
        except subprocess.TimeoutExpired:
            # faulthandler prints every thread's stack on SIGABRT.
            viewer.send_signal(signal.SIGABRT)
            viewer.wait(T)
            raise AssertionError(
                f"the viewer did not stop within {T} s of Ctrl-C; it printed:\n"
                + "".join(seen.rest())
            ) from None
        return host.stdout
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()


def revision(host_output: str) -> int:
    found = re.search(r"mat is at revision (\d+)", host_output)
    assert found is not None, host_output
    return int(found.group(1))


def test_the_complete_example_runs_twice(server: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example_source(server.port))
    first = revision(run_once(script))
    # The server kept the scene: the host joins it instead of uploading.
    second = revision(run_once(script))
    assert second > first
