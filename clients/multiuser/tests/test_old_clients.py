"""The Multi-User add-on without this package, whose own `replication`
library pickles its messages, pointed at replication-serve: its login is
refused with a reason the add-on shows the artist, and its server-list
refresh sees the server online, locked when it is private. The frames are
sent as that library sends them; the answers are unpickled here, as it
unpickles them (they come from our own server, so this is safe)."""

from __future__ import annotations

import pickle
import time
import uuid

import pytest
import zmq
from support import Server, T

OLD_LOGIN = [
    pickle.dumps(9, protocol=4),  # "Auth"
    b"alice",
    pickle.dumps(
        {
            "AUTH_TYPE": "CLIENT",
            "AUTH_ID": "alice",
            "S_PWD": None,
            "A_PWD": None,
            "VERSION": "0.9.10",
        },
        protocol=4,
    ),
]
OLD_SERVER_INFO = [pickle.dumps(14, protocol=4), b"guest", pickle.dumps("RQ_INFO", protocol=4)]


def ask(port: int, frames: list[bytes]) -> tuple[int, str, object]:
    """Sends `frames` from a DEALER as the old library does, and reads the
    answer as it does: pickled type, owner, pickled data."""
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, uuid.uuid4().bytes)
    socket.linger = 0
    socket.connect(f"tcp://127.0.0.1:{port}")
    try:
        socket.send_multipart(frames)
        assert socket.poll(int(T * 1000)), "no answer"
        answer = socket.recv_multipart()
    finally:
        socket.close()
        context.term()
    assert len(answer) == 3, answer
    return pickle.loads(answer[0]), answer[1].decode(), pickle.loads(answer[2])


def test_an_old_login_is_refused_with_a_reason_the_add_on_shows(tmp_path, servers):
    server = Server(tmp_path, None).start()
    servers.append(server)
    kind, owner, data = ask(server.port, OLD_LOGIN)
    assert kind == 9
    assert owner
    # The add-on ends the session on "FAILED" and shows the whole text.
    assert isinstance(data, str)
    assert data.startswith("FAILED: ")
    assert "replication-serve" in data and "protocol v2" in data
    assert "docs/blender.md" in data
    assert "\n" not in data and len(data) < 200
    deadline = time.monotonic() + T
    while "old Multi-User client tried to log in" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


@pytest.mark.parametrize("private", [False, True])
def test_an_old_server_list_refresh_sees_the_server(tmp_path, servers, private):
    args = ["-spwd", "secret"] if private else []
    server = Server(tmp_path, None, *args).start()
    servers.append(server)
    kind, _, data = ask(server.port, OLD_SERVER_INFO)
    assert kind == 14
    assert isinstance(data, dict)
    assert data.get("private") is private
    assert "docs/blender.md" in data["version"]
