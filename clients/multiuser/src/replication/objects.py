"""A node: one replicated datablock as the add-on sees it."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

__all__ = ["Node"]


class Node:
    """One datablock of the session.

    ``data`` is the last committed or received state, as a MessagePack
    value (dicts, lists, bytes, str, numbers): what every other user has or
    will have. ``instance`` is the Blender datablock it describes, when
    this Blender has one.
    """

    __slots__ = (
        "uuid",
        "data",
        "instance",
        "dependencies",
        "owner",
        "last_commit",
        "state",
        "sender",
    )

    def __init__(
        self,
        owner: str | None = None,
        instance: Any = None,
        uuid: str | None = None,
        data: Any = None,
        sender: str | None = None,
        dependencies: list[str] | None = None,
        state: int = -1,
    ) -> None:
        self.uuid = uuid if uuid else str(uuid4())
        """The datablock's id in the session (stamped on the Blender datablock)."""
        self.owner = owner
        """A user name, or RP_COMMON when anyone may change it."""
        self.instance = instance
        self.data = data
        self.dependencies = list(dependencies) if dependencies else []
        """uuids of the datablocks this one needs (loaded before it)."""
        self.state = state
        """ADDED, COMMITED, FETCHED, UP or ERROR (see constants)."""
        self.sender = sender
        """Who made the last change received, when known."""
        self.last_commit: Any = None
        """What the next push is relative to (see serve.diffing.Pending)."""

    def add_dependency(self, dependency: str) -> None:
        if dependency not in self.dependencies:
            self.dependencies.append(dependency)

    def __repr__(self) -> str:
        return (
            f"Node({self.uuid}, owner={self.owner}, state={self.state}, deps={self.dependencies})"
        )
