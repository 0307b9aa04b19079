"""How the add-on turns Blender datablocks into data and back.

The add-on subclasses :class:`ReplicatedDatablock` once per kind of
datablock (``bl_types``) and registers each in a
:class:`DataTranslationProtocol`, which the repository calls by the type
name of a datablock (``"Object"``, ``"Mesh"``) or the ``type_id`` stamped
in its data.
"""

from __future__ import annotations

import logging
from typing import Any

from .serve.diffing import PatchDelta

__all__ = ["ReplicatedDatablock", "DataTranslationProtocol"]

log = logging.getLogger(__name__)


class ReplicatedDatablock:
    """One kind of datablock. Implementations override the static methods."""

    is_root = False
    """Whether this kind heads the dependency graph (the add-on's Scene)."""
    use_delta = False
    """Whether a commit keeps the last data plus the computed delta rather
    than the new dump (the add-on's delta can leave out what it does not
    want replicated, such as render settings)."""

    @staticmethod
    def construct(data: dict[str, Any]) -> Any:
        """A new, empty Blender datablock for ``data``."""
        raise NotImplementedError

    @staticmethod
    def dump(datablock: Any) -> dict[str, Any]:
        """The datablock's state as a dict."""
        raise NotImplementedError

    @staticmethod
    def load(data: dict[str, Any], datablock: Any) -> None:
        """Writes ``data`` into the datablock."""
        raise NotImplementedError

    @staticmethod
    def resolve(data: dict[str, Any]) -> Any:
        """The existing Blender datablock ``data`` describes, or None."""
        raise NotImplementedError

    @staticmethod
    def resolve_deps(datablock: Any) -> list[Any]:
        """The datablocks this one needs."""
        raise NotImplementedError

    @staticmethod
    def needs_update(datablock: Any, data: dict[str, Any]) -> bool:
        """A quick check whether the datablock may differ from ``data``."""
        return True

    @staticmethod
    def compute_delta(last_data: Any, current_data: Any) -> Any:
        """What changed from ``last_data``: anything with a ``diff``
        (empty when nothing changed) that ``last_data + delta`` turns into
        the new state. By default the replication-serve patch itself, so
        that nothing is compared twice."""
        return PatchDelta(last_data, current_data)


class DataTranslationProtocol:
    """The implementations, by the type name of the datablocks they handle."""

    def __init__(self) -> None:
        self._supported_types: dict[str, Any] = {}

    def register_implementation(self, dcc_types: Any, implementation: Any) -> None:
        for dcc_type in dcc_types if isinstance(dcc_types, list) else [dcc_types]:
            self._supported_types[dcc_type.__name__] = implementation
            log.debug("registering %s", dcc_type.__name__)

    def get_implementation(self, datablock: Any) -> Any:
        """The implementation for a datablock, or a type name; None if none."""
        type_id = datablock if isinstance(datablock, str) else type(datablock).__name__
        return self._supported_types.get(type_id)

    def _for_data(self, data: dict[str, Any]) -> Any:
        type_id = data.get("type_id")
        impl = self._supported_types.get(type_id)  # type: ignore[arg-type]
        if impl is None:
            raise KeyError(f"no implementation for datablocks of type {type_id!r}")
        return impl

    def _for_datablock(self, datablock: Any) -> Any:
        impl = self.get_implementation(datablock)
        if impl is None:
            raise KeyError(f"no implementation for {type(datablock).__name__}")
        return impl

    def construct(self, data: dict[str, Any]) -> Any:
        return self._for_data(data).construct(data)

    def dump(self, datablock: Any, stamp_uuid: str | None = None) -> dict[str, Any]:
        """The datablock's state, stamped with its ``type_id`` (and ``uuid``)."""
        data = self._for_datablock(datablock).dump(datablock)
        data["type_id"] = type(datablock).__name__
        if stamp_uuid:
            data["uuid"] = stamp_uuid
        return data

    def load(self, data: dict[str, Any], datablock: Any) -> None:
        self._for_data(data).load(data, datablock)

    def resolve(self, data: dict[str, Any] | None) -> Any:
        """The existing Blender datablock ``data`` describes, or None (also
        for a node added but not committed yet, which has no data)."""
        if not data:
            return None
        return self._for_data(data).resolve(data)

    def resolve_deps(self, datablock: Any) -> list[Any]:
        return self._for_datablock(datablock).resolve_deps(datablock)

    def needs_update(self, datablock: Any, data: dict[str, Any]) -> bool:
        return self._for_datablock(datablock).needs_update(datablock, data)

    def compute_delta(self, last_data: Any, current_data: dict[str, Any]) -> Any:
        return self._for_data(current_data).compute_delta(last_data, current_data)

    @property
    def implementations(self) -> dict[str, Any]:
        """Type name -> implementation."""
        return self._supported_types
