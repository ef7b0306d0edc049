"""What an NPC knows about the world, computed from the world itself, and which of it matters now.

`world_facts` turns the world file into short sentences (directions and distances from the
NPC to every named place and every other NPC), so a guide never needs them typed by hand.
`relevant` picks the one or two facts that share the most words with a player's line: a
small model answers far better from one fact placed right before its answer than from a
long list in the system prompt.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from npc.persona import Persona

# x grows to the east and z to the south (y up, right-handed), so north is -z.
_COMPASS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and are as at be but by can could did do does for from get go had has have he her him "
    "his how i if in is it its me my no not of on or our she so tell that the their them then "
    "there they this to was we were what when where which who why will with would you your "
    "please hi hello hey know about any some there's whats where's".split())


def compass(dx: float, dz: float) -> str:
    """The compass direction of a displacement on the x-z plane (x east, z south)."""
    angle = math.degrees(math.atan2(dx, -dz)) % 360.0  # 0 = north, 90 = east
    return _COMPASS[int((angle + 22.5) // 45) % 8]


def _distance_words(d: float) -> str:
    if d < 15:
        return "right here"
    if d < 1000:
        return f"about {int(round(d, -1) if d >= 30 else round(d))} m"
    return f"about {d / 1000:.1f} km"


def where(x: float, z: float, fx: float, fz: float) -> str:
    """'about 40 m east' of (fx, fz) to (x, z), or 'right here'."""
    d = math.hypot(x - fx, z - fz)
    words = _distance_words(d)
    return words if d < 15 else f"{words} {compass(x - fx, z - fz)}"


def _here(words: str) -> str:
    return words if words == "right here" else f"{words} of here"


def nearest_place(config, x: float, z: float):
    """The named place closest to (x, z), or None in a world without places."""
    return min(config.places, key=lambda p: math.hypot(p.x - x, p.z - z), default=None)


def world_facts(persona: Persona, config, others: Sequence[Persona]) -> list[str]:
    """Facts about the world from this NPC's standpoint, derived from the world file.

    A guide knows every named place and every NPC; anyone else knows the places within
    a few hundred metres and the NPCs of the village by name.
    """
    facts: list[str] = []
    reach = math.inf if persona.is_guide else 200.0
    for place in config.places:
        d = math.hypot(place.x - persona.x, place.z - persona.z)
        if d > reach:
            continue
        text = f"{place.name} is {_here(where(place.x, place.z, persona.x, persona.z))}"
        text += f": {place.description}" if place.description else "."
        facts.append(text if text.endswith(".") else text + ".")
    for other in others:
        if other.id == persona.id:
            continue
        spot = nearest_place(config, other.x, other.z)
        at = f" near {spot.name}" if spot is not None else ""
        facts.append(f"{other.name} can be found{at}, "
                     f"{_here(where(other.x, other.z, persona.x, persona.z))}.")
    return facts


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def keywords(text: str) -> set[str]:
    """The content words of a text, lower-cased and crudely stemmed."""
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP}


def relevant(line: str, facts: Iterable[str], k: int = 2) -> list[str]:
    """Up to k facts sharing the most content words with the line, best first; none if none share."""
    want = keywords(line)
    if not want:
        return []
    scored = []
    for i, fact in enumerate(facts):
        score = len(want & keywords(fact))
        if score:
            scored.append((-score, i, fact))
    scored.sort()
    return [fact for _, _, fact in scored[:k]]
