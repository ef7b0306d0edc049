"""The world: entities, authoritative movement, spatial queries, and per-tick view diffs."""
from __future__ import annotations

from worldstate.config import WorldConfig
from worldstate.entities import MAX_COORD, Entity, Pose
from worldstate.errors import DuplicateEntity, InvalidEntity, UnknownEntity
from worldstate.movement import clamp_move
from worldstate.spatial import Grid, within
from worldstate.views import ViewDiff, Views

__all__ = ["ViewDiff", "World"]


class World:
    """All entities of one shard, their poses, and what each observer sees.

    Pure and synchronous: commands (`add`, `move`, `watch`...) change state at once; `tick()`
    turns everything that happened since the previous tick into per-observer `ViewDiff`s.
    Each entity lives in an int slot; positions are kept in plain lists by slot so the grid,
    the views and the numpy band all read the same truth.
    """

    def __init__(self, config: WorldConfig, *, skin: float | None = None,
                 rebuild_limit: int | None = None) -> None:
        """A world for `config`.

        `skin` (metres, default aoi/10) and `rebuild_limit` (loose or drifting entities that
        trigger a band rebuild; by default a few loose or 1/64 of the population drifting)
        tune speed, never results.
        """
        self.config = config
        self.aoi = float(config.aoi)
        self._bounds = tuple(float(b) for b in config.bounds)
        self._speed = float(config.speed)
        self._slot: dict[str, int] = {}
        self._ents: list[Entity | None] = []
        self._xs: list[float] = []
        self._zs: list[float] = []
        self._last_ms: list[int | None] = []    # slot -> time of the previous applied move
        self._free: list[int] = []
        self._limbo: list[int] = []             # freed slots, reusable after the next rebuild
        self._grid = Grid(self.aoi / 2)
        self._views = Views(self.aoi, ents=self._ents, xs=self._xs, zs=self._zs, grid=self._grid,
                            skin=skin, rebuild_limit=rebuild_limit)

    # --- entities -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._slot

    def get(self, entity_id: str) -> Entity | None:
        """The live entity with this id, or None. Change its pose only through move/teleport."""
        s = self._slot.get(entity_id)
        return None if s is None else self._ents[s]

    def entities(self) -> list[Entity]:
        """Every entity in the world (a new list)."""
        ents = self._ents
        return [ents[s] for s in self._slot.values()]

    def add(self, entity: Entity) -> None:
        """Put a new entity into the world; DuplicateEntity if its id is taken."""
        if not isinstance(entity, Entity):
            raise InvalidEntity(f"expected an Entity, got {entity!r}")
        if entity.id in self._slot:
            raise DuplicateEntity(entity.id)
        x, z = entity.pose.x, entity.pose.z
        if self._free:
            s = self._free.pop()
            self._ents[s], self._xs[s], self._zs[s], self._last_ms[s] = entity, x, z, None
        else:
            s = len(self._ents)
            self._ents.append(entity)
            self._xs.append(x)
            self._zs.append(z)
            self._last_ms.append(None)
        self._slot[entity.id] = s
        self._grid.insert(s, x, z)
        self._views.added(s)

    def remove(self, entity_id: str) -> Entity | None:
        """Take an entity out of the world (ending its view); it leaves every view that held it."""
        s = self._slot.pop(entity_id, None)
        if s is None:
            return None
        ent = self._ents[s]
        self._views.removed(s, entity_id)
        self._grid.remove(s)
        self._ents[s] = None
        self._limbo.append(s)
        return ent

    def _require(self, entity_id: str) -> int:
        s = self._slot.get(entity_id)
        if s is None:
            raise UnknownEntity(entity_id)
        return s

    # --- movement -------------------------------------------------------------------------
    def move(self, entity_id: str, requested: Pose, now_ms: int) -> Pose:
        """Apply a requested pose clamped by bounds and the speed limit; return the pose applied.

        The time allowance is `now_ms` minus the previous applied move (at most 1 s; the first
        move of an entity, or the first after a teleport, gets the full second).
        """
        s = self._require(entity_id)
        ent = self._ents[s]
        last = self._last_ms[s]
        dt = 1.0 if last is None else (now_ms - last) / 1000.0
        pose = clamp_move(ent.pose, requested, dt, self._bounds, self._speed)
        self._last_ms[s] = now_ms
        self._set_pose(s, ent, pose)
        return pose

    def teleport(self, entity_id: str, pose: Pose) -> None:
        """Put an entity at `pose` with no movement rules (spawn, an NPC turning to face someone)."""
        s = self._require(entity_id)
        if not isinstance(pose, Pose) or not pose.is_valid():
            raise InvalidEntity(f"teleport of {entity_id!r} needs a finite Pose within "
                                f"{MAX_COORD:g} m of the origin, got {pose!r}")
        self._last_ms[s] = None
        self._set_pose(s, self._ents[s], pose)

    def _set_pose(self, s: int, ent: Entity, pose: Pose) -> None:
        before = ent.pose
        if pose == before:
            return
        ent.pose = pose
        x, z = pose.x, pose.z
        if x != self._xs[s] or z != self._zs[s]:
            self._xs[s] = x
            self._zs[s] = z
            self._views.pose_changed(s, before, True, self._grid.update(s, x, z))
        else:
            self._views.pose_changed(s, before, False, False)

    # --- queries --------------------------------------------------------------------------
    def near(self, x: float, z: float, radius: float, kind: str | None = None) -> list[Entity]:
        """Entities within `radius` of (x, z) on the x-z plane, nearest first (optionally one kind)."""
        if not radius >= 0:
            return []
        ents = self._ents
        found = [(d2, ents[s]) for d2, s in within(self._grid, self._xs, self._zs, x, z, radius)
                 if kind is None or ents[s].kind == kind]
        found.sort(key=lambda t: (t[0], t[1].id))
        return [e for _, e in found]

    # --- views ----------------------------------------------------------------------------
    def watch(self, observer_id: str) -> None:
        """Give an entity a view; the next tick's diff for it enters everything it sees."""
        self._views.watch(self._require(observer_id))

    def unwatch(self, observer_id: str) -> None:
        """Drop an entity's view (no-op when it has none); it gets no more diffs."""
        s = self._slot.get(observer_id)
        if s is not None:
            self._views.unwatch(s)

    def is_watching(self, observer_id: str) -> bool:
        """True when this entity currently has a view."""
        s = self._slot.get(observer_id)
        return s is not None and self._views.view_of(s) is not None

    def view_ids(self, observer_id: str) -> set[str]:
        """Ids in an observer's view as of the last tick or reset, less entities removed since
        (their leaves are queued for the next tick); UnknownEntity if it has no view.
        """
        view = self._views.view_of(self._require(observer_id))
        if view is None:
            raise UnknownEntity(observer_id)
        ents = self._ents
        return {ents[s].id for s in view}

    def reset_view(self, observer_id: str) -> list[Entity]:
        """The observer's full current view (watching it if needed); later diffs are relative to it."""
        ents = self._ents
        return [ents[s] for s in self._views.reset(self._require(observer_id))]

    def tick(self) -> dict[str, ViewDiff]:
        """Turn all changes since the previous tick into view diffs, keyed by observer id.

        Only observers whose view changed are returned. Call once per shard tick.
        """
        diffs, rebuilt = self._views.tick(len(self._slot))
        if rebuilt:
            self._free.extend(self._limbo)
            self._limbo.clear()
        ents = self._ents
        return {ents[o].id: d for o, d in diffs.items() if d.enter or d.upd or d.leave}
