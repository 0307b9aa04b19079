"""Hosting from Blender: a replication-serve process of this Blender's own.

"Host" in the add-on starts a server on the port and with the passwords it
was given, joins it as its admin, and stops it when the session ends. The
server keeps the scene in memory (``--in-memory``), as the server the
add-on used to start did: it lives and dies with this Blender session, and
the add-on's own "Save session data" makes backups. Its log goes to
``multiuser_server.log`` in the add-on's cache directory.

Passwords reach the server through its environment, never its command
line, so other users of the machine do not see them in the process list.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..exception import ServiceNetworkError

__all__ = ["LocalServer", "find_binary"]

log = logging.getLogger(__name__)

BINARY = "replication-serve.exe" if sys.platform == "win32" else "replication-serve"
_LEVELS = {
    "CRITICAL": "ERROR",
    "ERROR": "ERROR",
    "WARNING": "WARNING",
    "INFO": "INFO",
    "DEBUG": "DEBUG",
}


def find_binary() -> str:
    """The server to start: ``$REPLICATION_SERVE_BIN``, then
    ``replication-serve`` on PATH, then one shipped beside this package
    (``replication/bin/``)."""
    configured = os.environ.get("REPLICATION_SERVE_BIN")
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise ServiceNetworkError(
            f"REPLICATION_SERVE_BIN is {configured}, which is not an executable file"
        )
    found = shutil.which(BINARY)
    if found:
        return found
    bundled = Path(__file__).resolve().parent.parent / "bin" / BINARY
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    raise ServiceNetworkError(
        f"cannot host: {BINARY} was not found on PATH nor in {bundled.parent}. "
        "Install replication-serve (see docs/blender.md, 'Hosting from Blender') "
        "or connect to a running server instead."
    )


class LocalServer:
    """A running replication-serve started for this session."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @classmethod
    def start(
        cls,
        port: int,
        timeout_ms: int,
        admin_password: str,
        server_password: str | None,
        log_dir: str,
        log_level: str = "INFO",
    ) -> LocalServer:
        binary = find_binary()
        directory = Path(log_dir) if log_dir else Path.cwd()
        directory.mkdir(parents=True, exist_ok=True)
        log_path = directory / "multiuser_server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATION_")}
        env["REPLICATION_ADMIN_PASSWORD"] = admin_password
        if server_password:
            env["REPLICATION_SERVER_PASSWORD"] = server_password
        command = [
            binary,
            "-p",
            str(port),
            "-t",
            str(int(timeout_ms)),
            "-l",
            _LEVELS.get(str(log_level).upper(), "INFO"),
            "--in-memory",
        ]
        log.info("hosting: starting %s on ports %d-%d", binary, port, port + 3)
        with open(log_path, "ab") as out:
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=env,
                    close_fds=True,
                )
            except OSError as e:
                raise ServiceNetworkError(f"cannot start {binary}: {e}") from e
        return cls(proc, port, log_path)

    def exited(self) -> str | None:
        """None while the server runs; otherwise why it stopped, with the
        end of its log (a port in use, a bad option...)."""
        code = self.proc.poll()
        if code is None:
            return None
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        last = " | ".join(tail) if tail else "no log"
        return f"the local server stopped (exit code {code}): {last}"

    def stop(self, timeout: float = 5.0) -> None:
        """Asks the server to stop (it says goodbye to its users), then
        kills it if it has not stopped within ``timeout`` seconds."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM on POSIX: the server says goodbye first
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
