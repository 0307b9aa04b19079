"""Python client of replication-serve, protocol version 2.

Start with :class:`Session`; see docs/python-client.md for examples,
including driving a session from a Blender add-on timer.
"""

from . import patch
from .codec import PairMap, pack, unpack
from .errors import (
    AuthenticationError,
    Disconnected,
    NotAuthenticated,
    PatchError,
    PatchFailed,
    PatchMalformed,
    ProtocolError,
    PushIncomplete,
    ReplicationError,
    RequestRefused,
    RoomLeft,
    ServerRefused,
    Timeout,
    UploadIncomplete,
)
from .events import (
    Deleted,
    Event,
    LocalError,
    OwnerChanged,
    Reply,
    RequestFailed,
    RoomChanged,
    ServerError,
    SessionEnded,
    SnapshotDone,
    SnapshotProgress,
    Updated,
    UploadDone,
    UsersChanged,
)
from .model import (
    COMMON,
    DEFAULT_ROOM,
    AuthInfo,
    Datablock,
    FullUpdate,
    PatchUpdate,
    RoomInfo,
    RoomJoined,
    User,
)
from .protocol import PROTOCOL_VERSION
from .session import AUTO, Session

__version__ = "0.1.0"

__all__ = [
    "AUTO",
    "COMMON",
    "DEFAULT_ROOM",
    "PROTOCOL_VERSION",
    "AuthInfo",
    "AuthenticationError",
    "Datablock",
    "Deleted",
    "Disconnected",
    "Event",
    "FullUpdate",
    "LocalError",
    "NotAuthenticated",
    "OwnerChanged",
    "PairMap",
    "PatchError",
    "PatchFailed",
    "PatchMalformed",
    "PatchUpdate",
    "ProtocolError",
    "PushIncomplete",
    "ReplicationError",
    "Reply",
    "RequestFailed",
    "RequestRefused",
    "RoomChanged",
    "RoomInfo",
    "RoomJoined",
    "RoomLeft",
    "ServerError",
    "ServerRefused",
    "Session",
    "SessionEnded",
    "SnapshotDone",
    "SnapshotProgress",
    "Timeout",
    "Updated",
    "UploadDone",
    "UploadIncomplete",
    "User",
    "UsersChanged",
    "pack",
    "patch",
    "unpack",
]
