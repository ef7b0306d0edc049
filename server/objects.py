"""World objects: the config's initial ones, persisted ones, and place/remove by players.

Objects are written to the database before they exist in the world: the acknowledgement
of a `place` is the object entering state, which can only happen after the write.
"""
from __future__ import annotations

import secrets

from server.errors import FORBIDDEN, INVALID, NOT_FOUND, ClientError
from server.protocol import Place, Remove
from server.sessions import Session, now_ms
from worldstate.entities import MAX_COORD, Entity, Pose
from worldstate.records import ObjectRecord


def object_entity(oid: str, owner: str | None, shape: str, color: str | None,
                  label: str | None, pose: Pose) -> Entity:
    """The entity of an object: named by its label, else its shape; props per the contract."""
    props = {"shape": shape}
    if color:
        props["color"] = color
    if label:
        props["label"] = label
    if owner:
        props["owner"] = owner
    return Entity(oid, "object", label or shape, pose, props)


def from_record(rec: ObjectRecord) -> Entity:
    """The entity for a stored object."""
    return object_entity(rec.id, rec.owner, rec.shape, rec.color, rec.label,
                         Pose(rec.x, rec.y, rec.z, rec.yaw))


def initial_objects(config) -> list[Entity]:
    """The world file's objects: ids fixed by position in the file, owned by nobody."""
    return [object_entity(f"o:w{i}", None, spec.shape, spec.color, spec.label,
                          Pose(spec.x, spec.y, spec.z, spec.yaw))
            for i, spec in enumerate(config.objects)]


def _in_bounds(config, x: float, z: float) -> bool:
    minx, minz, maxx, maxz = config.bounds
    return minx <= x <= maxx and minz <= z <= maxz


async def place(shard, session: Session, msg: Place) -> None:
    """Persist a new object owned by the player, then add it to the world."""
    if not _in_bounds(shard.config, msg.x, msg.z):
        field = "x" if not shard.config.bounds[0] <= msg.x <= shard.config.bounds[2] else "z"
        raise ClientError(INVALID, "position is outside the world's bounds", field=field, re=msg.id)
    if abs(msg.y) > MAX_COORD:
        raise ClientError(INVALID, f"y must be within {MAX_COORD:g} m", field="y", re=msg.id)
    rec = ObjectRecord(f"o:{secrets.token_hex(6)}", session.name, msg.shape, msg.color, msg.label,
                       msg.x, msg.y, msg.z, msg.yaw, now_ms())
    await shard.db_call(shard.store.add_object, rec)
    shard.placed_by[rec.id] = session.pid
    shard.world.add(from_record(rec))
    shard.relay.object_added(rec)


async def remove(shard, session: Session, msg: Remove) -> None:
    """Delete an object: its owner or an admin only; world-made objects admins only."""
    entity = shard.world.get(msg.target)
    if entity is None or entity.kind != "object":
        raise ClientError(NOT_FOUND, f"no object {msg.target!r}", field="target", re=msg.id)
    owner = (entity.props or {}).get("owner")
    # A claimed name owns its objects across sessions; a guest only within its own session.
    mine = (session.claimed and owner is not None and owner.lower() == session.name.lower()) \
        or shard.placed_by.get(msg.target) == session.pid
    if not (mine or session.admin):
        raise ClientError(FORBIDDEN, "only its owner or an admin may remove this object",
                          field="target", re=msg.id)
    await shard.db_call(shard.store.remove_object, msg.target)
    shard.placed_by.pop(msg.target, None)
    shard.world.remove(msg.target)
    shard.relay.object_removed(msg.target)
