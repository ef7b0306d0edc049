"""World configuration: the TOML world file (bounds, spawn, ranges, places, objects, NPCs)."""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from worldstate.errors import ConfigError

_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_WORLD_KEYS = frozenset({"name", "bounds", "spawn", "spawn_radius", "aoi", "shout_range",
                         "talk_range", "speed"})
_TOP_KEYS = frozenset({"world", "places", "objects", "npcs"})


def _number(key: str, value: Any, *, positive: bool = False, nonneg: bool = False) -> float:
    """`value` as a finite float, or ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(key, f"must be finite, got {value!r}")
    if positive and v <= 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")
    if nonneg and v < 0:
        raise ConfigError(key, f"must be >= 0, got {value!r}")
    return v


def _text(key: str, value: Any, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    if required and not value.strip():
        raise ConfigError(key, "must not be empty")
    return value


def _vector(key: str, value: Any, n: int) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ConfigError(key, f"must be a list of {n} numbers, got {value!r}")
    return tuple(_number(f"{key}[{i}]", v) for i, v in enumerate(value))


@dataclass(frozen=True, slots=True)
class Place:
    """A named spot in the world (for directions and NPC knowledge)."""

    name: str
    x: float
    y: float
    z: float
    description: str = ""

    def __post_init__(self) -> None:
        _text("places.name", self.name, required=True)
        for k in ("x", "y", "z"):
            _number(f"places.{k}", getattr(self, k))
        _text("places.description", self.description)


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    """An object placed in the world when it is first created."""

    shape: str
    x: float
    y: float
    z: float
    yaw: float = 0.0
    color: str = "#a0a0a0"
    label: str = ""

    def __post_init__(self) -> None:
        _text("objects.shape", self.shape, required=True)
        for k in ("x", "y", "z", "yaw"):
            _number(f"objects.{k}", getattr(self, k))
        if not isinstance(self.color, str) or not _COLOR.fullmatch(self.color):
            raise ConfigError("objects.color", f"must be #rrggbb, got {self.color!r}")
        _text("objects.label", self.label)


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Everything the shard needs to know about a world; validated on construction."""

    name: str = "world"
    bounds: tuple[float, float, float, float] = (-150.0, -150.0, 150.0, 150.0)
    spawn: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spawn_radius: float = 5.0
    aoi: float = 60.0
    shout_range: float = 150.0
    talk_range: float = 8.0
    speed: float = 6.0
    places: tuple[Place, ...] = ()
    objects: tuple[ObjectSpec, ...] = ()
    npcs: tuple[dict[str, Any], ...] = ()
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _text("world.name", self.name, required=True)
        minx, minz, maxx, maxz = _vector("world.bounds", self.bounds, 4)
        if not (minx < maxx and minz < maxz):
            raise ConfigError("world.bounds", f"must be [minx, minz, maxx, maxz] with min < max, got {self.bounds!r}")
        sx, _, sz = _vector("world.spawn", self.spawn, 3)
        if not (minx <= sx <= maxx and minz <= sz <= maxz):
            raise ConfigError("world.spawn", f"must lie inside world.bounds, got {self.spawn!r}")
        _number("world.spawn_radius", self.spawn_radius, nonneg=True)
        for key in ("aoi", "shout_range", "talk_range", "speed"):
            _number(f"world.{key}", getattr(self, key), positive=True)
        names = set()
        for i, p in enumerate(self.places):
            if not isinstance(p, Place):
                raise ConfigError(f"places[{i}]", "must be a Place")
            if p.name.strip().lower() in names:
                raise ConfigError(f"places[{i}].name", f"duplicate place name {p.name!r}")
            names.add(p.name.strip().lower())
            _inside(f"places[{i}]", p.x, p.z, (minx, minz, maxx, maxz))
        for i, o in enumerate(self.objects):
            if not isinstance(o, ObjectSpec):
                raise ConfigError(f"objects[{i}]", "must be an ObjectSpec")
            _inside(f"objects[{i}]", o.x, o.z, (minx, minz, maxx, maxz))
        for i, n in enumerate(self.npcs):
            if not isinstance(n, dict):
                raise ConfigError(f"npcs[{i}]", "must be a table")

    def place(self, name: str) -> Place | None:
        """The place with this name (case-insensitive), or None."""
        low = name.strip().lower()
        return next((p for p in self.places if p.name.lower() == low), None)


def _inside(key: str, x: float, z: float, bounds: tuple[float, ...]) -> None:
    minx, minz, maxx, maxz = bounds
    if not minx <= x <= maxx:
        raise ConfigError(f"{key}.x", f"{x!r} lies outside world.bounds")
    if not minz <= z <= maxz:
        raise ConfigError(f"{key}.z", f"{z!r} lies outside world.bounds")


def _table_list(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
        raise ConfigError(key, "must be an array of tables ([[%s]])" % key)
    return items


def _build(cls: type, key: str, table: dict[str, Any], required: tuple[str, ...]) -> Any:
    """Construct `cls` from a TOML table, naming unknown or missing keys."""
    allowed = set(cls.__dataclass_fields__)
    for k in table:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}", "unknown key")
    for k in required:
        if k not in table:
            raise ConfigError(f"{key}.{k}", "is required")
    try:
        return cls(**table)
    except ConfigError as e:
        # Re-anchor the key to this table's position in the file.
        raise ConfigError(f"{key}.{e.key.split('.', 1)[-1]}", e.problem) from None


def parse_world(data: dict[str, Any], path: Path | None = None) -> WorldConfig:
    """Build a WorldConfig from already-parsed TOML data; ConfigError names any bad key."""
    for k in data:
        if k not in _TOP_KEYS:
            raise ConfigError(k, "unknown key")
    world = data.get("world", {})
    if not isinstance(world, dict):
        raise ConfigError("world", "must be a table")
    for k in world:
        if k not in _WORLD_KEYS:
            raise ConfigError(f"world.{k}", "unknown key")
    kw: dict[str, Any] = dict(world)
    for k, n in (("bounds", 4), ("spawn", 3)):
        if k in kw:
            kw[k] = _vector(f"world.{k}", kw[k], n)
    places = tuple(_build(Place, f"places[{i}]", t, ("name", "x", "y", "z"))
                   for i, t in enumerate(_table_list(data, "places")))
    objects = tuple(_build(ObjectSpec, f"objects[{i}]", t, ("shape", "x", "y", "z"))
                    for i, t in enumerate(_table_list(data, "objects")))
    npcs = tuple(dict(t) for t in _table_list(data, "npcs"))
    return WorldConfig(**kw, places=places, objects=objects, npcs=npcs, path=path)


def load_world(path: str | Path) -> WorldConfig:
    """Read a TOML world file; ConfigError (naming the key) on bad TOML or bad values."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(p), f"not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(str(p), f"cannot read world file: {e.strerror or e}") from None
    return parse_world(data, path=p)


def default_world_path() -> Path:
    """Path of the bundled village world file."""
    return Path(str(resources.files("worldstate").joinpath("worlds/village.toml")))


def default_world() -> WorldConfig:
    """The bundled default world: a small village with places, objects and NPCs."""
    return load_world(default_world_path())
