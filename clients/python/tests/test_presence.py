"""Presence arrives as the whole list once, then as changes (protocol
section 8); the session still shows the complete list, and each
UsersChanged carries it."""

from __future__ import annotations

from replication_client import User
from replication_client.model import apply_presence


def users() -> tuple[User, ...]:
    return (
        User("host", True, "ACTIVE", {"color": [1, 0, 0], "frame": 1}, 0.5),
        User("bob", False, "SYNCING", {}, None),
    )


def test_changes_apply_to_the_whole_list() -> None:
    after = apply_presence(
        users(),
        {
            "type": "PRESENCE",
            "left": ["bob"],
            "joined": [{"name": "carol", "admin": False, "status": "LOBBY", "metadata": {"a": 1}}],
            "changed": [
                {
                    "name": "host",
                    "status": "UPLOADING",
                    "metadata": {"frame": 2, "color": None, "mode": "EDIT"},
                }
            ],
            "latency": {"host": 1.25, "carol": 3.5},
        },
    )
    assert [u.name for u in after] == ["host", "carol"]
    host, carol = after
    assert host.status == "UPLOADING"
    assert host.metadata == {"frame": 2, "mode": "EDIT"}
    assert host.latency_ms == 1.25 and host.admin
    assert carol.metadata == {"a": 1} and carol.latency_ms == 3.5


def test_a_latency_only_presence_changes_only_latencies() -> None:
    after = apply_presence(users(), {"type": "PRESENCE", "latency": {"bob": 7.0}})
    assert after[0] == users()[0]
    assert after[1].latency_ms == 7.0 and after[1].metadata == {}


def test_the_session_shows_everyone_with_their_latest_metadata(server) -> None:
    from replication_client import Session, UsersChanged

    with (
        Session("127.0.0.1", server.port, "ann") as ann,
        Session("127.0.0.1", server.port, "ben") as ben,
    ):
        ann.authenticate()
        ben.authenticate()
        seen: list[tuple[User, ...]] = []
        ann.on(UsersChanged, lambda e: seen.append(e.users))
        ben.set_metadata({"frame": 10})
        ann.wait_until(
            lambda: any(u.name == "ben" and u.metadata == {"frame": 10} for u in ann.users), 20
        )
        ben.set_metadata({"frame": None, "mode": "EDIT"})
        ann.wait_until(
            lambda: any(u.name == "ben" and u.metadata == {"mode": "EDIT"} for u in ann.users), 20
        )
        assert {u.name for u in ann.users} == {"ann", "ben"}
        assert seen and all({u.name for u in list_} >= {"ann"} for list_ in seen)
