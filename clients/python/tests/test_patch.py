"""Patch semantics, case by case, as docs/protocol.md ("Patches") states them."""

from __future__ import annotations

import copy

import pytest

from replication_client import PairMap, PatchFailed, PatchMalformed, pack, unpack
from replication_client import patch as P


def applied(value, patch):
    return P.apply(value, patch)


def test_the_documented_example():
    value = {"name": "Cube", "location": [0.0, 0.0, 0.0], "tags": ["a"]}
    patch = [
        {"op": "set", "path": ["location", 1], "value": 2.5},
        {"op": "set", "path": ["hidden"], "value": True},
        {"op": "splice", "path": ["tags"], "index": 1, "insert": ["b", "c"]},
        {"op": "splice", "path": ["name"], "index": 0, "delete": 1, "insert": "K"},
        {"op": "remove", "path": ["tags", 0]},
    ]
    result = applied(value, patch)
    assert result == {
        "name": "Kube",
        "location": [0.0, 2.5, 0.0],
        "tags": ["b", "c"],
        "hidden": True,
    }
    assert list(result) == ["name", "location", "tags", "hidden"]


def test_set_replaces_in_place_adds_at_the_end_and_appends_to_arrays():
    value = {"a": 1, "b": 2}
    assert list(applied(value, [P.set_op(["a"], 9)]).items()) == [("a", 9), ("b", 2)]
    assert list(applied(value, [P.set_op([7], "int key")])) == ["a", "b", 7]
    assert applied([1, 2], [P.set_op([2], 3)]) == [1, 2, 3]
    assert applied("anything", [P.set_op([], {"new": "root"})]) == {"new": "root"}
    with pytest.raises(PatchFailed, match="only append"):
        applied([1, 2], [P.set_op([3], 0)])
    with pytest.raises(PatchFailed, match="string cannot select"):
        applied([1, 2], [P.set_op(["0"], 0)])
    with pytest.raises(PatchFailed, match="cannot select inside"):
        applied({"a": 5}, [P.set_op(["a", "b"], 0)])
    with pytest.raises(PatchFailed, match="no such key"):
        applied({"a": {}}, [P.set_op(["x", "y"], 0)])


def test_steps_match_keys_by_type():
    # A PairMap keeps what a dict cannot: duplicate keys, float and bool keys.
    m = PairMap([(1.0, "float"), (True, "bool"), ("1", "str"), (1, "int"), (1, "second int")])
    value = {"m": m}
    P.apply(value, [P.set_op(["m", 1], "changed")])
    assert m.items() == [
        (1.0, "float"),
        (True, "bool"),
        ("1", "str"),
        (1, "changed"),
        (1, "second int"),
    ]
    P.apply(value, [P.remove_op(["m", 1])])
    assert m.items() == [(1.0, "float"), (True, "bool"), ("1", "str"), (1, "second int")]
    P.apply(value, [P.set_op(["m", 2], "new")])
    assert m.items()[-1] == (2, "new")


def test_decoding_keeps_what_dicts_cannot():
    raw = b"\x83\xa1a\x01\xa1a\x02\x01\x03"  # {"a": 1, "a": 2, 1: 3}
    value = unpack(raw)
    assert isinstance(value, PairMap) and value["a"] == 1
    assert pack(value) == raw
    assert isinstance(unpack(pack({"a": 1, 2: 3})), dict)
    assert isinstance(unpack(pack({1.5: 1})), PairMap)
    invalid_utf8 = b"\xa2\xff\xfe"
    assert pack(unpack(invalid_utf8)) == invalid_utf8
    with pytest.raises(PatchFailed, match="not valid UTF-8"):
        P.apply(unpack(invalid_utf8), [P.splice_op([], 0, 0, "x")])


def test_remove_keeps_the_order_of_the_others():
    assert list(applied({"a": 1, "b": 2, "c": 3}, [P.remove_op(["b"])]).items()) == [
        ("a", 1),
        ("c", 3),
    ]
    assert applied([1, 2, 3], [P.remove_op([0])]) == [2, 3]
    with pytest.raises(PatchFailed):
        applied([1], [P.remove_op([1])])
    with pytest.raises(PatchFailed):
        applied({"a": 1}, [P.remove_op(["b"])])
    with pytest.raises(PatchMalformed, match="must not be empty"):
        applied({}, [P.remove_op([])])


def test_splice_arrays_bins_and_utf8_strings():
    assert applied([1, 2, 3, 4], [P.splice_op([], 1, 2, ["x"])]) == [1, "x", 4]
    assert applied(b"hello", [P.splice_op([], 1, 3, b"EL")]) == b"hELo"
    assert applied("héllo", [P.splice_op([], 1, 2, "e")]) == "hello"  # é is 2 bytes
    assert applied("abc", [P.splice_op([], 3)]) == "abc"
    assert applied([1, 2], [P.splice_op([], 0, 2)]) == []
    with pytest.raises(PatchFailed, match="character boundary"):
        applied("héllo", [P.splice_op([], 2, 1, "x")])
    with pytest.raises(PatchFailed, match="past the end"):
        applied([1], [P.splice_op([], 2)])
    with pytest.raises(PatchFailed, match="runs past the end"):
        applied([1], [P.splice_op([], 0, 2)])
    with pytest.raises(PatchFailed, match="only be spliced"):
        applied([1], [P.splice_op([], 0, 0, "x")])
    with pytest.raises(PatchFailed, match="must be an array, a bin or a string"):
        applied({"a": 1}, [P.splice_op([], 0)])


def test_a_failing_patch_changes_nothing():
    value = {"name": "Cube", "v": [[0, 0], [1, 1]], "t": "ab", "k": {"x": 1, "y": 2}}
    before = copy.deepcopy(value)
    patch = [
        P.set_op(["name"], "Changed"),
        P.remove_op(["k", "x"]),
        P.splice_op(["v"], 0, 1, [[5, 5], [6, 6]]),
        P.splice_op(["t"], 0, 1, "Z"),
        P.set_op(["new"], 1),
        P.set_op(["v", 9], 0),  # fails: past the end
    ]
    with pytest.raises(PatchFailed) as err:
        P.apply(value, patch)
    assert err.value.op == 5
    assert value == before and list(value["k"]) == ["x", "y"] and list(value) == list(before)


@pytest.mark.parametrize(
    "patch",
    [
        {"op": "set"},
        [{"op": "set", "path": []}],
        [{"op": "set", "path": [], "value": 1, "extra": 0}],
        [{"op": "remove", "path": ["a"], "value": 1}],
        [{"op": "move", "path": []}],
        [{"op": "set", "path": [-1], "value": 1}],
        [{"op": "set", "path": [1.0], "value": 1}],
        [{"op": "set", "path": [True], "value": 1}],
        [{"op": "set", "path": "a", "value": 1}],
        [{"op": "splice", "path": []}],
        [{"op": "splice", "path": [], "index": 0, "insert": None}],
        [{"op": "splice", "path": [], "index": 0, "insert": 5}],
        [{"op": "splice", "path": [], "index": 0, "delete": -1}],
        [{"path": []}],
        [5],
        [{"op": "set", "path": [0] * 65, "value": 1}],
        [PairMap([("op", "remove"), ("op", "remove"), ("path", [0])])],
    ],
)
def test_malformed_patches_are_refused_whole(patch):
    with pytest.raises(PatchMalformed):
        P.validate(patch)
    with pytest.raises(PatchMalformed):
        P.apply([1], patch)


def test_an_empty_patch_is_valid():
    assert P.apply({"a": 1}, []) == {"a": 1}
