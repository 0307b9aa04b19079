"""Patches: building them, and applying them exactly as the protocol says.

A patch is a list of operation maps (the wire form, see "Patches" in
docs/protocol.md). The server forwards other users' patches unchanged and
every client must apply them with the same rules, or replicas drift apart;
that is why :func:`apply` checks everything the server checks.

:func:`apply` is atomic: each operation records how to undo itself and, if
a later one fails, the recorded undos run in reverse order, so the value is
left exactly as it was without copying it first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .codec import PairMap
from .errors import PatchFailed, PatchMalformed

__all__ = ["set_op", "remove_op", "splice_op", "validate", "apply"]

MAX_OPS = 65_536
MAX_PATH_STEPS = 64
_FIELDS = ("op", "path", "value", "index", "delete", "insert")
_ALLOWED = {"set": {"value"}, "remove": set(), "splice": {"index", "delete", "insert"}}
_MISSING = object()

Path = Sequence["str | int"]


def set_op(path: Path, value: Any) -> dict[str, Any]:
    """Sets the value at ``path`` (adds a map entry or appends to an array)."""
    return {"op": "set", "path": list(path), "value": value}


def remove_op(path: Path) -> dict[str, Any]:
    """Removes the map entry or array element at ``path``."""
    return {"op": "remove", "path": list(path)}


def splice_op(path: Path, index: int, delete: int = 0, insert: Any = _MISSING) -> dict[str, Any]:
    """Replaces ``delete`` items from ``index`` of the array, bin or string at
    ``path`` with ``insert`` (a list, bytes or str; strings count UTF-8 bytes)."""
    op: dict[str, Any] = {"op": "splice", "path": list(path), "index": index}
    if delete:
        op["delete"] = delete
    if insert is not _MISSING:
        op["insert"] = insert
    return op


# ------------------------------------------------------------------ parsing


class _Op:
    __slots__ = ("kind", "path", "value", "index", "delete", "insert")

    def __init__(self, kind: str, path: list[Any]) -> None:
        self.kind = kind
        self.path = path
        self.value: Any = None
        self.index = 0
        self.delete = 0
        self.insert: Any = _MISSING


def _is_uint(v: Any) -> bool:
    return type(v) is int and 0 <= v < 1 << 64


def _valid_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the wire bytes were not UTF-8
        return False
    return True


def _entries(item: Any) -> list[tuple[Any, Any]]:
    if isinstance(item, dict):
        return list(item.items())
    if isinstance(item, PairMap):
        return item.items()
    raise ValueError(f"an operation must be a map, not {_kind(item)}")


def _parse_op(item: Any) -> _Op:
    fields: dict[str, Any] = {}
    for key, value in _entries(item):
        if type(key) is not str:
            raise ValueError(f"operation keys must be strings, not {_kind(key)}")
        if key not in _FIELDS:
            raise ValueError(f"unknown field {key!r}")
        if key in fields:
            raise ValueError(f"duplicate field {key!r}")
        fields[key] = value
    if "op" not in fields:
        raise ValueError('missing field "op"')
    kind = fields["op"]
    if type(kind) is not str:
        raise ValueError(f'field "op" must be a string, not {_kind(kind)}')
    if kind not in _ALLOWED:
        raise ValueError(f"unknown op {kind!r}")
    for name in ("value", "index", "delete", "insert"):
        if name in fields and name not in _ALLOWED[kind]:
            raise ValueError(f"field {name!r} is not allowed in a {kind!r} operation")
    if "path" not in fields:
        raise ValueError('missing field "path"')
    op = _Op(kind, _parse_path(fields["path"]))
    if kind == "set":
        if "value" not in fields:
            raise ValueError('missing field "value"')
        op.value = fields["value"]
    elif kind == "remove":
        if not op.path:
            raise ValueError("the path of a remove must not be empty")
    else:
        if "index" not in fields:
            raise ValueError('missing field "index"')
        op.index = _parse_uint("index", fields["index"])
        op.delete = _parse_uint("delete", fields.get("delete", 0))
        if "insert" in fields:
            insert = fields["insert"]
            if isinstance(insert, str):
                if not _valid_text(insert):
                    raise ValueError('field "insert" is a string that is not valid UTF-8')
            elif not isinstance(insert, (list, bytes, bytearray)):
                raise ValueError(
                    f'field "insert" must be an array, a bin or a string, not {_kind(insert)}'
                )
            op.insert = insert
    return op


def _parse_path(path: Any) -> list[Any]:
    if not isinstance(path, list):
        raise ValueError(f'field "path" must be an array, not {_kind(path)}')
    if len(path) > MAX_PATH_STEPS:
        raise ValueError(f"the path has {len(path)} steps, more than {MAX_PATH_STEPS}")
    for i, step in enumerate(path):
        if type(step) is str:
            if not _valid_text(step):
                raise ValueError(f"path step {i} is a string that is not valid UTF-8")
        elif not _is_uint(step):
            raise ValueError(
                f"path step {i} must be a string or a non-negative integer, not {step!r}"
            )
    return path


def _parse_uint(name: str, v: Any) -> int:
    if not _is_uint(v):
        raise ValueError(f"field {name!r} must be a non-negative integer, not {v!r}")
    return v


def _parse(patch: Any) -> list[_Op]:
    if not isinstance(patch, list):
        raise PatchMalformed(None, f"a patch must be an array, not {_kind(patch)}")
    if len(patch) > MAX_OPS:
        raise PatchMalformed(None, f"{len(patch)} operations, more than {MAX_OPS}")
    ops = []
    for i, item in enumerate(patch):
        try:
            ops.append(_parse_op(item))
        except ValueError as e:
            raise PatchMalformed(i, str(e)) from None
    return ops


def validate(patch: Any) -> None:
    """Raises :class:`PatchMalformed` unless ``patch`` is a well-formed patch."""
    _parse(patch)


def _kind(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (bytes, bytearray)):
        return "a bin"
    if isinstance(v, (list, tuple)):
        return "an array"
    if isinstance(v, (dict, PairMap)):
        return "a map"
    return type(v).__name__


# ------------------------------------------------------------------ applying

Undo = Callable[[], object]


class _Fail(Exception):
    pass


def _dict_find(d: dict[Any, Any], step: Any) -> bool:
    """Whether ``d`` has the key ``step`` with the step's own type."""
    if step not in d:
        return False
    if type(step) is str:
        return True  # only a str equals a str
    for k in d:  # an int step must not match a float or bool key
        if k == step:
            if type(k) is int:
                return True
            raise _Fail(f"map key {k!r} cannot be told apart from {step!r} in a dict")
    return False


