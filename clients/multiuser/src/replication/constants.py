"""The numbers and names the add-on compares against.

Their values are those of the ``replication`` API the add-on was written
for: the add-on stores them, compares them and shows them (its status line
maps these session states to words), so they must not change.
"""

import os
from pathlib import Path

# What a node (a replicated datablock, see objects.Node) is doing locally.
ADDED = 0
"""Registered with porcelain.add, never sent."""
COMMITED = 1
"""Its data was dumped from Blender and differs from what was sent."""
PUSHED = 2
FETCHED = 3
"""The server's newer state arrived; porcelain.apply loads it into Blender."""
UP = 4
"""Blender and the session agree."""
MODIFIED = 5
ERROR = 6
"""The server refused the datablock (its reason is in the log)."""

# Session states (interface.session.state).
STATE_INITIAL = 0
STATE_SYNCING = 1
STATE_ACTIVE = 2
STATE_ERROR = 3
STATE_CONFIG = 4
STATE_AUTH = 5
STATE_WAITING = 6
STATE_SRV_SYNC = 7
STATE_QUITTING = 8
CONNECTING = 9
STATE_LOBBY = 10

RP_COMMON = "COMMON"
"""The owner of a datablock nobody holds."""

# How an implementation's data is compared (kept for the add-on's imports;
# every change travels as a replication-serve patch either way).
DIFF_BINARY = 0
DIFF_JSON = 1

CONNECTION_TIMEOUT = 2000
CLIENT_PING_FREQUENCY = 1000
HEAD = "HEAD"

ROOT_PATH = Path(os.path.dirname(os.path.realpath(__file__)))
