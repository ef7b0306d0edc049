"""Brute-force reference views: every observer against every entity, obviously correct and slow.

Used by the property tests and the micro-benchmark to check `World.tick()`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from worldstate.entities import Entity, Pose


def brute_force_view(entities: Iterable[Entity], observer: Entity, aoi: float) -> dict[str, Entity]:
    """Every entity within `aoi` of `observer` on the x-z plane (the observer included), by id."""
    ox, oz = observer.pose.x, observer.pose.z
    r2 = aoi * aoi
    view = {}
    for e in entities:
        dx = e.pose.x - ox
        dz = e.pose.z - oz
        # Same comparison as the world's (squared distances) so boundary cases agree exactly.
        if dx * dx + dz * dz <= r2:
            view[e.id] = e
    view[observer.id] = observer
    return view


@dataclass(slots=True)
class ExpectedDiff:
    """The diff an observer should get: ids that enter, update and leave."""

    enter: set[str] = field(default_factory=set)
    upd: set[str] = field(default_factory=set)
    leave: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.enter or self.upd or self.leave)


class Oracle:
    """Remembers what each observer was last told and computes the next expected diffs by brute force.

    An entity replaced by a new object with the same id (removed and re-added) counts as
    entering again, not as an update.
    """

    def __init__(self, aoi: float) -> None:
        self.aoi = aoi
        self.told: dict[str, dict[str, tuple[Entity, Pose]]] = {}

    def reset(self, observer_id: str, view: Iterable[Entity]) -> None:
        """Record that the observer was just given this full view."""
        self.told[observer_id] = {e.id: (e, e.pose) for e in view}

    def forget(self, observer_id: str) -> None:
        """The observer no longer has a view."""
        self.told.pop(observer_id, None)

    def views(self, entities: list[Entity], observer_ids: Iterable[str]) -> dict[str, dict[str, Entity]]:
        """Brute-force current views of the given observers."""
        by_id = {e.id: e for e in entities}
        return {o: brute_force_view(entities, by_id[o], self.aoi) for o in observer_ids}

    def tick(self, entities: list[Entity], observer_ids: Iterable[str]) -> dict[str, ExpectedDiff]:
        """Expected diffs for one tick (only non-empty ones) and remember the new views."""
        out = {}
        for o, now in self.views(entities, observer_ids).items():
            before = self.told.get(o, {})
            d = ExpectedDiff()
            for i, e in now.items():
                prev = before.get(i)
                if prev is None or prev[0] is not e:
                    d.enter.add(i)
                elif prev[1] != e.pose:
                    d.upd.add(i)
            d.leave = {i for i, (e, _) in before.items() if i not in now}
            self.told[o] = {i: (e, e.pose) for i, e in now.items()}
            if d:
                out[o] = d
        return out
