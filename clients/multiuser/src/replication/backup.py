"""Session backups: the ``.db`` files of the add-on's "Save session data"
and "Import session data".

Nothing here touches the network. The file format is the add-on's own:
its import operator reads the file itself (``gzip`` + ``pickle``) to draw
the users who were there, so a backup must stay in that form. A backup is
a gzip-compressed pickle of ``{"nodes": [...], "users": {...}}``, each node
a list of five byte strings: the pickled number 2, the uuid, the owner, the
pickled dependency list and the pickled data.

Reading one never runs code from it: the unpickler refuses every global
(class, function) a file names, so only plain values (dict, list, tuple,
set, str, bytes, numbers, None) can come out of it. Backups written by
older versions of the add-on's library read the same way, as long as their
data is made of plain values, which is what the add-on dumps.
"""

from __future__ import annotations

import gzip
import io
import logging
import pickle
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from .constants import FETCHED, RP_COMMON
from .exception import DataError
from .objects import Node

__all__ = ["read", "write"]

log = logging.getLogger(__name__)

_NODE_KIND = 2
_PROTOCOL = 4


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise DataError(f"a session backup may hold only plain values, not {module}.{name}")


def _plain_loads(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


def write(filepath: str, nodes: Iterable[Node], users: dict[str, Any]) -> str:
    """Writes a backup named after ``filepath`` with the date and time
    inserted before its suffix (``session.db`` -> ``session_2026_12_07_15-04-05.db``);
    returns the file's path."""
    entries = []
    for node in nodes:
        if node.data is None:
            continue  # added but never committed: nothing to keep
        entries.append(
            [
                pickle.dumps(_NODE_KIND, protocol=_PROTOCOL),
                node.uuid.encode(),
                (node.owner or RP_COMMON).encode(),
                pickle.dumps(list(node.dependencies), protocol=_PROTOCOL),
                pickle.dumps(node.data, protocol=_PROTOCOL),
            ]
        )
    path = Path(filepath)
    stamp = datetime.now().strftime("%Y_%m_%d_%H-%M-%S")
    path = path.with_name(f"{path.stem}_{stamp}{path.suffix}")
    with gzip.open(path, "wb") as f:
        pickle.dump({"nodes": entries, "users": dict(users)}, f, protocol=_PROTOCOL)
    log.info("session backup written to %s (%d datablocks)", path, len(entries))
    return str(path)


def read(filepath: str) -> list[Node]:
    """The nodes of a backup, in FETCHED state. Raises :class:`DataError`
    when the file is not a backup or holds anything but plain values."""
    try:
        with gzip.open(filepath, "rb") as f:
            db = _PlainUnpickler(f).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DataError(f"{filepath} is not a session backup: {e}") from e
    if not isinstance(db, dict) or not isinstance(db.get("nodes"), list):
        raise DataError(f"{filepath} is not a session backup: no list of nodes")
    nodes = []
    for i, entry in enumerate(db["nodes"]):
        try:
            nodes.append(_node(entry))
        except (DataError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as e:
            raise DataError(f"{filepath}: datablock {i} cannot be read: {e}") from e
    return nodes


def _node(entry: Any) -> Node:
    if (
        not isinstance(entry, list)
        or len(entry) != 5
        or not all(isinstance(c, bytes) for c in entry)
    ):
        raise ValueError("not a list of five byte strings")
    kind, uuid, owner, deps, data = entry
    if _plain_loads(kind) != _NODE_KIND:
        raise ValueError("not a datablock entry")
    dependencies = _plain_loads(deps)
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise ValueError("its dependencies are not a list of uuids")
    return Node(
        uuid=uuid.decode(),
        owner=owner.decode(),
        dependencies=dependencies,
        data=_plain_loads(data),
        state=FETCHED,
    )
