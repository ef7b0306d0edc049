"""The shard's seam to NPCs: their entities from the world config, and the hook for lines.

The shard calls an `NpcHook` when a player's line is addressed to an NPC in talking range.
The default hook answers nothing; the NPC issue replaces it (see `npc.service`) and streams
answers back with `shard.send_to(pids, message)`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from worldstate.entities import Entity, Pose


@dataclass(frozen=True, slots=True)
class NpcLine:
    """A line a player addressed to an NPC, and who heard it (they hear the answer too)."""

    speaker: str          # p:…
    speaker_name: str
    npc: str              # n:…
    npc_name: str
    text: str
    re: str | int | None  # the chat message's id, for the speaker's npc_start
    listeners: tuple[str, ...]


class NpcHook:
    """What the shard asks of NPCs. This default has no NPC answer anything."""

    async def start(self, shard) -> None:
        """Called once the shard is up; `shard.send_to` and `shard.world` are usable."""

    async def close(self) -> None:
        """Called at shutdown: cancel answers in flight and release resources."""

    def in_flight(self, pid: str) -> bool:
        """True while this player's previous NPC answer is still streaming."""
        return False

    def talk_range(self, npc_id: str) -> float | None:
        """This NPC's own talking range in metres; None: the world's `talk_range`."""
        return None

    def hear(self, line: NpcLine) -> None:
        """A line reached an NPC; answer it asynchronously. Must not block."""

    def cancel(self, pid: str, reply: str) -> bool:
        """The player asked to stop answer `reply`; False when it is not theirs or not running."""
        return False

    def player_left(self, pid: str) -> None:
        """The player went offline: stop its answers in flight."""

    def metrics_text(self) -> str:
        """Prometheus lines about NPC answering, appended to the shard's /metrics."""
        return ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "npc"


def npc_entities(config) -> list[Entity]:
    """Entities `n:<id>` for the world's `[[npcs]]` tables (id/name, and x/y/z or a place)."""
    out = []
    for i, raw in enumerate(config.npcs):
        name = str(raw.get("name") or raw.get("id") or f"npc{i}")
        nid = str(raw.get("id") or _slug(name))
        pos = raw.get("pos") or raw.get("position") or raw.get("at")
        place = config.place(raw["place"]) if isinstance(raw.get("place"), str) else None
        if isinstance(pos, (list, tuple)) and len(pos) == 3:
            x, y, z = (float(v) for v in pos)
        elif place is not None:
            x, y, z = place.x, place.y, place.z
        else:
            x, y, z = (float(raw.get(k, d)) for k, d in (("x", 0.0), ("y", 0.0), ("z", 0.0)))
        pose = Pose(x, y, z, float(raw.get("yaw", 0.0)))
        out.append(Entity(nid if nid.startswith("n:") else f"n:{nid}", "npc", name, pose))
    return out
