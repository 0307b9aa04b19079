"""What changed between two states of a datablock, as a replication-serve
patch (docs/protocol.md, "Patches").

A change travels as the operations that turn the state the server has into
the new one, so that moving one vertex of a million sends a few dozen
bytes, not the mesh. :func:`diff` walks both values together: maps by key,
lists element by element (or one splice where their lengths differ), bytes
by the byte ranges that differ (a mesh's vertices are one ``bytes`` value),
anything else as a whole. Applying the result to ``old`` with the
protocol's rules gives a value equal to ``new``.

Values are those :func:`serve.values.normalize` makes, so every map has str
or int keys; a map that has any other key is replaced whole.
"""

from __future__ import annotations

from typing import Any

from replication_client import patch

__all__ = ["diff", "same", "PatchDelta", "Pending"]

_GRAIN = 64
"""Bytes compared as one unit when looking for what differs in a bin: a
changed vertex (12 bytes) costs at most one such unit on each side."""
_MERGE_GAP = 256
"""Differing byte ranges closer than this travel as one splice: a splice
costs about 20 bytes of framing, so joining near ranges is cheaper."""
MAX_OPS = 4096
"""Past this many operations the change is not a small one: :func:`diff`
gives up (returns None) and the caller sends the whole data."""


class _TooMany(Exception):
    pass


def same(a: Any, b: Any) -> bool:
    """Equality as MessagePack sees it: ``1``, ``1.0`` and ``True`` differ
    (Python's ``==`` calls them equal), a NaN equals a NaN (or a scene with
    one would always look changed), and map order does not matter."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is float:
        return a == b or (a != a and b != b)
    if kind is dict:
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    if kind is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def diff(old: Any, new: Any) -> list[dict[str, Any]] | None:
    """The patch from ``old`` to ``new`` (empty when they are the same), or
    None when it would take more than :data:`MAX_OPS` operations."""
    ops: list[dict[str, Any]] = []
    try:
        _walk(old, new, [], ops)
    except _TooMany:
        return None
    return ops


def _emit(ops: list[dict[str, Any]], op: dict[str, Any]) -> None:
    if len(ops) >= MAX_OPS:
        raise _TooMany
    ops.append(op)


def _walk(old: Any, new: Any, path: list[Any], ops: list[dict[str, Any]]) -> None:
    if same(old, new):
        return
    kind = type(new)
    if kind is type(old):
        if kind is dict and _plain_keys(old) and _plain_keys(new):
            return _walk_map(old, new, path, ops)
        if kind is list:
            return _walk_list(old, new, path, ops)
        if kind is bytes:
            return _walk_bytes(old, new, path, ops)
    _emit(ops, patch.set_op(path, new))


def _plain_keys(value: dict[Any, Any]) -> bool:
    return all(type(k) is str or type(k) is int for k in value)


def _walk_map(old: dict[Any, Any], new: dict[Any, Any], path: list[Any], ops: list[Any]) -> None:
    for key in old:
        if key not in new:
            _emit(ops, patch.remove_op([*path, key]))
    for key, value in new.items():
        if key in old:
            _walk(old[key], value, [*path, key], ops)
        else:
            _emit(ops, patch.set_op([*path, key], value))


def _walk_list(old: list[Any], new: list[Any], path: list[Any], ops: list[Any]) -> None:
    if len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _walk(a, b, [*path, i], ops)
        return
    start = 0
    limit = min(len(old), len(new))
    while start < limit and same(old[start], new[start]):
        start += 1
    end = 0
    while end < limit - start and same(old[-1 - end], new[-1 - end]):
        end += 1
    removed = len(old) - start - end
    _emit(ops, patch.splice_op(path, start, removed, new[start : len(new) - end]))


def _walk_bytes(old: bytes, new: bytes, path: list[Any], ops: list[Any]) -> None:
    if len(old) != len(new):
        start = _common_prefix(old, new)
        end = _common_suffix(old, new, start)
        _emit(
            ops, patch.splice_op(path, start, len(old) - start - end, new[start : len(new) - end])
        )
        return
    runs: list[list[int]] = []
    _differing(memoryview(old), memoryview(new), 0, len(old), runs)
    for lo, hi in runs:
        _emit(ops, patch.splice_op(path, lo, hi - lo, new[lo:hi]))


def _differing(a: memoryview, b: memoryview, lo: int, hi: int, runs: list[list[int]]) -> None:
    """Appends to ``runs`` the ranges of [lo, hi) where ``a`` and ``b``
    differ, found by halving: equal halves cost one memory comparison, so
    a few changes in a large bin cost a few dozen comparisons."""
    if a[lo:hi] == b[lo:hi]:
        return
    if hi - lo <= _GRAIN:
        if runs and lo - runs[-1][1] <= _MERGE_GAP:
            runs[-1][1] = hi
        else:
            if len(runs) >= MAX_OPS:
                raise _TooMany
            runs.append([lo, hi])
        return
    mid = lo + (hi - lo) // 2
    _differing(a, b, lo, mid, runs)
    _differing(a, b, mid, hi, runs)


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix, by halving (memory comparisons only)."""
    ma, mb = memoryview(a), memoryview(b)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ma[:mid] == mb[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes, prefix: int) -> int:
    """Length of the common suffix that does not overlap ``prefix``."""
    ma, mb = memoryview(a), memoryview(b)
    lo, hi = 0, min(len(a), len(b)) - prefix
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ma[len(a) - mid :] == mb[len(b) - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PatchDelta:
    """What :meth:`protocol.ReplicatedDatablock.compute_delta` returns by
    default: the patch from the last committed state to the current one.

    It offers what the add-on uses of a delta: ``diff`` (empty when nothing
    changed) and ``last + delta`` (the new state)."""

    __slots__ = ("diff", "ops", "new")

    def __init__(self, old: Any, new: Any) -> None:
        self.new = new
        self.ops = diff(old, new)
        self.diff = True if self.ops is None else self.ops

    def __radd__(self, other: Any) -> Any:
        return self.new


class Pending:
    """A node's change since the state the server has: ``base`` is that
    state (None for a datablock the server does not have yet), ``ops`` the
    patch from it to the node's data when already known."""

    __slots__ = ("base", "ops")

    def __init__(self, base: Any, ops: list[dict[str, Any]] | None) -> None:
        self.base = base
        self.ops = ops
