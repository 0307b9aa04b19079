"""The add-on's data as MessagePack values (serve.values.normalize)."""

from __future__ import annotations

from enum import IntEnum
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np
import pytest
from replication_client import pack, unpack

from replication.exception import DataError
from replication.serve.values import normalize


class Mode(IntEnum):
    EDIT = 2


class Vector:
    """Stands for mathutils.Vector, which only exists inside Blender."""

    __module__ = "mathutils"

    def __init__(self, *values: float) -> None:
        self.values = values

    def __iter__(self):
        return iter(self.values)


def test_what_the_add_on_dumps_becomes_what_the_others_decode():
    dumped = {
        "color": (1.0, 0.5, 0.25, 1),
        "selected_objects": {"b", "a"},
        "count": np.int32(3),
        "weight": np.float32(0.5),
        "flags": np.array([True, False]),
        "co": np.zeros(3, dtype=np.float32).tobytes(),
        "buffer": bytearray(b"xy"),
        "file": PurePosixPath("/tmp/tex.png"),
        "windows": PureWindowsPath("C:/tex.png"),
        "mode": Mode.EDIT,
        "location": Vector(1.0, 2.0, 3.0),
        np.int64(7): "numpy key",
    }
    value = normalize(dumped)
    assert value == {
        "color": [1.0, 0.5, 0.25, 1],
        "selected_objects": ["a", "b"],
        "count": 3,
        "weight": 0.5,
        "flags": [True, False],
        "co": bytes(12),
        "buffer": b"xy",
        "file": "/tmp/tex.png",
        "windows": "C:\\tex.png",
        "mode": 2,
        "location": [1.0, 2.0, 3.0],
        7: "numpy key",
    }
    assert unpack(pack(value)) == value
    assert [type(v) for v in (value["count"], value["weight"], value["mode"])] == [int, float, int]


def test_sets_of_mixed_kinds_keep_some_order():
    assert sorted(normalize({1, "a"}), key=str) == [1, "a"]


def test_what_has_no_messagepack_form_is_refused_with_its_type():
    with pytest.raises(DataError, match="object"):
        normalize({"x": object()})
    with pytest.raises(DataError, match="map key"):
        normalize({(1, 2): "tuple key"})
