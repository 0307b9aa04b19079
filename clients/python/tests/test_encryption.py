"""Encrypted sessions (protocol section 18) with the Python client: trust on
first use, a key given, and each refusal with its message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import zmq
from conftest import ADMIN_PASSWORD, ServerProcess, T

from replication_client import (
    ChangedServerKey,
    ClientKeyRefused,
    Datablock,
    Session,
    Timeout,
    WrongServerKey,
    fingerprint,
)
from replication_client.keys import load_or_create_client_key


def encrypted(start_server, tmp_path: Path, *args: str) -> ServerProcess:
    return start_server(
        "--encryption", "required", "--server-key", str(tmp_path / "server.key"), *args
    )


def server_key(server: ServerProcess) -> str:
    match = re.search(r"server public key: (\S{40})", server.stdout())
    assert match, server.log()
    return match.group(1)


def test_an_encrypted_session_with_trust_on_first_use(start_server, tmp_path, connect):
    server = encrypted(start_server, tmp_path)
    pins = tmp_path / "known_servers"
    host = connect("host", admin=True, port=server.port, known_servers=pins)
    assert host.encrypted
    key = server_key(server)
    assert host.server_fingerprint == fingerprint(key)
    assert f"fingerprint={fingerprint(key)}" in server.log()
    assert pins.read_text() == f"127.0.0.1:{server.port} {key}\n"
    host.upload([Datablock("cube", "Object", {"name": "a secret cube"})], timeout=T)

    bob = connect("bob", port=server.port, known_servers=pins)
    bob.download(timeout=T)
    assert bob.blocks["cube"].data == {"name": "a secret cube"}
    host.push("cube", {"name": "moved"})
    bob.wait_until(lambda: bob.blocks["cube"].data == {"name": "moved"}, timeout=T)
    assert pins.read_text().count("\n") == 1, "pinned once"


def test_a_given_key_is_used_and_a_wrong_one_refused(start_server, tmp_path, connect):
    server = encrypted(start_server, tmp_path)
    key = server_key(server)
    ok = connect("ok", port=server.port, server_key=key)
    assert ok.encrypted
    wrong = zmq.curve_keypair()[0].decode()
    with pytest.raises(WrongServerKey) as refused:
        connect("wrong", port=server.port, server_key=wrong)
    message = str(refused.value)
    assert fingerprint(key) in message and fingerprint(wrong) in message
    ok.server_info(timeout=T)


def test_a_changed_key_is_refused_until_accepted(start_server, tmp_path, connect):
    server = encrypted(start_server, tmp_path)
    pins = tmp_path / "known_servers"
    old = server_key(server)
    connect("first", port=server.port, known_servers=pins)
    # Someone else answers on that address and port now.
    pins.write_text(pins.read_text().replace(old, zmq.curve_keypair()[0].decode()))
    with pytest.raises(ChangedServerKey) as refused:
        connect("again", port=server.port, known_servers=pins)
    message = str(refused.value)
    for part in (
        fingerprint(old),
        "intercepting",
        "new key",
        str(pins),
        f"127.0.0.1:{server.port}",
    ):
        assert part in message, message
    # Accepting the new key deliberately: the line deleted, trusted anew.
    pins.write_text("")
    assert connect("accepted", port=server.port, known_servers=pins).encrypted


def test_an_unlisted_client_key_is_refused_with_the_key_to_send(start_server, tmp_path, connect):
    alice = load_or_create_client_key(tmp_path / "alice.key")
    listed = tmp_path / "authorized_keys"
    listed.write_text(f"{alice.public.decode()} alice\n")
    server = encrypted(start_server, tmp_path, "--authorized-keys", str(listed))
    assert connect("alice", port=server.port, client_key=tmp_path / "alice.key").encrypted
    mallory = load_or_create_client_key(tmp_path / "mallory.key")
    with pytest.raises(ClientKeyRefused) as refused:
        connect("mallory", port=server.port, client_key=tmp_path / "mallory.key")
    assert mallory.public.decode() in str(refused.value)
    assert f"fingerprint={mallory.fingerprint}" in server.log()
    assert mallory.public.decode() not in server.log(), "keys stay out of the log"


def test_a_plain_client_on_a_required_server_is_refused_without_harm(
    start_server, tmp_path, connect
):
    server = encrypted(start_server, tmp_path)
    member = connect("member", port=server.port)
    plain = Session("127.0.0.1", server.port, "plain", encrypt=False)
    try:
        with pytest.raises(Timeout):
            plain.authenticate(timeout=3)
    finally:
        plain.close()
    member.server_info(timeout=T)
    assert connect("later", port=server.port).encrypted


def test_a_plain_server_is_used_plainly_and_pins_nothing(server, tmp_path, connect):
    pins = tmp_path / "known_servers"
    session = connect("bob", known_servers=pins, admin_password=ADMIN_PASSWORD)
    assert not session.encrypted and session.server_fingerprint is None
    assert not pins.exists()
