"""The local copy of the session's datablocks.

It follows section 6 ("Forwarding"): a forwarded full UPDATE replaces the
data; a forwarded patch is applied to a copy at ``revision - 1``. Anything
else (a revision gap, a patch that fails, an update that conflicts with one
of this client's own unconfirmed pushes) means the copy cannot be trusted,
and the caller FETCHes the datablock. Until the answer arrives, updates of
that datablock are skipped: the subscriber channel is ordered, so the
answer already contains every update the server forwarded before it.

Own pushes are applied at once and counted as the next revision. Each one
carries a request id: the server's ACK then gives the real revision (the
session checks the guess, see ``ConsumerHalf._acknowledged``), and a refusal
(an ERROR with that id) makes the session FETCH the datablock again.
"""

from __future__ import annotations

from typing import Any

from . import patch as patches
from .codec import unpack
from .errors import PatchError
from .events import Updated
from .model import Datablock

__all__ = ["Replica"]


class Replica:
    def __init__(self) -> None:
        self.blocks: dict[str, Datablock] = {}
        self.fetching: set[str] = set()

    def stored(self, header: dict[str, Any], data: Any, source: str) -> Updated:
        """A DATABLOCK (snapshot or FETCH answer): the server's full state."""
        block = Datablock(
            uuid=header["uuid"],
            type_id=header["type_id"],
            data=data,
            owner=header.get("owner"),
            deps=list(header.get("deps") or []),
            revision=header.get("revision", 0),
        )
        self.blocks[block.uuid] = block
        return Updated(block.uuid, block, source)

    def forwarded(self, header: dict[str, Any], payload: bytes) -> tuple[Updated | None, bool]:
        """Another user's UPDATE. Returns (event, whether to FETCH)."""
        uuid = header["uuid"]
        if uuid in self.fetching:
            return None, False
        revision = header["revision"]
        local = self.blocks.get(uuid)
        if header.get("patch"):
            ops = unpack(payload)
            if local is None or local.revision != revision - 1:
                return None, True
            try:
                local.data = patches.apply(local.data, ops)
            except PatchError:
                return None, True
            block = local
        else:
            if local is not None and revision <= local.revision:
                return None, True  # one of our own pushes raced with this one
            block = local or Datablock(uuid=uuid, type_id=header["type_id"])
            block.data = unpack(payload)
            ops = None
        block.type_id = header["type_id"]
        block.owner = header.get("owner")
        block.deps = list(header.get("deps") or [])
        block.revision = revision
        self.blocks[uuid] = block
        return Updated(uuid, block, "update", header.get("sender"), ops), False

    def pushed(
        self,
        uuid: str,
        data: Any,
        type_id: str | None,
        owner: str | None,
        deps: list[str] | None,
        me: str,
    ) -> None:
        """Our own full UPDATE, already sent."""
        local = self.blocks.get(uuid)
        if local is None:
            if type_id is None:
                return  # the server will refuse it; nothing to mirror
            self.blocks[uuid] = Datablock(uuid, type_id, data, owner or me, list(deps or []), 1)
            return
        local.data = data
        local.revision += 1
        if deps is not None:
            local.deps = list(deps)

    def patch_preview(self, uuid: str, ops: list[Any], undo: list[Any] | None = None) -> Any:
        """Applies our own patch to the local copy (atomically); raises
        PatchError, and changes nothing, if it does not apply. ``undo``
        collects the steps that revert it (see :func:`patch.apply`)."""
        local = self.blocks[uuid]
        local.data = patches.apply(local.data, ops, undo)
        return local.data

    def owners(self, uuids: list[str], owner: str) -> None:
        for uuid in uuids:
            block = self.blocks.get(uuid)
            if block is not None:
                block.owner = owner

    def remove(self, uuid: str) -> bool:
        self.fetching.discard(uuid)
        return self.blocks.pop(uuid, None) is not None
