"""Session backups (.db): written in the add-on's format, read without
running anything from the file."""

from __future__ import annotations

import gzip
import pickle

import pytest

from replication.backup import read, write
from replication.constants import FETCHED
from replication.exception import DataError
from replication.objects import Node


def test_a_backup_round_trips(tmp_path):
    nodes = [
        Node(uuid="mat", owner="COMMON", data={"type_id": "Material", "name": "Red"}),
        Node(uuid="cube", owner="alice", dependencies=["mat"], data={"co": b"\x00" * 12}),
        Node(uuid="fresh", owner="COMMON"),  # added, never committed: not kept
    ]
    users = {"alice": {"id": "alice", "admin": True, "latency": 3, "status": 2, "metadata": {}}}
    written = write(str(tmp_path / "session.db"), nodes, users)
    assert written.startswith(str(tmp_path / "session_")) and written.endswith(".db")
    back = read(written)
    assert [(n.uuid, n.owner, n.dependencies, n.data, n.state) for n in back] == [
        ("mat", "COMMON", [], {"type_id": "Material", "name": "Red"}, FETCHED),
        ("cube", "alice", ["mat"], {"co": b"\x00" * 12}, FETCHED),
    ]
    # The add-on's import operator reads the users itself, with pickle.
    with gzip.open(written, "rb") as f:
        assert pickle.load(f)["users"] == users


def _backup(path, nodes):
    with gzip.open(path, "wb") as f:
        pickle.dump({"nodes": nodes, "users": {}}, f, protocol=4)


def test_a_backup_of_the_add_on_s_own_library_reads(tmp_path):
    # Its layout: the pickled 2, uuid, owner, pickled deps, pickled data;
    # data may hold tuples (it was never normalised).
    entry = [
        pickle.dumps(2, protocol=4),
        b"cube",
        b"COMMON",
        pickle.dumps(["mesh"], protocol=4),
        pickle.dumps({"type_id": "Object", "location": (1.0, 2.0, 3.0)}, protocol=4),
    ]
    _backup(tmp_path / "old.db", [entry])
    (node,) = read(str(tmp_path / "old.db"))
    assert node.data == {"type_id": "Object", "location": (1.0, 2.0, 3.0)}


class Boom:
    """Unpickling it would create a file: what a hostile backup could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_backup_that_names_code_is_refused_and_nothing_runs(tmp_path):
    ran = tmp_path / "ran"
    entry = [pickle.dumps(2), b"x", b"COMMON", pickle.dumps([]), pickle.dumps(Boom(ran))]
    _backup(tmp_path / "evil.db", [entry])
    with pytest.raises(DataError, match="plain values"):
        read(str(tmp_path / "evil.db"))
    with gzip.open(tmp_path / "evil2.db", "wb") as f:
        pickle.dump(Boom(ran), f)
    with pytest.raises(DataError, match="plain values"):
        read(str(tmp_path / "evil2.db"))
    assert not ran.exists()


@pytest.mark.parametrize(
    "content",
    [b"not gzip", gzip.compress(b"not a pickle"), gzip.compress(pickle.dumps([1, 2]))],
)
def test_what_is_not_a_backup_says_so(tmp_path, content):
    path = tmp_path / "x.db"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a session backup"):
        read(str(path))


def test_a_damaged_entry_names_its_position(tmp_path):
    _backup(tmp_path / "bad.db", [[b"x"]])
    with pytest.raises(DataError, match="datablock 0"):
        read(str(tmp_path / "bad.db"))
