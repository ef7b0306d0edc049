"""The pure world model: entities, movement rules, areas of interest and per-tick view diffs.

Synchronous and free of I/O (persistence lives apart in `worldstate.store`).
"""
from worldstate.config import ObjectSpec, Place, WorldConfig, default_world, load_world
from worldstate.entities import Entity, Pose
from worldstate.errors import ConfigError, DuplicateEntity, InvalidEntity, UnknownEntity, WorldError
from worldstate.movement import clamp_move
from worldstate.views import ViewDiff
from worldstate.world import World

__all__ = [
    "ConfigError", "DuplicateEntity", "Entity", "InvalidEntity", "ObjectSpec", "Place", "Pose",
    "UnknownEntity", "ViewDiff", "World", "WorldConfig", "WorldError", "clamp_move",
    "default_world", "load_world",
]
