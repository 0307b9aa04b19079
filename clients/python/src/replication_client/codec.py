"""MessagePack encoding and decoding of headers and datablock data.

Datablock data is any MessagePack value, and the server keeps it exactly:
map order, duplicate keys, integer or binary keys. A Python ``dict`` can
hold that faithfully only when every key is a ``str`` or an ``int`` and no
key repeats (``1``, ``1.0`` and ``True`` are the same dict key, but not the
same MessagePack key). So :func:`unpack` returns a ``dict`` for such maps
and a :class:`PairMap` (an ordered list of key/value pairs) for any other
map. Patches then follow the protocol's rules exactly on both kinds.

Text is decoded as ``str``; a MessagePack str that is not valid UTF-8 is
kept with ``surrogateescape`` so that it re-encodes to the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack

__all__ = ["PairMap", "pack", "unpack", "typed_equal"]

_UNICODE_ERRORS = "surrogateescape"


class PairMap:
    """A MessagePack map that a ``dict`` cannot represent faithfully.

    Entries are ``[key, value]`` lists in wire order. Lookups use the first
    entry whose key has the same type and value, which is how the protocol
    selects map entries.
    """

    __slots__ = ("pairs",)

    def __init__(self, pairs: Any = ()) -> None:
        self.pairs: list[list[Any]] = [[k, v] for k, v in pairs]

    def find(self, key: Any) -> int:
        """Position of the first entry whose key is ``key`` (typed), or -1."""
        for i, (k, _) in enumerate(self.pairs):
            if typed_equal(k, key):
                return i
        return -1

    def __getitem__(self, key: Any) -> Any:
        i = self.find(key)
        if i < 0:
            raise KeyError(key)
        return self.pairs[i][1]

    def get(self, key: Any, default: Any = None) -> Any:
        i = self.find(key)
        return default if i < 0 else self.pairs[i][1]

    def __contains__(self, key: Any) -> bool:
        return self.find(key) >= 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in self.pairs)

    def keys(self) -> list[Any]:
        return [k for k, _ in self.pairs]

    def values(self) -> list[Any]:
        return [v for _, v in self.pairs]

    def items(self) -> list[tuple[Any, Any]]:
        return [(k, v) for k, v in self.pairs]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PairMap):
            return NotImplemented
        return len(self.pairs) == len(other.pairs) and all(
            typed_equal(a[0], b[0]) and a[1] == b[1]
            for a, b in zip(self.pairs, other.pairs, strict=True)
        )

    def __repr__(self) -> str:
        return f"PairMap({self.items()!r})"


def typed_equal(a: Any, b: Any) -> bool:
    """Equality that, like MessagePack, tells ``1``, ``1.0`` and ``True`` apart."""
    return type(a) is type(b) and a == b


_EXACT_KEY_TYPES = frozenset((str, int))


def _make_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any] | PairMap:
    # A dict is exact when keys are str or int (never bool or float, which
    # compare equal to ints) and none repeats. The key types are gathered by
    # map(type, ...), which runs without a Python-level loop: a late joiner
    # reads tens of thousands of these maps.
    as_dict = dict(pairs)
    if len(as_dict) == len(pairs) and _EXACT_KEY_TYPES.issuperset(map(type, as_dict)):
        return as_dict
    return PairMap(pairs)


class _NeedsPairs(Exception):
    """The value holds a PairMap, which only the slow encoder can write."""


def _default(obj: Any) -> Any:
    if isinstance(obj, PairMap):
        raise _NeedsPairs
    if isinstance(obj, (set, frozenset)):
        raise TypeError("sets have no MessagePack form; use a list")
    raise TypeError(f"cannot encode {type(obj).__name__} as MessagePack")


def pack(value: Any) -> bytes:
    """Encodes one value: str as MessagePack str, bytes as bin, tuples as arrays."""
    try:
        return msgpack.packb(
            value, use_bin_type=True, default=_default, unicode_errors=_UNICODE_ERRORS
        )
    except _NeedsPairs:
        out: list[bytes] = []
        _pack_slow(value, out, _packer())
        return b"".join(out)


def _packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, default=_default, unicode_errors=_UNICODE_ERRORS)


def _pack_slow(value: Any, out: list[bytes], packer: msgpack.Packer) -> None:
    # Walks containers by hand so that PairMaps (duplicate or odd keys) are
    # written entry by entry; everything else goes through msgpack.
    if isinstance(value, PairMap):
        out.append(packer.pack_map_header(len(value.pairs)))
        for k, v in value.pairs:
            _pack_slow(k, out, packer)
            _pack_slow(v, out, packer)
    elif isinstance(value, dict):
        out.append(packer.pack_map_header(len(value)))
        for k, v in value.items():
            _pack_slow(k, out, packer)
            _pack_slow(v, out, packer)
    elif isinstance(value, (list, tuple)):
        out.append(packer.pack_array_header(len(value)))
        for v in value:
            _pack_slow(v, out, packer)
    else:
        out.append(packer.pack(value))


def unpack(frame: bytes) -> Any:
    """Decodes exactly one MessagePack value (trailing bytes are an error)."""
    return msgpack.unpackb(
        frame,
        raw=False,
        strict_map_key=False,
        object_pairs_hook=_make_map,
        unicode_errors=_UNICODE_ERRORS,
    )
