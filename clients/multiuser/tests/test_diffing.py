"""Changes as protocol patches: applying what ``diff`` makes, with the
protocol's rules (the Python client's ``patch.apply``), gives the new value."""

from __future__ import annotations

import copy
import math
import random

import pytest
from replication_client import pack, patch, unpack

from replication.serve.diffing import MAX_OPS, PatchDelta, diff, same


def applied(old, new):
    ops = diff(old, new)
    assert ops is not None
    result = patch.apply(copy.deepcopy(old), ops)
    assert same(result, new), (old, new, ops)
    return ops


def test_maps_lists_and_scalars():
    old = {"name": "Cube", "location": [0.0, 0.0, 0.0], "tags": ["a", "b"], "gone": 1}
    new = {"name": "Cube.001", "location": [0.0, 2.5, 0.0], "tags": ["a", "x", "b"], "new": True}
    ops = applied(old, new)
    assert len(ops) == 5  # remove gone, set name, set location[1], splice tags, set new


def test_equal_values_make_no_patch():
    value = {"a": [1, 2.5, {"b": b"xyz"}], "nan": float("nan")}
    assert diff(value, copy.deepcopy(value)) == []


def test_kinds_are_told_apart():
    assert applied({"v": 1}, {"v": 1.0}) == [{"op": "set", "path": ["v"], "value": 1.0}]
    assert applied({"v": 1}, {"v": True}) == [{"op": "set", "path": ["v"], "value": True}]
    applied({"v": [1]}, {"v": {"0": 1}})
    applied([1, 2], "text")


def test_one_vertex_of_a_million_travels_as_a_few_bytes():
    vertices = bytes(random.Random(1).getrandbits(8) for _ in range(12 * 1000)) * 1000
    moved = bytearray(vertices)
    moved[12 * 500_000 : 12 * 500_000 + 12] = b"\x01" * 12
    ops = applied({"co": vertices}, {"co": bytes(moved)})
    assert len(ops) == 1 and len(pack(ops)) < 200


def test_scattered_byte_changes_are_separate_splices():
    old = bytes(100_000)
    new = bytearray(old)
    for position in (10, 50_000, 99_990):
        new[position] = 7
    ops = applied(old, bytes(new))
    assert len(ops) == 3


def test_bytes_that_grow_or_shrink():
    applied(b"abcdef", b"abXYZcdef")
    applied(b"abcdef", b"af")
    applied(b"", b"new")
    applied(b"aaaa", b"aa")


def test_lists_that_grow_or_shrink():
    applied([1, 2, 3, 4], [1, 9, 9, 4])
    applied([1, 2, 3, 4], [1, 4])
    applied([1, 2, 3], [0, 1, 2, 3, 4])
    applied([], [1])
    applied([[1, 2], [3]], [[1, 2], [3, 4]])


def test_maps_with_integer_keys_and_odd_keys():
    applied({1: "a", 2: "b"}, {1: "a", 3: "c"})
    # A key that is neither str nor int cannot be addressed: the whole map goes.
    assert diff({1.5: "a"}, {1.5: "b"}) == [{"op": "set", "path": [], "value": {1.5: "b"}}]


def test_too_many_changes_give_up():
    old = list(range(MAX_OPS + 10))
    new = [v + 1 for v in old]
    assert diff(old, new) is None


def test_nan_is_the_same_as_nan():
    assert same(float("nan"), float("nan"))
    assert not same(0.0, -0.0) or 0.0 == -0.0  # equal floats stay equal
    assert diff({"x": [float("nan")]}, {"x": [float("nan")]}) == []


def test_patch_delta_is_what_the_add_on_expects_of_a_delta():
    old, new = {"a": 1}, {"a": 2}
    delta = PatchDelta(old, new)
    assert delta.diff
    assert old + delta is new
    assert not PatchDelta(new, {"a": 2}).diff


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bytes", "bool", "none"]
    if depth < 3:
        kinds += ["list", "dict"] * 2
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-5, 5)
    if kind == "float":
        return rng.choice([0.0, 1.5, -2.25, math.inf, float("nan")])
    if kind == "str":
        return rng.choice(["", "a", "Cube", "é"])
    if kind == "bytes":
        return bytes(rng.randint(0, 3) for _ in range(rng.randint(0, 40)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = rng.sample(["a", "b", "c", "d", 1, 2], rng.randint(0, 4))
    return {k: _random_value(rng, depth + 1) for k in keys}


def _mutate(rng: random.Random, value):
    if isinstance(value, dict) and value and rng.random() < 0.8:
        out = dict(value)
        key = rng.choice(list(out))
        roll = rng.random()
        if roll < 0.3:
            del out[key]
        elif roll < 0.5:
            out["new"] = _random_value(rng, 2)
        else:
            out[key] = _mutate(rng, out[key])
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out = list(value)
        i = rng.randrange(len(out))
        roll = rng.random()
        if roll < 0.25:
            del out[i]
        elif roll < 0.5:
            out.insert(i, _random_value(rng, 2))
        else:
            out[i] = _mutate(rng, out[i])
        return out
    if isinstance(value, bytes) and value and rng.random() < 0.8:
        out = bytearray(value)
        out[rng.randrange(len(out))] ^= 0xFF
        return bytes(out)
    return _random_value(rng, 1)


@pytest.mark.parametrize("seed", range(20))
def test_random_changes_round_trip(seed):
    rng = random.Random(seed)
    for _ in range(100):
        old = _random_value(rng)
        new = old
        for _ in range(rng.randint(1, 4)):
            new = _mutate(rng, new)
        # What travels is MessagePack: compare what both ends decode.
        old, new = unpack(pack(old)), unpack(pack(new))
        applied(old, new)
