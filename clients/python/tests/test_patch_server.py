"""The Python patch rules against the server's, on random values and patches.

The server applies every patch itself and forwards it; clients must get the
same result or their replicas drift. For each case, a client that holds no
copy sends the patch unchecked; the test predicts the outcome with
replication_client.patch, then compares: accepted or refused, the server's
state (FETCH), and the replica of an observer that applied the forwarded
patch. Values are compared with their types and map order.
"""

from __future__ import annotations

import copy
import random
import time
from typing import Any

from conftest import T

from replication_client import COMMON, PairMap, PatchError, ServerError, Updated
from replication_client import patch as P

KEYS = ["a", "b", "name", "é", "ключ", "x"]
TEXTS = ["", "abc", "héllo", "日本語", "a😀b"]


def canon(v: Any) -> Any:
    """A comparable form that keeps types (1, 1.0 and True differ) and order."""
    if isinstance(v, (dict, PairMap)):
        return ("map", tuple((canon(k), canon(x)) for k, x in v.items()))
    if isinstance(v, list):
        return ("array", tuple(canon(x) for x in v))
    return (type(v).__name__, v)


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(
        ["map", "map", "array", "array", "str", "bin", "int", "float", "bool", "nil"]
        if depth < 3
        else ["str", "bin", "int", "float", "bool", "nil"]
    )
    if kind == "map":
        m: dict[Any, Any] = {}
        for _ in range(rng.randrange(4)):
            key = rng.choice(KEYS) if rng.random() < 0.85 else rng.randrange(3)
            m[key] = value(rng, depth + 1)
        return m
    if kind == "array":
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        "str": lambda: rng.choice(TEXTS),
        "bin": lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(4))),
        "int": lambda: rng.randrange(-300, 70000),
        "float": lambda: rng.uniform(-10, 10),
        "bool": lambda: rng.random() < 0.5,
        "nil": lambda: None,
    }[kind]()


def some_path(rng: random.Random, v: Any) -> list[Any]:
    """Mostly an existing path, sometimes one step off."""
    path: list[Any] = []
    while rng.random() < 0.7:
        if isinstance(v, dict) and v:
            key = rng.choice(list(v))
        elif isinstance(v, list) and v:
            key = rng.randrange(len(v))
        else:
            break
        path.append(key)
        v = v[key]
    if rng.random() < 0.1:
        path.append(rng.choice([rng.choice(KEYS), rng.randrange(4)]))
    return path


def at(v: Any, path: list[Any]) -> Any:
    for step in path:
        try:
            v = v[step]
        except (KeyError, IndexError, TypeError):
            return None
    return v


def operation(rng: random.Random, v: Any) -> dict[str, Any]:
    path = some_path(rng, v)
    kind = rng.choice(["set", "set", "remove", "splice", "splice"])
    target = at(v, path)
    if kind == "remove" and not path and rng.random() < 0.8:
        kind = "set"
    if kind == "splice" and not isinstance(target, (list, str, bytes)) and rng.random() < 0.8:
        kind = "set"
    if kind == "set":
        return P.set_op(path, value(rng, 2))
    if kind == "remove":
        return P.remove_op(path)
    matching = (
        [value(rng, 3)]
        if isinstance(target, list)
        else rng.choice(TEXTS)
        if isinstance(target, str)
        else b"\x01\x02"
        if isinstance(target, bytes)
        else None
    )
    insert = matching if rng.random() < 0.85 else rng.choice([None, [1], "é", b"\x03", 5])
    op = P.splice_op(path, rng.randrange(4), rng.randrange(3))
    if insert is not None:
        op["insert"] = insert
    if rng.random() < 0.03:
        op["unexpected"] = 1  # malformed: refused whole
    return op


def test_patches_apply_the_same_in_python_and_on_the_server(connect):
    host = connect("host", admin=True)
    host.upload([], timeout=T)
    sender = connect("sender")  # sends patches unchecked (check=False)
    observer = connect("observer")
    observer.download(timeout=T)
    errors: list[ServerError] = []
    sender.on(ServerError, errors.append)
    updates: list[Updated] = []
    observer.on(Updated, updates.append)
    rng = random.Random(20240601)
    accepted = refused = 0
    for case in range(200):
        uuid = f"case{case}"
        start = value(rng)
        patch = [operation(rng, start) for _ in range(rng.choice([1, 1, 2, 3]))]
        try:
            expected = P.apply(copy.deepcopy(start), copy.deepcopy(patch))
            ok = True
        except PatchError:
            expected, ok = start, False
        sender.push(uuid, start, type_id="Case", owner=COMMON)
        sender.push_patch(uuid, patch, base_revision=1, check=False)
        deadline = time.monotonic() + T
        while not (errors or (uuid in observer.blocks and observer.blocks[uuid].revision == 2)):
            assert time.monotonic() < deadline, f"case {case}: no outcome"
            sender.poll(0.005)
            observer.poll(0.005)
        context = f"case {case}: {start!r} with {patch!r}"
        if errors:
            error = errors.pop()
            assert not ok, f"{context}: the server refused ({error.message}), Python applied it"
            assert error.code == "patch_failed" and error.refers_to["uuid"] == uuid, context
            refused += 1
        else:
            assert ok, f"{context}: the server applied it, Python refused"
            update = [u for u in updates if u.uuid == uuid][-1]
            assert update.source == "update", f"{context}: the observer could not apply it"
            assert canon(observer.blocks[uuid].data) == canon(expected), context
            accepted += 1
        assert canon(sender.fetch(uuid).data) == canon(expected), context
    assert accepted > 60 and refused > 30, (accepted, refused)
