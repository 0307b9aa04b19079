"""Fixtures: the real replication-serve binary on free local ports, and
sessions that are closed after each test.

The binary is ``$REPLICATION_SERVE_BIN``, or ``target/debug/replication-serve``
in the repository (scripts/test.sh builds it first).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replication_client import ClientKeyRefused, Event, ReplicationError, Session

REPO = Path(__file__).resolve().parents[3]
T = 20.0
"""Deadline for anything that should happen: generous, so that a loaded
machine never fails a test, and only reached when something is wrong."""
ADMIN_PASSWORD = "admin"


def server_binary() -> Path:
    path = Path(os.environ.get("REPLICATION_SERVE_BIN") or REPO / "target/debug/replication-serve")
    if not path.is_file():
        pytest.fail(f"no server binary at {path}: run `cargo build` or set REPLICATION_SERVE_BIN")
    return path


def free_base_port() -> int:
    """A base port whose four ports were free a moment ago."""
    while True:
        base = random.randrange(20_000, 60_000, 4)
        sockets = []
        try:
            for offset in range(4):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


class ServerProcess:
    """The binary, started with ``--bind 127.0.0.1 -p BASE``."""

    def __init__(self, log_dir: Path, args: list[str]) -> None:
        self.args = args
        self.log_path = log_dir / "server.log"
        self.stdout_path = log_dir / "server.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> ServerProcess:
        # Options also read the environment; keep the caller's out of it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATION_")}
        for _ in range(20):
            self.port = free_base_port()
            with open(self.log_path, "wb") as log, open(self.stdout_path, "wb") as out:
                self.proc = subprocess.Popen(
                    [
                        str(server_binary()),
                        "--bind",
                        "127.0.0.1",
                        "-p",
                        str(self.port),
                        "-pwd",
                        ADMIN_PASSWORD,
                        "--in-memory",
                        *self.args,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=log,
                    env=env,
                )
            if self._wait_ready():
                return self
            if "already in use" in self.log():
                continue  # someone took a port between the check and the bind
            pytest.fail(f"the server did not start; its log:\n{self.log()}")
        pytest.fail("no free ports for the server")

    def _wait_ready(self) -> bool:
        """Until it answers SERVER_INFO (False if the process exits)."""
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            # A session that gave up (no key answer while the server was
            # still starting) stays ended: each try gets a new one.
            probe = Session("127.0.0.1", self.port, "probe")
            try:
                probe.server_info(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                return True
            except ClientKeyRefused:
                return True  # it answers, and admits only listed keys
            except ReplicationError:
                continue
            finally:
                probe.close()
        pytest.fail(f"the server did not answer SERVER_INFO within {T} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stdout(self) -> str:
        """What the server printed (its public key, when it encrypts)."""
        return self.stdout_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (the server says goodbye to its users), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session", autouse=True)
def client_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Known servers, client keys and the key of a server hosted from
    Blender go to folders of the test run, never the user's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REPLICATION_CONFIG_DIR", str(tmp_path_factory.mktemp("client-config")))
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))
        yield


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts a server with extra command-line arguments; stopped at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(tmp_path, list(args)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


@pytest.fixture
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Session]]:
    """``connect(name, admin=False, **options)``: a session on the ``server``
    fixture (or on ``port``), authenticated unless ``auth=False``; closed at
    teardown."""
    sessions: list[Session] = []

    def make(
        name: str, admin: bool = False, auth: bool = True, port: int | None = None, **options: Any
    ) -> Session:
        if admin:
            options.setdefault("admin_password", ADMIN_PASSWORD)
        if port is None:
            port = request.getfixturevalue("server").port
        session = Session("127.0.0.1", port, name, **options)
        sessions.append(session)
        if auth:
            session.authenticate(timeout=T)
        return session

    yield make
    for session in sessions:
        session.close()


def record(session: Session) -> list[Event]:
    """Every event the session dispatches from now on."""
    events: list[Event] = []
    session.on(Event, events.append)
    return events