def _child(container: Any, step: Any, i: int) -> Any:
    """The existing child selected by ``step`` (path step ``i``), or _Fail."""
    if isinstance(container, dict):
        if _dict_find(container, step):
            return container[step]
        raise _Fail(f"path step {i} ({step!r}): no such key in the map")
    if isinstance(container, PairMap):
        pos = container.find(step)
        if pos < 0:
            raise _Fail(f"path step {i} ({step!r}): no such key in the map")
        return container.pairs[pos][1]
    if isinstance(container, list):
        if type(step) is str:
            raise _Fail(f"path step {i} ({step!r}): a string cannot select an array element")
        if step >= len(container):
            raise _Fail(
                f"path step {i} ({step}): index out of bounds "
                f"for an array of length {len(container)}"
            )
        return container[step]
    raise _Fail(f"path step {i} ({step!r}): cannot select inside {_kind(container)}")


def _get(container: Any, key: Any) -> Any:
    if isinstance(container, PairMap):
        return container.pairs[container.find(key)][1]
    return container[key]


def _put(container: Any, key: Any, value: Any) -> None:
    if isinstance(container, PairMap):
        container.pairs[container.find(key)][1] = value
    else:
        container[key] = value


def _parent_of(box: list[Any], path: list[Any]) -> Any:
    """The container holding the last step of a non-empty ``path``."""
    node = box[0]
    for i, step in enumerate(path[:-1]):
        node = _child(node, step, i)
    return node


def _set(box: list[Any], path: list[Any], value: Any, log: list[Undo]) -> None:
    if not path:
        old = box[0]
        box[0] = value
        log.append(lambda: box.__setitem__(0, old))
        return
    parent = _parent_of(box, path)
    last, n = path[-1], len(path) - 1
    if isinstance(parent, dict):
        if _dict_find(parent, last):
            old = parent[last]
            parent[last] = value
            log.append(lambda: parent.__setitem__(last, old))
        else:
            parent[last] = value
            log.append(lambda: parent.__delitem__(last))
    elif isinstance(parent, PairMap):
        pos = parent.find(last)
        if pos >= 0:
            entry = parent.pairs[pos]
            old = entry[1]
            entry[1] = value
            log.append(lambda: entry.__setitem__(1, old))
        else:
            parent.pairs.append([last, value])
            log.append(parent.pairs.pop)
    elif isinstance(parent, list):
        if type(last) is str:
            raise _Fail(f"path step {n} ({last!r}): a string cannot select an array element")
        if last < len(parent):
            old = parent[last]
            parent[last] = value
            log.append(lambda: parent.__setitem__(last, old))
        elif last == len(parent):
            parent.append(value)
            log.append(parent.pop)
        else:
            raise _Fail(
                f"path step {n} ({last}): index out of bounds for an array of length "
                f"{len(parent)} (set may only append at the end)"
            )
    else:
        raise _Fail(f"path step {n} ({last!r}): cannot select inside {_kind(parent)}")


