"""The world: entities, authoritative movement, and per-observer views computed once per tick."""
from __future__ import annotations

import math

from worldstate.config import WorldConfig
from worldstate.entities import Entity, Pose
from worldstate.errors import DuplicateEntity, InvalidEntity, UnknownEntity
from worldstate.movement import clamp_move
from worldstate.spatial import Grid
from worldstate.views import ViewDiff


class World:
    """All entities of one shard, their poses, and what each observer sees.

    Pure and synchronous: commands (`add`, `move`, `watch`...) change state at once; `tick()`
    turns everything that happened since the previous tick into per-observer `ViewDiff`s.
    Internally every entity has an int slot; views and their reverse index are sets of slots.
    """

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        self.aoi = float(config.aoi)
        self._r2 = self.aoi * self.aoi
        self._bounds = tuple(float(b) for b in config.bounds)
        self._speed = float(config.speed)
        self._slot: dict[str, int] = {}
        self._ents: list[Entity | None] = []
        self._xs: list[float] = []
        self._zs: list[float] = []
        self._last_ms: list[int | None] = []
        self._watchers: list[set[int]] = []    # slot -> observer slots that see it
        self._views: dict[int, set[int]] = {}   # observer slot -> slots it sees
        self._free: list[int] = []
        self._grid = Grid(self.aoi / 2)         # every entity
        self._ogrid = Grid(self.aoi / 2)        # observers only
        self._moved: dict[int, Pose] = {}       # slot -> its pose at the previous tick
        self._pending: dict[int, list[str]] = {}  # observer slot -> ids removed from its view

    # --- entities -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._slot

    def get(self, entity_id: str) -> Entity | None:
        """The live entity with this id, or None."""
        s = self._slot.get(entity_id)
        return None if s is None else self._ents[s]

    def entities(self) -> list[Entity]:
        """Every entity in the world (a new list)."""
        return [self._ents[s] for s in self._slot.values()]

    def add(self, entity: Entity) -> None:
        """Put a new entity into the world; DuplicateEntity if its id is taken."""
        if not isinstance(entity, Entity):
            raise InvalidEntity(f"expected an Entity, got {entity!r}")
        if entity.id in self._slot:
            raise DuplicateEntity(entity.id)
        if self._free:
            s = self._free.pop()
            self._ents[s] = entity
            self._xs[s] = entity.pose.x
            self._zs[s] = entity.pose.z
            self._last_ms[s] = None
        else:
            s = len(self._ents)
            self._ents.append(entity)
            self._xs.append(entity.pose.x)
            self._zs.append(entity.pose.z)
            self._last_ms.append(None)
            self._watchers.append(set())
        self._slot[entity.id] = s
        self._grid.insert(s, entity.pose.x, entity.pose.z)

    def remove(self, entity_id: str) -> Entity | None:
        """Take an entity out of the world (and stop its view); it leaves every view that held it."""
        s = self._slot.get(entity_id)
        if s is None:
            return None
        if s in self._views:
            self._unwatch_slot(s)
        ent = self._ents[s]
        for o in self._watchers[s]:
            self._views[o].discard(s)
            self._pending.setdefault(o, []).append(entity_id)
        self._watchers[s] = set()
        del self._slot[entity_id]
        self._grid.remove(s)
        self._moved.pop(s, None)
        self._ents[s] = None
        self._free.append(s)
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
        if not isinstance(pose, Pose) or not pose.is_finite():
            raise InvalidEntity(f"teleport of {entity_id!r} needs a finite Pose, got {pose!r}")
        self._last_ms[s] = None
        self._set_pose(s, self._ents[s], pose)

    def _set_pose(self, s: int, ent: Entity, pose: Pose) -> None:
        if pose == ent.pose:
            return
        if s not in self._moved:
            self._moved[s] = ent.pose
        ent.pose = pose
        x, z = pose.x, pose.z
        if x != self._xs[s] or z != self._zs[s]:
            self._xs[s] = x
            self._zs[s] = z
            self._grid.update(s, x, z)
            if s in self._views:
                self._ogrid.update(s, x, z)

    # --- queries --------------------------------------------------------------------------
    def near(self, x: float, z: float, radius: float, kind: str | None = None) -> list[Entity]:
        """Entities within `radius` of (x, z) on the x-z plane, nearest first (optionally one kind)."""
        if not radius >= 0:
            return []
        hits = self._within(self._grid, x, z, radius)
        ents = self._ents
        found = [(d2, ents[s]) for d2, s in hits if kind is None or ents[s].kind == kind]
        found.sort(key=lambda t: (t[0], t[1].id))
        return [e for _, e in found]

    def _within(self, grid: Grid, x: float, z: float, radius: float) -> list[tuple[float, int]]:
        """(squared distance, slot) of keys in `grid` within `radius` of (x, z)."""
        r2 = radius * radius
        xs, zs = self._xs, self._zs
        out = []
        for bucket in grid.candidates(x, z, radius):
            for s in bucket:
                dx = xs[s] - x
                dz = zs[s] - z
                d2 = dx * dx + dz * dz
                if d2 <= r2:
                    out.append((d2, s))
        return out

    def _exact_view(self, o: int) -> set[int]:
        """Slots within the area of interest of observer slot `o`, by grid query."""
        x, z, r2 = self._xs[o], self._zs[o], self._r2
        xs, zs = self._xs, self._zs
        seen = set()
        for bucket in self._grid.candidates(x, z, self.aoi):
            for s in bucket:
                dx = xs[s] - x
                dz = zs[s] - z
                if dx * dx + dz * dz <= r2:
                    seen.add(s)
        return seen

    # --- views ----------------------------------------------------------------------------
    def watch(self, observer_id: str) -> None:
        """Give an entity a view; the next tick's diff for it enters everything it sees."""
        s = self._require(observer_id)
        if s in self._views:
            return
        self._views[s] = set()
        self._ogrid.insert(s, self._xs[s], self._zs[s])

    def unwatch(self, observer_id: str) -> None:
        """Drop an entity's view (no-op when it has none); it gets no more diffs."""
        s = self._slot.get(observer_id)
        if s is not None and s in self._views:
            self._unwatch_slot(s)

    def _unwatch_slot(self, o: int) -> None:
        watchers = self._watchers
        for s in self._views.pop(o):
            watchers[s].discard(o)
        self._pending.pop(o, None)
        self._ogrid.remove(o)

    def is_watching(self, observer_id: str) -> bool:
        """True when this entity currently has a view."""
        s = self._slot.get(observer_id)
        return s is not None and s in self._views

    def view_ids(self, observer_id: str) -> set[str]:
        """Ids in an observer's view as of the last tick (or reset); KeyError-like if not watching."""
        s = self._require(observer_id)
        if s not in self._views:
            raise UnknownEntity(observer_id)
        ents = self._ents
        return {ents[e].id for e in self._views[s]}

    def reset_view(self, observer_id: str) -> list[Entity]:
        """The observer's full current view (watching it if needed); later diffs are relative to it."""
        o = self._require(observer_id)
        if o not in self._views:
            self.watch(observer_id)
        new = self._exact_view(o)
        old = self._views[o]
        watchers = self._watchers
        for s in old - new:
            watchers[s].discard(o)
        for s in new - old:
            watchers[s].add(o)
        self._views[o] = new
        self._pending.pop(o, None)
        ents = self._ents
        return [ents[s] for s in new]

    # --- tick -----------------------------------------------------------------------------
    def tick(self) -> dict[str, ViewDiff]:
        """Turn all changes since the previous tick into view diffs, keyed by observer id.

        Only observers whose view changed are returned.
        """
        ents, watchers, views = self._ents, self._watchers, self._views
        out: dict[int, ViewDiff] = {}
        for o, view in views.items():
            new = self._exact_view(o)
            entered = new - view
            left = view - new
            if entered or left:
                d = out[o] = ViewDiff()
                for s in entered:
                    watchers[s].add(o)
                    d.enter.append(ents[s])
                for s in left:
                    watchers[s].discard(o)
                    d.leave.append(ents[s].id)
                views[o] = new
        for s, before in self._moved.items():
            ent = ents[s]
            if ent.pose == before:
                continue  # moved and came back within the tick: nothing to tell
            for o in watchers[s]:
                d = out.get(o)
                if d is None:
                    d = out[o] = ViewDiff()
                d.upd.append(ent)
        for o, d in out.items():
            if d.enter and d.upd:
                entered_ids = {id(e) for e in d.enter}
                d.upd = [e for e in d.upd if id(e) not in entered_ids]
        for o, gone in self._pending.items():
            d = out.get(o)
            if d is None:
                d = out[o] = ViewDiff()
            if d.enter:
                # Removed and re-added with the same id: the fresh `enter` replaces it.
                back = {e.id for e in d.enter}
                gone = [i for i in gone if i not in back]
            d.leave.extend(gone)
        self._pending = {}
        self._moved = {}
        return {ents[o].id: d for o, d in out.items() if d}
