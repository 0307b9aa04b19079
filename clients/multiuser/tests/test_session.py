"""The package driven as the add-on drives it, against the real server,
with a stand-in for Blender (fake_dcc.py): the session's states and
callbacks, patches, last-writer-wins, ownership refused by the server and
rolled back, ordering of releases behind edits, kicks and failures."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import pytest
from fake_dcc import Scene, Thing, User
from support import ADMIN_PASSWORD, Server, free_base_port, server_binary

from replication import porcelain
from replication.constants import COMMITED, ERROR, STATE_ACTIVE, STATE_INITIAL, STATE_LOBBY
from replication.exception import NonAuthorizedOperationError, ServiceNetworkError
from replication.interface import Session


@pytest.fixture
def server(tmp_path, servers) -> Server:
    started = Server(tmp_path, None).start()
    servers.append(started)
    return started


@pytest.fixture
def users(server) -> Iterator[list[User]]:
    made: list[User] = []
    yield made
    for user in made:
        if user.session.state != STATE_INITIAL:
            user.session.disconnect(reason="user")


def host_scene(server: Server, users: list[User]) -> tuple[User, User]:
    """Alice (admin) uploads a scene with a cube and a lamp; Bob joins."""
    alice = User("alice", server.port, ADMIN_PASSWORD)
    users.append(alice)
    scene = alice.world.new(Scene, "Scene")
    cube = alice.world.new(Thing, "Cube", x=0.0, data=b"\x00" * 1200)
    lamp = alice.world.new(Thing, "Lamp", power=10)
    scene.children += [cube, lamp]
    porcelain.add(alice.repository, scene)
    alice.connect()
    alice.until(lambda: alice.session.state == STATE_LOBBY, what="the lobby")
    alice.session.init()
    alice.until(alice.active, what="the upload")
    bob = User("bob", server.port).connect()
    users.append(bob)
    bob.until(bob.active, what="the download")
    for node_id in bob.repository.index_sorted:
        porcelain.apply(bob.repository, node_id)
    return alice, bob


def test_host_and_join(server, users):
    alice, bob = host_scene(server, users)
    assert sorted(t.name for t in bob.world.things) == ["Cube", "Lamp", "Scene"]
    assert bob.world.named("Cube").props == {"x": 0.0, "data": b"\x00" * 1200}
    assert bob.node("Cube").owner == "COMMON"
    assert set(bob.repository.graph) == set(alice.repository.graph)
    alice.until(lambda: set(alice.session.online_users) == {"alice", "bob"})
    # Bob is listed from his login on, in the lobby; his ACTIVE follows.
    alice.until(lambda: alice.session.online_users["bob"]["status"] == STATE_ACTIVE, others=(bob,))
    entry = alice.session.online_users["bob"]
    assert entry["admin"] is False and entry["id"] == "bob"


def test_a_change_travels_as_a_patch_and_others_apply_it(server, users):
    alice, bob = host_scene(server, users)
    porcelain.lock(alice.repository, [alice.uuid_of("Cube")])
    alice.until(lambda: alice.node("Cube").owner == "alice")
    data = bytearray(b"\x00" * 1200)
    data[600] = 1
    alice.edit("Cube", x=2.5, data=bytes(data))
    bob.until(lambda: bob.sees("Cube", x=2.5, data=bytes(data)), what="the change")
    # The node's data is the replica's own value (one copy of the scene).
    link = alice.repository.remote.link
    assert alice.node("Cube").data is link.client.blocks[alice.uuid_of("Cube")].data


def test_concurrent_edits_end_with_the_last_writer(server, users, caplog):
    caplog.set_level(logging.INFO, logger="replication")
    alice, bob = host_scene(server, users)
    # Both edit the lamp (everyone's) before hearing of each other: the
    # second patch to reach the server is stale there, and its sender sends
    # the whole data instead. Whichever came last, everyone ends with it.
    alice.edit("Lamp", power=20)
    bob.edit("Lamp", power=30)

    def settled():
        blocks = [u.repository.remote.link.client.blocks[u.uuid_of("Lamp")] for u in (alice, bob)]
        worlds = [u.world.named("Lamp").props["power"] for u in (alice, bob)]
        pending = any(u.repository.remote.link.pending() for u in (alice, bob))
        return (
            not pending
            and blocks[0].revision == blocks[1].revision
            and [b.data["props"]["power"] for b in blocks] == worlds
            and worlds[0] == worlds[1]
        )

    alice.until(settled, others=(bob,))
    assert alice.world.named("Lamp").props["power"] in (20, 30)
    # Both patches were made against revision 1: the second was refused.
    assert sum("changed meanwhile (stale_revision)" in r.message for r in caplog.records) == 1


def test_a_change_to_what_someone_else_holds_is_refused_and_undone(server, users):
    alice, bob = host_scene(server, users)
    porcelain.lock(alice.repository, [alice.uuid_of("Cube")])
    alice.until(lambda: alice.node("Cube").owner == "alice")
    # Bob has not heard of the lock yet (he has not listened since): his
    # add-on still lets him commit and push. The server refuses it.
    assert bob.node("Cube").owner == "COMMON"
    bob.edit("Cube", x=99.0)
    assert bob.sees("Cube", x=99.0)
    bob.until(lambda: bob.node("Cube").owner == "alice")
    bob.until(lambda: bob.sees("Cube", x=0.0), what="the session's version back")
    alice.until(lambda: not alice.repository.remote.link.pending())
    assert alice.sees("Cube", x=0.0)
    # Knowing the owner, the add-on's push refuses before sending.
    bob.world.named("Cube").props["x"] = 5.0
    porcelain.commit(bob.repository, bob.uuid_of("Cube"))
    with pytest.raises(NonAuthorizedOperationError):
        porcelain.push(bob.repository, "origin", bob.uuid_of("Cube"))


def test_a_release_waits_for_the_edits_it_follows(server, users):
    alice, bob = host_scene(server, users)
    lamp = bob.uuid_of("Lamp")
    porcelain.lock(bob.repository, [lamp])
    bob.until(lambda: bob.node("Lamp").owner == "bob")
    bob.edit("Lamp", power=1)
    porcelain.unlock(bob.repository, [lamp])
    link = bob.repository.remote.link
    # The RIGHT waits for the UPDATE's ACK: the channels have no order, and
    # a release overtaking the edit could let someone else's lock refuse it.
    assert link.client.pending_pushes([lamp]) and len(link._waiting) == 1
    bob.until(lambda: bob.node("Lamp").owner == "COMMON")
    alice.until(lambda: alice.sees("Lamp", power=1) and alice.node("Lamp").owner == "COMMON")


def test_a_lock_refused_for_one_datablock_still_takes_the_others(server, users):
    alice, bob = host_scene(server, users)
    porcelain.lock(alice.repository, [alice.uuid_of("Lamp")], affect_dependencies=False)
    alice.until(lambda: alice.node("Lamp").owner == "alice")
    porcelain.lock(
        bob.repository, [bob.uuid_of("Cube"), bob.uuid_of("Lamp")], affect_dependencies=False
    )
    bob.until(lambda: bob.node("Cube").owner == "bob", what="the cube, asked for again alone")
    bob.until(lambda: bob.node("Lamp").owner == "alice")


def test_a_datablock_the_server_refuses_is_marked(server, users):
    alice, bob = host_scene(server, users)
    # A kind of datablock whose name the server refuses as a type_id.
    odd = type("Odd\x01", (Thing,), {})
    alice.repository.rdp.register_implementation(
        odd, alice.repository.rdp.get_implementation("Thing")
    )
    scene = alice.world.named("Scene")
    thing = alice.world.adopt(odd("Odd"))
    scene.children.append(thing)
    scene_uuid = alice.uuid_of("Scene")
    porcelain.commit(alice.repository, scene_uuid)
    porcelain.push(alice.repository, "origin", scene_uuid)
    node = alice.repository.graph[thing.uuid]
    alice.until(lambda: node.state == ERROR, what="the refusal")
    # The scene that lists it went through; the rest of the session goes on.
    bob.until(lambda: bob.node("Scene").state != COMMITED)
    alice.edit("Lamp", power=5)
    bob.until(lambda: bob.sees("Lamp", power=5))


def test_the_reason_a_session_ends_reaches_on_exit(server, users):
    alice, bob = host_scene(server, users)
    porcelain.kick(alice.repository, "bob")
    bob.until(lambda: bob.session.state == STATE_INITIAL, what="the kick")
    assert bob.exits == ["kicked by alice"]
    server.stop()
    alice.until(lambda: alice.session.state == STATE_INITIAL)
    assert alice.exits == ["server shutting down"]


def test_a_refused_login_and_a_silent_address(server, users):
    mallory = User("mallory", server.port, "wrong")
    users.append(mallory)
    mallory.connect()
    mallory.until(lambda: mallory.session.state == STATE_INITIAL)
    assert mallory.exits == ["Failed to connect, authentication refused: wrong admin password"]
    port = free_base_port()
    ghost = User("ghost", port)
    users.append(ghost)
    ghost.connect(timeout=1000)
    ghost.until(lambda: ghost.session.state == STATE_INITIAL)
    assert ghost.exits == [
        f"Connection failed: no answer from 127.0.0.1:{port} within 1 s "
        f"(is the server running, and are ports {port}-{port + 3} open?)"
    ]


def test_server_info_for_the_refresh_button(server):
    info = porcelain.request_session_info(f"127.0.0.1:{server.port}", timeout=5000)
    assert info is not None and info["private"] is False and info["version"]
    silent = free_base_port()
    assert porcelain.request_session_info(f"127.0.0.1:{silent}", timeout=200) is None


def test_hosting_starts_a_server_and_stops_it(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATION_SERVE_BIN", str(server_binary()))
    port = free_base_port()
    host = User("host", port)
    scene = host.world.new(Scene, "Scene")
    porcelain.add(host.repository, scene)
    host.session.host(
        repository=host.repository, timeout=5000, cache_directory=str(tmp_path), admin_password=None
    )
    try:
        host.until(host.active, what="hosting")
        host.until(lambda: "host" in host.session.online_users)
        assert host.session.online_users["host"]["admin"] is True  # a made-up admin password
        server = host.session._server
        assert "--in-memory" in server.proc.args
        assert not any("admin" in arg for arg in server.proc.args[1:])  # passwords stay off argv
    finally:
        host.session.disconnect(reason="user")
    assert server.proc.poll() is not None
    assert host.exits == ["user"]
    assert (tmp_path / "multiuser_server.log").read_text().count("listening") == 1


def test_hosting_without_a_server_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("REPLICATION_SERVE_BIN", raising=False)
    user = User("host", free_base_port())
    with pytest.raises(ServiceNetworkError, match="docs/blender.md"):
        user.session.host(repository=user.repository)
    assert user.session.state == STATE_INITIAL


def test_the_add_on_can_test_the_session_for_truth():
    # The add-on writes "if session:" before using it, connected or not.
    assert Session()


def test_an_encrypted_session_and_a_changed_key_in_the_add_ons_words(tmp_path, servers):
    # What an artist meets: the first connection trusts the server's key;
    # later, a server on that address with another key is refused, and the
    # reason the add-on shows in its dialog says what may be happening and
    # how to accept a new key.
    import zmq
    from replication_client.keys import KnownServers, fingerprint

    server = Server(
        tmp_path, None, "--encryption", "required", "--server-key", str(tmp_path / "server.key")
    ).start()
    servers.append(server)
    alice = User("alice", server.port, ADMIN_PASSWORD)
    porcelain.add(alice.repository, alice.world.new(Scene, "Scene"))
    alice.connect()
    alice.until(lambda: alice.session.state == STATE_LOBBY, what="the lobby")
    assert alice.session.repository.remote.link.client.encrypted
    pins = KnownServers()
    name = f"127.0.0.1:{server.port}"
    real = pins.get(name)
    assert real is not None, "the key was pinned on first use"
    alice.session.disconnect(reason="user")

    impostor = zmq.curve_keypair()[0]
    pins.path.write_text(pins.path.read_text().replace(real.decode(), impostor.decode()))
    bob = User("bob", server.port)
    bob.connect()
    bob.until(lambda: bob.session.state == STATE_INITIAL, what="the refusal")
    [reason] = bob.exits
    assert reason.startswith(f"Failed to connect: the server at {name} presents a different key")
    for part in (fingerprint(real), fingerprint(impostor), "intercepting", str(pins.path)):
        assert part in reason, reason


def test_a_collection_of_ten_thousand_objects_keeps_every_dependency(server, users):
    alice = User("alice", server.port, ADMIN_PASSWORD)
    users.append(alice)
    scene = alice.world.new(Scene, "Scene")
    scene.children += [alice.world.new(Thing, f"T{i}") for i in range(10_000)]
    porcelain.add(alice.repository, scene)
    alice.connect()
    alice.until(lambda: alice.session.state == STATE_LOBBY)
    alice.session.init()
    alice.until(alice.active, timeout=120, what="the upload")
    bob = User("bob", server.port).connect()
    users.append(bob)
    bob.until(bob.active, timeout=120, what="the download")
    scene_node = bob.repository.graph[alice.uuid_of("Scene")]
    assert len(scene_node.dependencies) == 10_000
    assert len(list(bob.repository.index_sorted)) == 10_001  # nothing orphaned


def test_a_node_whose_dependencies_cannot_fit_a_header_is_not_sent(server, users, caplog):
    alice, bob = host_scene(server, users)
    link = alice.repository.remote.link
    link.client.auth = dataclasses.replace(link.client.auth, max_header_bytes=64 * 1024)
    scene = alice.world.named("Scene")
    scene.children += [alice.world.new(Thing, f"T{i}") for i in range(3000)]
    porcelain.commit(alice.repository, alice.uuid_of("Scene"))
    porcelain.push(alice.repository, "origin", alice.uuid_of("Scene"))
    assert alice.node("Scene").state == ERROR
    assert "'Scene' uses 3002 datablocks, more than one datablock's header can list" in caplog.text
