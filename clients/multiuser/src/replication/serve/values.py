"""The add-on's data as MessagePack values.

The add-on dumps Blender data into dicts that also hold tuples, sets,
numpy scalars and arrays, mathutils vectors and file paths. Those have no
MessagePack form of their own, and a value must compare equal to what the
other users decode from it, or every commit would look like a change. So
data is normalised once, when it is committed, to what MessagePack keeps:
dict, list, str, bytes, int, float, bool and None. What a user receives
then equals what the sender holds.
"""

from __future__ import annotations

import os
from typing import Any

from ..exception import DataError

__all__ = ["normalize"]

_SCALARS = (str, bytes, int, float, bool, type(None))
_KEYS = (str, int)


def normalize(value: Any) -> Any:
    """``value`` with every container and scalar turned into its MessagePack
    equivalent: tuples and sets become lists (sets sorted when they can
    be), numpy scalars and arrays Python numbers and lists, paths strings,
    bytearrays bytes. Raises :class:`DataError` for anything else."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {_key(k): normalize(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [normalize(v) for v in value]
    return _other(value)


def _key(key: Any) -> Any:
    if type(key) in _KEYS:
        return key
    converted = normalize(key)
    if type(converted) not in _KEYS:
        raise DataError(f"a map key must be a string or an integer, not {type(key).__name__}")
    return converted


def _other(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        items = [normalize(v) for v in value]
        try:
            return sorted(items)
        except TypeError:  # mixed kinds have no order; any order is as good
            return items
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy scalars and arrays
        return normalize(value.tolist())
    # Subclasses of the scalar kinds (enums, numpy's bool_ is handled above).
    for scalar in (bool, int, float, str, bytes):
        if isinstance(value, scalar):
            return scalar(value)
    if type(value).__module__ == "mathutils":  # Vector, Color, Euler, Quaternion, Matrix
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    raise DataError(f"cannot send a {type(value).__name__} value: {value!r:.80}")
