"""The frozen records that cross the store's API, and the store's exceptions.

Records validate themselves on construction, so an invalid one cannot exist: a bad value
raises `InvalidRecord` where it was made, long before it could reach a transaction or a
write-behind queue. Limits come from `worldstate.tables`, the columns' own sizes.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from worldstate import tables as t

from worldstate.errors import WorldError

_COLOR = re.compile(r"#[0-9a-fA-F]{6}")


class StoreError(WorldError):
    """Root of the store's errors: the database failed or refused the request.

    Tree: StoreError -> NameTaken, ObjectExists, InvalidRecord (also a ValueError),
    StoreClosed.
    """


class NameTaken(StoreError):
    """`create_account` for a name already claimed (in any letter case)."""


class ObjectExists(StoreError):
    """`add_object` with an id that is already stored."""


class InvalidRecord(StoreError, ValueError):
    """A value is the wrong type, too long, or not finite; nothing was written."""


class StoreClosed(StoreError):
    """The store (or the writer in front of it) was closed."""


@dataclass(frozen=True, slots=True)
class PlayerRecord:
    """A player's last pose and when it was seen (ms since the epoch)."""

    name: str
    x: float
    y: float
    z: float
    yaw: float
    last_seen_ms: int

    def __post_init__(self) -> None:
        check_name(self.name)
        _check_pose(self.x, self.y, self.z, self.yaw)
        _check_ms("last_seen_ms", self.last_seen_ms)


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """A persistent object: `owner` is the owner's name (None for world-made objects)."""

    id: str
    owner: str | None
    shape: str
    color: str | None
    label: str | None
    x: float
    y: float
    z: float
    yaw: float
    created_ms: int

    def __post_init__(self) -> None:
        _check_text("id", self.id, t.MAX_OBJECT_ID)
        if not self.id.startswith("o:"):
            raise InvalidRecord(f"object id must start with 'o:', got {self.id!r}")
        if self.owner is not None:
            check_name(self.owner, "owner")
        _check_text("shape", self.shape, t.MAX_SHAPE)
        if self.color is not None and not _COLOR.fullmatch(str(self.color)):
            raise InvalidRecord(f"color must be #rrggbb, got {self.color!r}")
        if self.label is not None:
            _check_text("label", self.label, t.MAX_LABEL, allow_empty=True)
        _check_pose(self.x, self.y, self.z, self.yaw)
        _check_ms("created_ms", self.created_ms)


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One chat line as the shard stamped it; `to` is set for private messages."""

    st_ms: int
    shard: str
    sender_id: str
    sender_name: str
    channel: str
    text: str
    to: str | None = None

    def __post_init__(self) -> None:
        _check_ms("st_ms", self.st_ms)
        _check_text("shard", self.shard, t.MAX_SHARD)
        _check_text("sender_id", self.sender_id, t.MAX_ENTITY_ID)
        check_name(self.sender_name, "sender_name")
        _check_text("channel", self.channel, t.MAX_CHANNEL)
        _check_text("text", self.text, t.MAX_CHAT_TEXT, allow_empty=True)
        if self.to is not None:
            _check_text("to", self.to, t.MAX_ENTITY_ID)


def check_name(name: object, field: str = "name") -> str:
    """Return `name` if it can be stored as a player/account name, else raise InvalidRecord.

    The shard enforces the protocol's stricter charset at the edge; the store only refuses
    what could not be stored faithfully (wrong type, empty, too long, control characters).
    """
    _check_text(field, name, t.MAX_NAME)
    text = str(name)
    if not text.isprintable() or text != text.strip():
        raise InvalidRecord(f"{field} has control characters or surrounding spaces")
    return text


def name_key(name: str) -> str:
    """The case-insensitive key under which a name is stored."""
    return name.lower()


def _check_text(field: str, value: object, limit: int, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise InvalidRecord(f"{field} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidRecord(f"{field} must not be empty")
    if len(value) > limit:
        raise InvalidRecord(f"{field} is longer than {limit} characters")
    if "\x00" in value:
        # PostgreSQL rejects NUL in text; refuse it everywhere so both backends agree.
        raise InvalidRecord(f"{field} contains a NUL character")


def _check_pose(x: object, y: object, z: object, yaw: object) -> None:
    for field, v in (("x", x), ("y", y), ("z", z), ("yaw", yaw)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidRecord(f"{field} must be a finite number, got {v!r}")


def _check_ms(field: str, v: object) -> None:
    # Must fit a signed 64-bit column.
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
        raise InvalidRecord(f"{field} must be a non-negative integer, got {v!r}")


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """What NPC `npc_id` remembers of player `player_name`: a summary and recent (line, answer) turns."""

    npc_id: str
    player_name: str
    summary: str
    turns: tuple[tuple[str, str], ...]
    updated_ms: int

    def __post_init__(self) -> None:
        check_name(self.player_name)
        if not isinstance(self.npc_id, str) or not self.npc_id or len(self.npc_id) > t.MAX_ENTITY_ID:
            raise InvalidRecord("npc_id must be a non-empty string of at most %d characters" % t.MAX_ENTITY_ID)
        if not isinstance(self.summary, str):
            raise InvalidRecord("summary must be a string")
        if not all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(s, str) for s in p)
                   for p in self.turns):
            raise InvalidRecord("turns must be (line, answer) string pairs")
        size = len(self.summary) + sum(len(a) + len(b) for a, b in self.turns)
        if size > t.MAX_MEMORY:
            raise InvalidRecord(f"memory too large ({size} > {t.MAX_MEMORY} characters)")
        _check_ms("updated_ms", self.updated_ms)
