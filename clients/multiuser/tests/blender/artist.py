"""What an artist does in Blender, as the add-on's operators and properties,
and what the test reads back. Imported by the drivers inside Blender, once
the add-on is enabled; the same for Multi-User 0.5.x (an add-on) and 0.6.x
(an extension, whose operators were renamed).

Everything that changes the add-on's state goes through its operators
(``op``) and preferences, as clicks in its panels would; edits to the scene
are plain ``bpy`` changes, as an artist's tools make. Reading
``replication.interface.session`` is only observation.
"""

import hashlib

import bpy

EXTENSION_OPERATORS = {
    "firstlaunch.verify": "wm.session_firstlaunch_verify",
    "session.host": "wm.session_host",
    "session.connect": "wm.session_join",
    "session.preset_server_add": "wm.session_save_server_preset",
    "session.stop": "wm.session_quit",
    "session.kick": "wm.session_user_kick",
}
"""The 0.6.x name of each 0.5.x operator used here."""


def addon():
    """The add-on's module: ``multi_user``, or ``bl_ext.REPO.multi_user``
    for the extension."""
    names = [a.module for a in bpy.context.preferences.addons]
    return next(n for n in names if n.rpartition(".")[2] == "multi_user")


def op(name):
    """The add-on's operator called ``name`` in 0.5.x, in this version."""
    if addon() != "multi_user":
        name = EXTENSION_OPERATORS[name]
    category, _, idname = name.partition(".")
    return getattr(getattr(bpy.ops, category), idname)


def prefs():
    return bpy.context.preferences.addons[addon()].preferences


def session():
    from replication.interface import session

    return session


def state():
    return session().state


def setup_user(name, apply_delay=None):
    """The first-launch panel: a user name, then "Continue". ``apply_delay``
    is the add-on's "Apply delay" preference: the period of the timer that
    loads received changes into Blender (1 s by default)."""
    prefs().username = name
    prefs().logging_level = "DEBUG"  # the add-on's "Log level" setting
    if apply_delay is not None:
        prefs().depsgraph_update_rate = apply_delay
    if prefs().is_first_launch:
        op("firstlaunch.verify")()


def host(port, admin_password="admin", server_password=""):
    """The "Hosting" panel, then "Host"."""
    p = prefs()
    p.host_port = port
    p.host_use_admin_password = admin_password is not None
    p.host_admin_password = admin_password or ""
    p.host_use_server_password = bool(server_password)
    p.host_server_password = server_password
    p.init_method = "BLEND"
    return op("session.host")()


def connect(port, ip="127.0.0.1", admin_password=None, server_password=None, name="test server"):
    """Adds a server preset (the "+" button), selects it, then "Connect"."""
    op("session.preset_server_add")(
        server_name=name,
        ip=ip,
        port=port,
        use_admin_password=admin_password is not None,
        admin_password=admin_password or "",
        use_server_password=server_password is not None,
        server_password=server_password or "",
    )
    presets = prefs().server_preset
    index = next(i for i, s in enumerate(presets) if s.server_name == name)
    bpy.context.window_manager.server_index = index
    return op("session.connect")()


def disconnect():
    return op("session.stop")()


def kick(user):
    """The admin's "Kick" in the user list, confirmed."""
    return op("session.kick")(user=user)


def canonical(value):
    """A JSON-able form of a dump that is equal exactly when the dumps are."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return "bytes:" + hashlib.sha256(bytes(value)).hexdigest()
    if hasattr(value, "item"):
        return canonical(value.item())
    if isinstance(value, (set, frozenset)):
        return sorted(canonical(v) for v in value)
    return value


def dumps():
    """uuid -> what the add-on dumps of that datablock now (canonical form),
    or None for a node with no Blender datablock yet."""
    repo = session().repository
    out = {}
    for uuid, node in repo.graph.items():
        instance = node.instance or (repo.rdp.resolve(node.data) if node.data else None)
        out[uuid] = None if instance is None else canonical(repo.rdp.dump(instance))
    return out


def node_of(name, kind="objects"):
    datablock = getattr(bpy.data, kind).get(name)
    if datablock is None or not datablock.uuid:
        return None
    return session().repository.graph.get(datablock.uuid)


def owner(name, kind="objects"):
    node = node_of(name, kind)
    return node.owner if node is not None else None


def select(*names):
    """Clicks in the viewport: exactly these objects selected."""
    layer = bpy.context.view_layer
    for obj in layer.objects:
        obj.select_set(obj.name in names)
    if names:
        layer.objects.active = bpy.data.objects[names[0]]


def users():
    """The add-on's view of who is online: name -> (admin, latency, status, metadata keys)."""
    return {
        name: {
            "admin": u["admin"],
            "latency": u["latency"],
            "status": u["status"],
            "metadata": sorted(u["metadata"]),
        }
        for name, u in session().online_users.items()
    }


def view3d():
    """The 3D viewport's area, region and view, as a click there has them."""
    window = bpy.context.window_manager.windows[0]
    for area in window.screen.areas:
        if area.type == "VIEW_3D":
            region = next(r for r in area.regions if r.type == "WINDOW")
            return window, area, region, area.spaces.active.region_3d
    raise RuntimeError("no 3D viewport in the window")


def revisions():
    """uuid -> what this Blender has of it (the revision; with the add-on's
    own library, which has none, a digest of the data), when nothing of its
    own is on its way and nothing received waits to be applied; else None."""
    s = session()
    graph = s.repository.graph
    if any(node.state != 4 for node in graph.values()):  # all UP
        return None
    link = getattr(s.remote, "link", None) if s.remote is not None else None
    if link is None:
        return {
            uuid: hashlib.sha256(repr(canonical(node.data)).encode()).hexdigest()
            for uuid, node in graph.items()
        }
    if link.pending():
        return None
    return {uuid: block.revision for uuid, block in link.client.blocks.items()}


def reconnect():
    """ "Connect" again on the server preset last used."""
    return op("session.connect")()
