"""The world: entities, authoritative movement, and per-observer views computed once per tick."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from worldstate.config import WorldConfig
from worldstate.entities import MAX_COORD, Entity, Pose
from worldstate.errors import DuplicateEntity, InvalidEntity, UnknownEntity
from worldstate.movement import clamp_move
from worldstate.spatial import Grid, PairBand
from worldstate.views import ViewDiff


class World:
    """All entities of one shard, their poses, and what each observer sees.

    Pure and synchronous: commands (`add`, `move`, `watch`...) change state at once; `tick()`
    turns everything that happened since the previous tick into per-observer `ViewDiff`s.

    How a tick stays cheap: every entity has an int slot; each observer's view is a set of
    slots, with the reverse index (who sees this slot) beside it. Pairs near the edge of an
    area of interest live in a `PairBand` checked in bulk with numpy; pairs deep inside or far
    outside cannot change until an endpoint drifts by part of the band's `skin`. Endpoints
    that drifted, were added, teleported, or started a view are "loose" and get exact grid
    queries until the band is rebuilt (when too many are loose or drifting). `upd` comes from
    the reverse index of entities that moved, so no observer scans what did not change.
    """

    def __init__(self, config: WorldConfig, *, skin: float | None = None,
                 rebuild_limit: int | None = None) -> None:
        """A world for `config`.

        `skin` (metres, default aoi/10) and `rebuild_limit` (loose or drifting entities that
        trigger a band rebuild; default 8 + 1/64 of the population) tune speed, never results.
        """
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
        skin = self.aoi / 10 if skin is None else float(skin)
        if not skin > 0:
            raise ValueError(f"skin must be > 0, got {skin!r}")
        self._band = PairBand(self.aoi, skin)
        self._loose_d2 = (PairBand.LOOSE_FRACTION * skin) ** 2
        # Rebuild a little before entities turn loose, while the band still covers them.
        self._drift_d2 = (0.6 * PairBand.LOOSE_FRACTION * skin) ** 2
        self._ax: list[float] = []               # slot -> x at the last rebuild
        self._az: list[float] = []
        self._loose: set[int] = set()
        self._drifting: set[int] = set()
        self._limbo: list[int] = []              # freed slots, reusable after the next rebuild
        if rebuild_limit is not None and rebuild_limit < 0:
            raise ValueError(f"rebuild_limit must be >= 0, got {rebuild_limit!r}")
        self._rebuild_limit = rebuild_limit

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
            self._ax[s] = entity.pose.x
            self._az[s] = entity.pose.z
            self._last_ms[s] = None
        else:
            s = len(self._ents)
            self._ents.append(entity)
            self._xs.append(entity.pose.x)
            self._zs.append(entity.pose.z)
            self._ax.append(entity.pose.x)
            self._az.append(entity.pose.z)
            self._last_ms.append(None)
            self._watchers.append(set())
        self._slot[entity.id] = s
        self._grid.insert(s, entity.pose.x, entity.pose.z)
        self._loose.add(s)

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
        # The band may still name this slot: keep it loose and unused until the next rebuild.
        self._loose.add(s)
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
            if s not in self._loose:
                dx = x - self._ax[s]
                dz = z - self._az[s]
                d2 = dx * dx + dz * dz
                if d2 > self._drift_d2:
                    self._drifting.add(s)
                    if d2 > self._loose_d2:
                        self._loose.add(s)

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
        self._loose.add(s)

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
        self._loose.add(o)

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
        self._loose.add(o)  # its band pairs are stale now; exact queries until the next rebuild
        ents = self._ents
        return [ents[s] for s in new]

    # --- tick -----------------------------------------------------------------------------
    def tick(self) -> dict[str, ViewDiff]:
        """Turn all changes since the previous tick into view diffs, keyed by observer id.

        Only observers whose view changed are returned. Call once per shard tick.
        """
        ents, watchers, views = self._ents, self._watchers, self._views
        out: dict[int, ViewDiff] = {}
        xy = self._flip_band(out) if views else None
        self._flip_loose(out)
        self._add_updates(out)
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
        limit = self._rebuild_limit
        if limit is None:
            limit = 8 + len(self._slot) // 64
        if len(self._loose) > limit or len(self._drifting) > limit:
            self._rebuild(xy)
        return {ents[o].id: d for o, d in out.items() if d.enter or d.upd or d.leave}

    def _enter(self, out: dict[int, ViewDiff], o: int, s: int) -> None:
        self._views[o].add(s)
        self._watchers[s].add(o)
        d = out.get(o)
        if d is None:
            d = out[o] = ViewDiff()
        d.enter.append(self._ents[s])

    def _leave(self, out: dict[int, ViewDiff], o: int, s: int) -> None:
        self._views[o].discard(s)
        self._watchers[s].discard(o)
        d = out.get(o)
        if d is None:
            d = out[o] = ViewDiff()
        d.leave.append(self._ents[s].id)

    def _flip_band(self, out: dict[int, ViewDiff]) -> tuple[np.ndarray, np.ndarray]:
        """Enter/leave for band pairs whose endpoints are both settled; returns the position arrays."""
        xs = np.array(self._xs, dtype=np.float64)
        zs = np.array(self._zs, dtype=np.float64)
        if len(self._band):
            mask = None
            if self._loose:
                mask = np.zeros(len(xs), np.bool_)
                mask[np.fromiter(self._loose, np.int64, len(self._loose))] = True
            views, watchers, ents = self._views, self._watchers, self._ents
            # Inlined _enter/_leave: a busy tick flips hundreds of pairs here.
            for o, s, now in zip(*self._band.changes(xs, zs, mask)):
                d = out.get(o)
                if d is None:
                    d = out[o] = ViewDiff([], [], [])
                if now:
                    views[o].add(s)
                    watchers[s].add(o)
                    d.enter.append(ents[s])
                else:
                    views[o].discard(s)
                    watchers[s].discard(o)
                    d.leave.append(ents[s].id)
        return xs, zs

    def _flip_loose(self, out: dict[int, ViewDiff]) -> None:
        """Exact grid queries for pairs with a loose endpoint (each pair handled exactly once)."""
        loose, ents, watchers, views = self._loose, self._ents, self._watchers, self._views
        if not loose or not views:
            return
        xs, zs, aoi = self._xs, self._zs, self.aoi
        # Loose entity, settled observer.
        for s in loose:
            if ents[s] is None:
                continue  # removed: its leaves were queued at once
            near = {o for _, o in self._within(self._ogrid, xs[s], zs[s], aoi) if o not in loose}
            had = {o for o in watchers[s] if o not in loose}
            for o in near - had:
                self._enter(out, o, s)
            for o in had - near:
                self._leave(out, o, s)
        # Loose observer, any entity.
        for o in loose:
            view = views.get(o)
            if view is None:
                continue
            new = self._exact_view(o)
            for s in new - view:
                self._enter(out, o, s)
            for s in view - new:
                self._leave(out, o, s)

    def _add_updates(self, out: dict[int, ViewDiff]) -> None:
        """`upd` for every watcher of an entity whose pose changed (not those it just entered for)."""
        ents, watchers, moved = self._ents, self._watchers, self._moved
        # The hot loop of a busy tick: one dict lookup and one append per (mover, watcher).
        upd: defaultdict[int, list[Entity]] = defaultdict(list)
        for s, b in moved.items():
            ent = ents[s]
            p = ent.pose
            if p.x == b.x and p.z == b.z and p.y == b.y and p.yaw == b.yaw:
                continue  # moved and came back within the tick: nothing to tell
            for o in watchers[s]:
                upd[o].append(ent)
        slot = self._slot
        for o, items in upd.items():
            d = out.get(o)
            if d is None:
                out[o] = ViewDiff([], items, [])
                continue
            d.upd = items
            for e in d.enter:
                before = moved.get(slot[e.id])
                if before is not None and before != e.pose:
                    items.remove(e)  # it entered this tick: `enter` already has its pose

    def _rebuild(self, xy: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Rebuild the band from current positions; everything is settled again afterwards."""
        if xy is None:
            xy = (np.array(self._xs, dtype=np.float64), np.array(self._zs, dtype=np.float64))
        alive = np.fromiter(self._slot.values(), np.int64, len(self._slot))
        observers = np.fromiter(self._views.keys(), np.int64, len(self._views))
        self._band.rebuild(xy[0], xy[1], alive, observers)
        self._ax = list(self._xs)
        self._az = list(self._zs)
        self._loose.clear()
        self._drifting.clear()
        self._free.extend(self._limbo)
        self._limbo.clear()