def _remove(box: list[Any], path: list[Any], log: list[Undo]) -> None:
    parent = _parent_of(box, path)
    last, n = path[-1], len(path) - 1
    if isinstance(parent, dict):
        if not _dict_find(parent, last):
            raise _Fail(f"path step {n} ({last!r}): no such key in the map")
        pos = list(parent).index(last)
        old = parent.pop(last)

        def undo() -> None:
            items = list(parent.items())
            items.insert(pos, (last, old))
            parent.clear()
            parent.update(items)

        log.append(undo)
    elif isinstance(parent, PairMap):
        pos = parent.find(last)
        if pos < 0:
            raise _Fail(f"path step {n} ({last!r}): no such key in the map")
        entry = parent.pairs.pop(pos)
        log.append(lambda: parent.pairs.insert(pos, entry))
    elif isinstance(parent, list):
        if type(last) is str:
            raise _Fail(f"path step {n} ({last!r}): a string cannot select an array element")
        if last >= len(parent):
            raise _Fail(
                f"path step {n} ({last}): index out of bounds for an array of length {len(parent)}"
            )
        old = parent.pop(last)
        log.append(lambda: parent.insert(last, old))
    else:
        raise _Fail(f"path step {n} ({last!r}): cannot select inside {_kind(parent)}")


def _splice(box: list[Any], op: _Op, log: list[Undo]) -> None:
    path = op.path
    if path:
        holder = _parent_of(box, path)
        key = path[-1]
        target = _child(holder, key, len(path) - 1)
    else:
        holder, key, target = box, 0, box[0]
    if isinstance(target, list):
        length = len(target)
    elif isinstance(target, (bytes, bytearray)):
        length = len(target)
    elif isinstance(target, str):
        if not _valid_text(target):
            raise _Fail("the target string is not valid UTF-8")
        encoded = target.encode("utf-8")
        length = len(encoded)
    else:
        raise _Fail(f"the splice target must be an array, a bin or a string, not {_kind(target)}")
    start, end = op.index, op.index + op.delete
    if start > length:
        raise _Fail(f"splice index {start} is past the end (length {length})")
    if end > length:
        raise _Fail(
            f"splice deleting {op.delete} from index {start} runs past the end (length {length})"
        )
    insert = op.insert
    if isinstance(target, list):
        if insert is _MISSING:
            insert = []
        elif not isinstance(insert, list):
            raise _Fail(f"an array can only be spliced with an array, not {_kind(insert)}")
        removed = target[start:end]
        target[start:end] = insert
        count = len(insert)
        log.append(lambda: target.__setitem__(slice(start, start + count), removed))
        return
    if isinstance(target, (bytes, bytearray)):
        if insert is _MISSING:
            insert = b""
        elif not isinstance(insert, (bytes, bytearray)):
            raise _Fail(f"a bin can only be spliced with a bin, not {_kind(insert)}")
        new: Any = bytes(target[:start]) + bytes(insert) + bytes(target[end:])
    else:
        if insert is _MISSING:
            insert = ""
        elif not isinstance(insert, str):
            raise _Fail(f"a string can only be spliced with a string, not {_kind(insert)}")
        for pos in (start, end):
            if pos < length and encoded[pos] & 0xC0 == 0x80:
                raise _Fail(f"byte {pos} is not on a character boundary")
        new = (encoded[:start] + insert.encode("utf-8") + encoded[end:]).decode("utf-8")
    old = _get(holder, key)
    _put(holder, key, new)
    log.append(lambda: _put(holder, key, old))


def apply(value: Any, patch: Any, undo: list[Undo] | None = None) -> Any:
    """Applies ``patch`` to ``value`` and returns the result.

    Containers are changed in place; the return value differs from
    ``value`` only when the root itself is replaced (a set with an empty
    path, or a splice of a root string or bin). On failure nothing is
    changed and :class:`PatchFailed` (or :class:`PatchMalformed`) names the
    operation.

    ``undo``, when given, receives the steps that revert a successful
    patch: calling every step of it in reverse order puts back the
    containers of ``value`` (keep ``value`` itself for a replaced root),
    also after several patches recorded into the same list.
    """
    ops = _parse(patch)
    box = [value]
    log: list[Undo] = []
    for i, op in enumerate(ops):
        try:
            if op.kind == "set":
                _set(box, op.path, op.value, log)
            elif op.kind == "remove":
                _remove(box, op.path, log)
            else:
                _splice(box, op, log)
        except _Fail as e:
            for undo in reversed(log):
                undo()
            raise PatchFailed(i, f"{e}; the patch was not applied") from None
    if undo is not None:
        undo.extend(log)
    return box[0]
