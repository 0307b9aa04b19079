"""A tiny stand-in for Blender, to drive the package as the add-on does
without a Blender: datablocks (``Thing``, and ``Scene`` at the root of the
graph) in a ``World`` of their own per user, an implementation of each in a
``DataTranslationProtocol``, and a user who adds, commits, pushes, locks
and applies through ``porcelain`` exactly as the add-on's handlers and
timers do.
"""

from __future__ import annotations

import time
from typing import Any

from replication import porcelain
from replication.constants import FETCHED, STATE_ACTIVE, UP
from replication.interface import Session
from replication.protocol import DataTranslationProtocol, ReplicatedDatablock
from replication.repository import Repository

T = 20.0


class Thing:
    def __init__(self, name: str, **props: Any) -> None:
        self.name = name
        self.props = dict(props)
        self.children: list[Thing] = []
        self.world: World | None = None
        self._uuid = ""

    @property
    def uuid(self) -> str:
        return self._uuid

    @uuid.setter
    def uuid(self, value: str) -> None:
        """The uuid the package stamps on a datablock, indexed by its world
        (as Blender keeps an ID's properties), so that looking one up does
        not scan the world."""
        self._uuid = value
        if self.world is not None:
            self.world.by_uuid[value] = self


class Scene(Thing):
    pass


class World:
    """What bpy.data is to Blender: the datablocks of one user."""

    def __init__(self) -> None:
        self.things: list[Thing] = []
        self.by_uuid: dict[str, Thing] = {}

    def new(self, kind: type[Thing], name: str, **props: Any) -> Thing:
        return self.adopt(kind(name, **props))

    def adopt(self, thing: Thing) -> Thing:
        thing.world = self
        self.things.append(thing)
        return thing

    def named(self, name: str) -> Thing:
        return next(t for t in self.things if t.name == name)


def translation(world: World) -> DataTranslationProtocol:
    class ThingImpl(ReplicatedDatablock):
        use_delta = True

        @staticmethod
        def construct(data: dict[str, Any]) -> Thing:
            kind = Scene if data["type_id"] == "Scene" else Thing
            return world.new(kind, data["name"])

        @staticmethod
        def dump(datablock: Thing) -> dict[str, Any]:
            children = [c.uuid for c in datablock.children]
            return {"name": datablock.name, "props": dict(datablock.props), "children": children}

        @staticmethod
        def load(data: dict[str, Any], datablock: Thing) -> None:
            datablock.name = data["name"]
            datablock.props = dict(data["props"])
            by_uuid = world.by_uuid
            datablock.children = [by_uuid[u] for u in data["children"] if u in by_uuid]

        @staticmethod
        def resolve(data: dict[str, Any]) -> Thing | None:
            return world.by_uuid.get(data.get("uuid", ""))

        @staticmethod
        def resolve_deps(datablock: Thing) -> list[Thing]:
            return list(datablock.children)

    class SceneImpl(ThingImpl):
        is_root = True

    rdp = DataTranslationProtocol()
    rdp.register_implementation(Thing, ThingImpl)
    rdp.register_implementation(Scene, SceneImpl)
    return rdp


class User:
    """One user's add-on: a world, a repository and a session of their own."""

    def __init__(self, name: str, port: int, admin_password: str | None = None) -> None:
        self.name = name
        self.world = World()
        self.repository = Repository(rdp=translation(self.world), username=name)
        porcelain.remote_add(
            self.repository, "origin", "127.0.0.1", port, admin_password=admin_password
        )
        self.session = Session()
        self.exits: list[str] = []
        self.session.register("on_exit")(lambda reason: self.exits.append(reason))
        self.session.register("on_connection")(lambda: None)

    def connect(self, **options: Any) -> User:
        self.session.connect(
            repository=self.repository, timeout=options.pop("timeout", 5000), **options
        )
        return self

    def until(
        self, condition: Any, timeout: float = T, what: str = "", others: tuple[User, ...] = ()
    ) -> None:
        """Calls listen() as the add-on's timer does (for ``others`` too,
        whose Blenders run meanwhile) until ``condition()``."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{self.name}: {what or condition} not reached"
            for user in (self, *others):
                user.session.listen()
                user.apply_fetched()
            time.sleep(0.005)

    def active(self) -> bool:
        return self.session.state == STATE_ACTIVE

    def apply_fetched(self) -> None:
        """The add-on's apply timer: what arrived goes into the world."""
        if not self.active():
            return
        graph = self.repository.graph
        for uuid in list(graph):
            node = graph.get(uuid)
            if node is not None and node.state == FETCHED:
                porcelain.apply(self.repository, uuid)

    def uuid_of(self, name: str) -> str:
        return self.world.named(name).uuid

    def node(self, name: str) -> Any:
        return self.repository.graph[self.uuid_of(name)]

    def edit(self, name: str, **props: Any) -> None:
        """Changes a thing, then what the add-on's depsgraph handler does."""
        self.world.named(name).props.update(props)
        uuid = self.uuid_of(name)
        assert self.node(name).state == UP
        porcelain.commit(self.repository, uuid)
        porcelain.push(self.repository, "origin", uuid)

    def sees(self, name: str, **props: Any) -> bool:
        try:
            thing = self.world.named(name)
        except StopIteration:
            return False
        return all(thing.props.get(k) == v for k, v in props.items())
