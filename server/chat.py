"""Chat: say/shout by range, global, private by id or name, and lines addressed to NPCs.

`Relay` is the seam for reaching players beyond this shard (global lines, private lines,
the `who` roster). This one knows only this shard; the scale-out issue extends it.
"""
from __future__ import annotations

import math

from server.errors import NOT_FOUND, TOO_FAR, ClientError, RateLimited
from server.npcs import NpcLine
from server.protocol import Chat, encode
from server.sessions import Session, now_ms
from worldstate.records import ChatLine


class Relay:
    """Reaches players anywhere in the world; this default covers this shard only."""

    def __init__(self, shard) -> None:
        self.shard = shard

    def find_player(self, target: str) -> tuple[str, str] | None:
        """(id, name) of an online player by id or name, or None."""
        session = self.shard.sessions.find(target)
        return (session.pid, session.name) if session else None

    def send_global(self, frame: bytes, skip: str | None = None) -> None:
        """Deliver a global line to every player (but `skip`, who got its own copy)."""
        self.shard.send_to([p for p in self.shard.sessions.online if p != skip], frame, "chat")

    def send_private(self, pid: str, frame: bytes) -> None:
        """Deliver a private line to one player found with `find_player`."""
        self.shard.send_to([pid], frame, "chat")

    def roster(self) -> list[dict]:
        """Players online on every shard: {id, name, shard}."""
        shard = self.shard.settings.shard
        return [{"id": s.pid, "name": s.name, "shard": shard} for s in self.shard.sessions.online.values()]

    def object_added(self, rec) -> None:
        """An object was placed here (other shards learn of it through the MQTT relay)."""

    def object_removed(self, oid: str) -> None:
        """An object was removed here."""

    async def start(self) -> None:
        """Connect to the other shards (nothing to do for one shard)."""

    async def close(self) -> None:
        """Disconnect from the other shards."""


def handle_chat(shard, session: Session, msg: Chat) -> None:
    """Route one chat line to who hears it, the sender included, and log it."""
    if msg.to is not None and msg.to.startswith("n:"):
        return _to_npc(shard, session, msg)
    st = now_ms()
    line = {"t": "chat", "from": session.pid, "name": session.name, "text": msg.text}
    if msg.to is not None:
        found = shard.relay.find_player(msg.to)
        if found is None:
            raise ClientError(NOT_FOUND, f"no player {msg.to!r} online", field="to", re=msg.id)
        line.update(channel="private", to=found[0], st=st)
        if found[0] != session.pid:
            shard.relay.send_private(found[0], encode(line))
        _echo(shard, session, line, msg.id)
        return _log(shard, session, st, "private", msg.text, found[0])
    line.update(channel=msg.channel, st=st)
    if msg.channel == "global":
        shard.relay.send_global(encode(line), skip=session.pid)
    else:
        radius = shard.config.aoi if msg.channel == "say" else shard.config.shout_range
        hearers = [p for p in _hearers(shard, session.pid, radius) if p != session.pid]
        shard.send_to(hearers, encode(line), "chat")
    _echo(shard, session, line, msg.id)
    _log(shard, session, st, msg.channel, msg.text, None)


def _to_npc(shard, session: Session, msg: Chat) -> None:
    npc = shard.world.get(msg.to)
    if npc is None or npc.kind != "npc":
        raise ClientError(NOT_FOUND, f"no NPC {msg.to!r}", field="to", re=msg.id)
    me = shard.world.get(session.pid).pose
    reach = shard.npcs.talk_range(npc.id) or shard.config.talk_range
    if math.hypot(npc.pose.x - me.x, npc.pose.z - me.z) > reach:
        raise ClientError(TOO_FAR, f"{npc.name} is too far away to talk to", field="to", re=msg.id)
    if shard.npcs.in_flight(session.pid):
        raise RateLimited("your previous NPC answer is still coming", re=msg.id)
    st = now_ms()
    line = {"t": "chat", "from": session.pid, "name": session.name, "text": msg.text,
            "channel": "say", "to": npc.id, "st": st}
    hearers = _hearers(shard, session.pid, shard.config.aoi)
    shard.send_to([p for p in hearers if p != session.pid], encode(line), "chat")
    _echo(shard, session, line, msg.id)
    _log(shard, session, st, "say", msg.text, npc.id)
    shard.npcs.hear(NpcLine(session.pid, session.name, npc.id, npc.name, msg.text, msg.id,
                            tuple(hearers)))


def _hearers(shard, pid: str, radius: float) -> list[str]:
    """Online players within `radius` (x–z) of `pid`, `pid` included."""
    me = shard.world.get(pid).pose
    near = shard.world.near(me.x, me.z, radius, kind="player")
    online = shard.sessions.online
    out = [e.id for e in near if e.id in online]
    if pid not in out:
        out.append(pid)
    return out


def _echo(shard, session: Session, line: dict, msg_id) -> None:
    """The sender's own copy, carrying `re`."""
    if msg_id is not None:
        line = dict(line, re=msg_id)
    shard.send_to([session.pid], encode(line), "chat")


def _log(shard, session: Session, st: int, channel: str, text: str, to: str | None) -> None:
    shard.db.queue_chat(ChatLine(st, shard.settings.shard, session.pid, session.name, channel, text, to))
