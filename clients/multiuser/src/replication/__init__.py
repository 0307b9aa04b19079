"""A drop-in ``replication`` package: the library the Multi-User Blender
add-on is written against, speaking replication-serve's protocol.

The add-on never touches the network itself; everything goes through this
package's API. This package keeps that API and carries it over
replication-serve's protocol (docs/protocol.md) with the project's Python
client, ``replication_client``: MessagePack on the wire, never pickle;
changes sent as patches; ownership enforced by the server.

What mirrors the add-on's API (the modules it imports):

- ``constants``: node states, session states, ``RP_COMMON``, ``DIFF_*``.
- ``exception``: ``ContextError``, ``NonAuthorizedOperationError``, ...
- ``objects``: ``Node``, one replicated datablock.
- ``protocol``: ``ReplicatedDatablock`` and ``DataTranslationProtocol``,
  how the add-on dumps and loads Blender data.
- ``repository``: ``Repository`` (the graph of nodes) and ``Remote``.
- ``porcelain``: add, commit, push, apply, lock, unlock, rm, kick, ...
- ``interface``: ``session``, its states and callbacks.
- ``backup``: session backup files (the only user of pickle; never the
  network).

What speaks replication-serve's protocol (``serve``, through
``replication_client`` and nothing else):

- ``serve.link``: the connection: requests out, events into the nodes.
- ``serve.values``: the add-on's data as MessagePack values.
- ``serve.diffing``: changes as protocol patches.
- ``serve.users``: the server's user list as the add-on reads it.
- ``serve.local_server``: "Host": a replication-serve of Blender's own.
- ``serve.probe``: is a server online, is it private.
"""

__version__ = "0.1.0"
