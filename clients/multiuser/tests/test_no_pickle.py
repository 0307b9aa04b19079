"""Nothing on the network is pickled: the package's modules (other than
the backup file format, which never touches the network) do not import
pickle, and a whole session runs with every unpickling function of the
process replaced by one that fails the test."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
from fake_dcc import Scene, Thing, User
from support import ADMIN_PASSWORD, Server

from replication import porcelain
from replication.constants import STATE_LOBBY

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "replication"
SERIALISERS = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
OFF_THE_NETWORK = {"backup.py"}
"""Session backup files: the add-on's own import operator unpickles them
itself; this package reads them without running code (test_backup.py)."""


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names.add("__import__")
    return names


def test_no_module_on_a_network_path_imports_a_serialiser_of_code():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 10
    offenders = {
        str(m.relative_to(PACKAGE)): imported_modules(m) & (SERIALISERS | {"__import__"})
        for m in modules
        if m.name not in OFF_THE_NETWORK
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    # ...and only the repository's dumps/loads use the backup module.
    users = sorted(str(m.relative_to(PACKAGE)) for m in modules if "backup" in relative_imports(m))
    assert users == ["repository.py"]


def relative_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            names |= {node.module or ""} | {alias.name for alias in node.names}
    return names


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled data during a session")

    for module in (pickle, __import__("_pickle")):
        for name in ("loads", "load", "Unpickler"):
            monkeypatch.setattr(module, name, refuse)


def test_a_whole_session_runs_without_unpickling(tmp_path, servers, no_unpickling):
    server = Server(tmp_path, None).start()
    servers.append(server)
    alice = User("alice", server.port, ADMIN_PASSWORD)
    scene = alice.world.new(Scene, "Scene")
    scene.children.append(alice.world.new(Thing, "Cube", x=1.0, blob=b"\x00" * 4096))
    porcelain.add(alice.repository, scene)
    alice.connect()
    alice.until(lambda: alice.session.state == STATE_LOBBY)
    alice.session.init()
    alice.until(alice.active)
    bob = User("bob", server.port).connect()
    try:
        bob.until(bob.active)
        for node_id in bob.repository.index_sorted:
            porcelain.apply(bob.repository, node_id)
        porcelain.lock(alice.repository, [alice.uuid_of("Cube")])
        alice.until(lambda: alice.node("Cube").owner == "alice")
        alice.edit("Cube", x=2.0)
        porcelain.update_user_metadata(alice.repository, {"frame_current": 3, "sel": {"a"}})
        bob.until(lambda: bob.sees("Cube", x=2.0))
        bob.until(lambda: bob.session.online_users.get("alice", {}).get("metadata", {}).get("sel"))
        porcelain.rm(alice.repository, alice.uuid_of("Cube"))
        bob.until(lambda: len(bob.repository.graph) == 1, others=(alice,))
        porcelain.kick(alice.repository, "bob")
        bob.until(lambda: bob.exits == ["kicked by alice"])
        assert porcelain.request_session_info(f"127.0.0.1:{server.port}", 5000)["private"] is False
    finally:
        for user in (alice, bob):
            user.session.disconnect(reason="user")
