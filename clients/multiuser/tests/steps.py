"""Steps the Blender tests share: what artists do and wait for, in
Blenders driven through blender_harness."""

from __future__ import annotations

import time
from typing import Any

from blender_harness import Blender
from relay import SUBSCRIBER

SEEN_WITHIN = 2.0
"""The acceptance bound for a change to show in the other Blender."""
APPLY_DELAY = 0.25
"""The add-on's "Apply delay" the tests set (its default is 1 s): received
changes reach Blender on a timer of that period, so with the default a
change waits up to a second for the timer's next tick whatever the
library and the server do. A shorter period keeps SEEN_WITHIN about
replication on a loaded machine; the benchmark keeps the default."""
ACTIVE = 2  # replication.constants.STATE_ACTIVE
INITIAL = 0


def differences(a: object, b: object, path: str = "") -> list[str]:
    """Where two dumps differ. Two things are not differences, because the
    add-on's own round trip through Blender makes them: a float that
    Blender derives on load (an object's matrices, recomputed from its
    location, rotation and scale) may differ in its last float32 bit, and
    a key with an empty value on one side may be absent on the other (an
    empty sequence editor is dumped as ``{}`` and loaded as none)."""
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= 1e-6 * max(1.0, abs(a)) else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                if (a.get(key) if key in a else b.get(key)) not in ({}, [], None):
                    out.append(
                        f"{path}/{key}: only on {'the first' if key in a else 'the second'} side"
                    )
                continue
            out += differences(a[key], b[key], f"{path}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}/{i}")
        ]
    return [] if a == b else [f"{path}: {a!r:.100} != {b!r:.100}"]


def seen(blender: Blender, expression: str, what: str) -> float:
    """Seconds until ``expression`` holds in ``blender`` (fails past the bound)."""
    start = time.monotonic()
    blender.wait_until(expression, timeout=30, what=what)
    elapsed = time.monotonic() - start
    print(f"{what}: seen after {elapsed:.2f} s")
    assert elapsed < SEEN_WITHIN, f"{what}: took {elapsed:.2f} s"
    return elapsed


def settle(*blenders: Blender) -> None:
    """Waits until every Blender has applied all it received and the server
    has taken all it sent, and they hold the same revisions.

    The add-on drops a local edit made in the same update cycle as the
    application of someone else's change (its depsgraph handler skips the
    whole cycle), so a test that edits must first let the others' changes
    land, as an artist working a moment later would."""
    deadline = time.monotonic() + 30
    while True:
        seen_revisions = [b.eval("artist.revisions()") for b in blenders]
        if None not in seen_revisions and all(r == seen_revisions[0] for r in seen_revisions):
            return
        assert time.monotonic() < deadline, f"the Blenders do not settle: {seen_revisions}"
        time.sleep(0.1)


def take(artist_blender: Blender, other: Blender, name: str, user: str) -> None:
    """Clicks ``name`` (only it) in ``artist_blender``: the add-on locks what
    its user selects, and sends changes only of what that user holds."""
    # What another user holds cannot be clicked: wait until it can be.
    artist_blender.wait_until(
        f"not bpy.data.objects[{name!r}].hide_select", what=f"{name} can be selected"
    )
    artist_blender.run(f"artist.select({name!r})")
    artist_blender.wait_until(f"artist.owner({name!r}) == {user!r}", what=f"{user} holds {name}")
    other.wait_until(
        f"artist.owner({name!r}) == {user!r}", what=f"the other side sees {user} hold {name}"
    )
    settle(artist_blender, other)


def grab(artist_blender: Blender, other: Blender, name: str, user: str) -> None:
    """The other user lets go of everything, then this one takes ``name``."""
    other.run("artist.select()")
    take(artist_blender, other, name, user)


def one_holds_the_other_is_refused(pair: Any) -> None:
    """Alice holds the cube: Bob cannot click it, and a script of his that
    moves it sends nothing. Then both click it at once while Bob's view is
    late (``pair.relay`` holds the broadcasts he would get): his add-on asks
    for it too, and the server, which enforces ownership, refuses him."""
    alice, bob = pair.alice, pair.bob
    grab(alice, bob, "Cube", "alice")
    bob.wait_until("bpy.data.objects['Cube'].hide_select", what="Bob cannot click Alice's cube")
    cube = alice.eval("list(bpy.data.objects['Cube'].location)")
    # A script of Bob's moves the cube anyway: his add-on keeps it to himself.
    bob.run("bpy.data.objects['Cube'].location = (7.0, 7.0, 7.0)")
    take(bob, alice, "Light", "bob")  # Alice keeps the cube selected
    bob.run("bpy.data.objects['Light'].location.x = 11.0")
    seen(alice, "bpy.data.objects['Light'].location.x == 11.0", "Bob's light")
    # Bob's updates travel in order: had the cube's gone, it would be there.
    assert alice.eval("list(bpy.data.objects['Cube'].location)") == cube

    # Both click the cube at once: Bob's view is late (the relay holds the
    # broadcasts he would get), so his add-on asks for it too, and the
    # server, which enforces ownership, refuses him.
    alice.run("artist.select()")
    bob.wait_until("artist.owner('Cube') == 'COMMON' and not bpy.data.objects['Cube'].hide_select")
    settle(alice, bob)
    refusals = bob.log().count("refused")
    with pair.relay.holding(SUBSCRIBER):
        alice.run("artist.select('Cube')")
        alice.wait_until("artist.owner('Cube') == 'alice'")
        bob.run("artist.select('Cube', 'Light')")
        deadline = time.monotonic() + 30
        while bob.log().count("refused") == refusals:
            assert time.monotonic() < deadline, f"no refusal in Bob's log\n{bob.log()}"
            time.sleep(0.1)
        assert bob.eval("artist.owner('Cube')") == "COMMON"  # still late
    bob.wait_until("artist.owner('Cube') == 'alice' and bpy.data.objects['Cube'].hide_select")


def the_hosted_session_is_encrypted_and_pinned(pair: Any) -> None:
    """Hosting starts a server that listens beyond loopback, so it encrypts
    by default; the joiner, who typed only an address and a port, pinned
    the key it was given on first use."""
    import zmq
    from replication_client.keys import KnownServers, ask_server_key

    context = zmq.Context()
    try:
        key = ask_server_key(context, "127.0.0.1", pair.relay.target_port, 20.0)
    finally:
        context.destroy(linger=0)
    assert key is not None, "the hosted server does not encrypt"
    assert KnownServers().get(f"127.0.0.1:{pair.relay.port}") == key
