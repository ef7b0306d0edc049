"""NPC personas: who each NPC is, parsed and validated from the world file's `[[npcs]]` tables."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from worldstate.errors import ConfigError

_ID = re.compile(r"[a-z0-9_-]{1,32}")
_ROLES = frozenset({"", "guide", "merchant", "quest-giver"})
_KEYS = frozenset({"id", "name", "x", "y", "z", "yaw", "role", "persona", "lore", "greeting",
                   "talk_range", "reply_tokens", "examples"})


@dataclass(frozen=True, slots=True)
class Persona:
    """One NPC: identity, voice, what it knows, and how far and how long it talks."""

    id: str                    # the entity id, "n:<id>"
    name: str
    x: float
    y: float
    z: float
    yaw: float
    role: str                  # "" | "guide" | "merchant" | "quest-giver"
    persona: str               # who they are and how they speak
    lore: tuple[str, ...]      # facts they know
    greeting: str
    talk_range: float          # metres; a player farther away gets `too_far`
    reply_tokens: int          # the answer's token budget
    examples: tuple[tuple[str, str], ...] = ()  # few-shot (player line, answer) pairs

    @property
    def is_guide(self) -> bool:
        return self.role == "guide"


def _str(key: str, value: Any, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _num(key: str, value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number, got {value!r}")
    return float(value)


def parse_persona(raw: dict[str, Any], index: int, default_talk_range: float) -> Persona:
    """One `[[npcs]]` table -> Persona; ConfigError names the offending key."""
    key = f"npcs[{index}]"
    for k in raw:
        if k not in _KEYS:
            raise ConfigError(f"{key}.{k}", "unknown key")
    nid = _str(f"{key}.id", raw.get("id"))
    if not _ID.fullmatch(nid):
        raise ConfigError(f"{key}.id", "must be 1-32 of a-z 0-9 _ -")
    role = raw.get("role", "") or ""
    if role not in _ROLES:
        raise ConfigError(f"{key}.role", f"must be one of {sorted(_ROLES)}, got {role!r}")
    lore = raw.get("lore", [])
    if not isinstance(lore, list) or not all(isinstance(f, str) for f in lore):
        raise ConfigError(f"{key}.lore", "must be a list of strings")
    examples = raw.get("examples", [])
    if not isinstance(examples, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(s, str) for s in e) for e in examples):
        raise ConfigError(f"{key}.examples", "must be a list of [player line, answer] pairs")
    talk_range = _num(f"{key}.talk_range", raw.get("talk_range"), default_talk_range)
    reply_tokens = int(_num(f"{key}.reply_tokens", raw.get("reply_tokens"), 64))
    if talk_range <= 0:
        raise ConfigError(f"{key}.talk_range", "must be > 0")
    if not 4 <= reply_tokens <= 512:
        raise ConfigError(f"{key}.reply_tokens", "must be between 4 and 512")
    name = _str(f"{key}.name", raw.get("name"))
    return Persona(
        id=f"n:{nid}", name=name,
        x=_num(f"{key}.x", raw.get("x"), 0.0), y=_num(f"{key}.y", raw.get("y"), 0.0),
        z=_num(f"{key}.z", raw.get("z"), 0.0), yaw=_num(f"{key}.yaw", raw.get("yaw"), 0.0),
        role=role, persona=_str(f"{key}.persona", raw.get("persona")),
        lore=tuple(f.strip() for f in lore if f.strip()),
        greeting=_str(f"{key}.greeting", raw.get("greeting"), default=f"Hello, I am {name}."),
        talk_range=talk_range, reply_tokens=reply_tokens,
        examples=tuple((a.strip(), b.strip()) for a, b in examples),
    )


def parse_personas(config) -> list[Persona]:
    """Every NPC of a WorldConfig; ids must be unique."""
    out: list[Persona] = []
    seen: set[str] = set()
    for i, raw in enumerate(config.npcs):
        p = parse_persona(raw, i, config.talk_range)
        if p.id in seen:
            raise ConfigError(f"npcs[{i}].id", f"duplicate NPC id {p.id!r}")
        seen.add(p.id)
        out.append(p)
    return out
