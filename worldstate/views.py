"""What an observer is told each tick: entities that entered, moved, or left its view."""
from __future__ import annotations

from dataclasses import dataclass, field

from worldstate.entities import Entity


@dataclass(slots=True)
class ViewDiff:
    """One observer's change of view over one tick.

    `enter`: entities that came into view (send them whole); `upd`: entities already in view
    whose pose changed; `leave`: ids that left the view or the world. An id appears in at most
    one of the three lists.
    """

    enter: list[Entity] = field(default_factory=list)
    upd: list[Entity] = field(default_factory=list)
    leave: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.enter or self.upd or self.leave)
