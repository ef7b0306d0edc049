"""Exceptions of the world model.

    WorldError                 root: anything the world model refuses
    ├── ConfigError            a world file or WorldConfig value is wrong (also a ValueError)
    ├── UnknownEntity          no entity has that id (also a KeyError)
    ├── DuplicateEntity        an entity with that id is already in the world
    └── InvalidEntity          an entity's own fields are wrong (also a ValueError)

The server maps these to error replies in one place; nothing here knows about the wire.
"""
from __future__ import annotations


class WorldError(Exception):
    """Root of every exception raised by `worldstate`."""


class ConfigError(WorldError, ValueError):
    """A world configuration value is missing, unknown or out of range; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class UnknownEntity(WorldError, KeyError):
    """No entity with this id is in the world."""

    def __init__(self, entity_id: str) -> None:
        super().__init__(entity_id)
        self.entity_id = entity_id

    def __str__(self) -> str:
        return f"no entity {self.entity_id!r} in the world"


class DuplicateEntity(WorldError):
    """An entity with this id is already in the world."""

    def __init__(self, entity_id: str) -> None:
        super().__init__(f"entity {entity_id!r} is already in the world")
        self.entity_id = entity_id


class InvalidEntity(WorldError, ValueError):
    """An entity's fields are malformed (bad kind, empty id, non-finite pose)."""
