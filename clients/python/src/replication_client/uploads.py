"""An initial upload in flight (host flow, section 3).

The SETs are encoded when the upload starts, on the caller's thread, but
sent only once INIT is ACCEPTED: a rejected INIT (someone else uploading, a
scene already there) then costs one message instead of the whole scene.
A successful SET gets no answer; refusals arrive as ERRORs that refer to the
SET's id (or to its transfer, for a refused CHUNK), all before END's answer.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from .codec import unpack
from .errors import ReplicationError, RequestRefused, UploadIncomplete
from .model import Datablock

__all__ = ["Upload"]


class Upload:
    def __init__(self, rid: int, blocks: list[Datablock], blocking: bool, uploader: str) -> None:
        self.id = rid  # the INIT's id, also the request id of upload_nowait
        self.blocks = blocks
        self.blocking = blocking
        self.uploader = uploader
        self.end_id = 0
        self.set_ids: dict[int, str] = {}
        self.transfers: dict[int, int] = {}  # transfer -> SET id
        self._messages: list[list[list[bytes]]] = []
        self._payloads: dict[int, bytes] = {}
        self.errors: list[RequestRefused] = []
        self._refused: set[int] = set()  # SET ids
        self.datablocks = 0
        self.error: ReplicationError | None = None
        self.done = threading.Event()

    def add_set(
        self,
        set_id: int,
        uuid: str,
        payload: bytes,
        transfer: int | None,
        messages: list[list[bytes]],
    ) -> None:
        self.set_ids[set_id] = uuid
        self._payloads[set_id] = payload
        if transfer is not None:
            self.transfers[transfer] = set_id
        self._messages.append(messages)

    def ids(self) -> list[int]:
        return [self.id, self.end_id, *self.set_ids]

    def set_messages(self) -> list[list[bytes]]:
        out = [frames for msgs in self._messages for frames in msgs]
        self._messages = []  # sent once; free the encoded scene
        return out

    def refuse(self, refers_to: dict[str, Any], error: RequestRefused) -> None:
        """An ERROR about one SET or one of its CHUNKs."""
        set_id = refers_to.get("id")
        if set_id not in self.set_ids:
            set_id = self.transfers.get(refers_to.get("transfer"))  # type: ignore[arg-type]
        if set_id is None or set_id in self._refused:
            return  # one error per datablock (a refused CHUNK, then its SET)
        self._refused.add(set_id)
        error.refers_to.setdefault("uuid", self.set_ids[set_id])
        self.errors.append(error)

    def finish(self, datablocks: int, error: ReplicationError | None) -> None:
        if self.done.is_set():
            return
        self.datablocks = datablocks
        self.error = error
        self._messages = []
        self.done.set()

    def accepted_blocks(self) -> list[Datablock]:
        """What the uploader's replica holds afterwards: every datablock the
        server did not refuse, at revision 1."""
        return [
            replace(
                block,
                data=unpack(self._payloads[set_id]),
                owner=block.owner or self.uploader,
                deps=list(block.deps),
                revision=1,
            )
            for set_id, block in zip(self.set_ids, self.blocks, strict=True)
            if set_id not in self._refused
        ]

    def result(self) -> int:
        if self.error is not None:
            raise self.error
        if self.errors:
            raise UploadIncomplete(self.datablocks, self.errors)
        return self.datablocks
