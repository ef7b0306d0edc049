"""Poses and entities: the things that exist in a world and where they stand."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from worldstate.errors import InvalidEntity

KINDS = frozenset({"player", "npc", "object"})
# Farther than this from the origin is a bug, not a place: it would also overflow the
# spatial index's arithmetic. A million kilometres is plenty for any world.
MAX_COORD = 1e9


class Pose(NamedTuple):
    """Where an entity stands: metres in a right-handed frame (y up) and a yaw in radians.

    Immutable on purpose: a pose only changes through `World.move`/`World.teleport`, which
    replace it, so the world always notices the change. A NamedTuple rather than a frozen
    dataclass because every move builds one: ~4x cheaper to build, compared in C.
    """

    x: float
    y: float
    z: float
    yaw: float = 0.0

    def is_finite(self) -> bool:
        """True when every coordinate and the yaw are finite numbers."""
        return all(math.isfinite(v) for v in (self.x, self.y, self.z, self.yaw))

    def is_valid(self) -> bool:
        """True when the pose is finite and its coordinates within `MAX_COORD` of the origin."""
        return self.is_finite() and max(abs(self.x), abs(self.y), abs(self.z)) <= MAX_COORD


@dataclass(slots=True, eq=False)
class Entity:
    """A player, NPC or object with a pose; `props` carries kind-specific extras (shape, colour...).

    Entities are compared by identity: the world owns one live object per id.
    """

    id: str
    kind: str
    name: str
    pose: Pose
    props: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidEntity(f"entity id must be a non-empty string, got {self.id!r}")
        if self.kind not in KINDS:
            raise InvalidEntity(f"entity {self.id!r}: kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if not isinstance(self.pose, Pose) or not self.pose.is_valid():
            raise InvalidEntity(f"entity {self.id!r}: pose must be a finite Pose within "
                                f"{MAX_COORD:g} m of the origin, got {self.pose!r}")

    def to_wire(self) -> dict[str, Any]:
        """The protocol's entity object: id, kind, name, x, y, z, yaw, and props when set."""
        p = self.pose
        wire: dict[str, Any] = {
            "id": self.id, "kind": self.kind, "name": self.name,
            "x": p.x, "y": p.y, "z": p.z, "yaw": p.yaw,
        }
        if self.props:
            wire["props"] = self.props
        return wire
