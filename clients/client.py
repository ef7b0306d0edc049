"""`WorldClient`: an asyncio client for a Worldsmith shard, speaking protocol v1 only.

    async with WorldClient.connect("ws://127.0.0.1:8765/ws", name="alice") as c:
        seq = await c.move(1.0, 0.0, 2.0, 0.5)
        me = await c.wait_ack(seq)          # the shard's (clamped) pose
        line = await c.say("hello")         # our own copy of the line
        async for event in c:               # Welcome, State, Chat, NpcStart, ... (typed)
            ...

Calls that the shard answers wait for the answer (matched by `id` → `re`) and raise
`ErrorReply` when it is an `error`; every call raises `Closed` once the connection is gone.
The connection plumbing (reader task, local view, event queue) is in `clients.session`.
"""
from __future__ import annotations

import asyncio
import math
import time

from clients.errors import ClientError, Closed, CloseCode, ErrorReply, ProtocolViolation
from clients.events import Chat, Entity, Error, Event, State, Who
from clients.replies import ReplyStream
from clients.session import Session

# Positions may come back rounded by the shard; closer than this counts as the same spot.
_SAME_SPOT_M = 0.01


class WorldClient(Session):
    """A connected player: open with `WorldClient.connect(url, name=..., ...)`.

    See `Session` for the connection, the local view (`entities`, `pose`, `ack`) and
    event iteration; this class adds one method per thing a player can do.
    """

    # ---- movement ------------------------------------------------------------------------

    async def move(self, x: float, y: float, z: float, yaw: float = 0.0) -> int:
        """Send a new pose with the next `seq` and return that seq (no wait).

        The shard clamps it to bounds and speed; `wait_ack(seq)` returns the clamped pose.
        """
        self._seq += 1
        seq = self._seq
        await self.send({"t": "move", "seq": seq, "x": x, "y": y, "z": z, "yaw": yaw,
                         "id": f"m{seq}"})
        return seq

    async def wait_ack(self, seq: int, timeout: float | None = None) -> Entity | None:
        """Wait until the shard has applied move `seq` (a `state` with `ack >= seq`) and
        return own entity as then reported. Raises `ErrorReply` if that move was refused
        (e.g. `rate_limited`: it was dropped), `Closed`, or `TimeoutError`."""
        def done(ev: Event) -> bool:
            return ((isinstance(ev, State) and ev.ack >= seq)
                    or (isinstance(ev, Error) and ev.re == f"m{seq}"))

        if seq not in self._move_errors and self.ack < seq:
            await self.wait_for(done, timeout)
        if seq in self._move_errors:
            raise self._move_errors[seq]
        return self.pose

    async def walk_to(self, x: float, z: float, *, within: float = 0.0, y: float | None = None,
                      timeout: float | None = None) -> Entity:
        """Walk towards (x, z) at the speed limit, one move per tick, and return own entity
        once within `within` metres (x-z) of the spot, clamped into the world's bounds.

        Each step waits for the shard's ack, so the pace follows its ticks and the shard's
        pose is the truth. Raises `ErrorReply` if a step is refused, `Closed`, or
        `TimeoutError` after `timeout` seconds (default: the client's).
        """
        minx, minz, maxx, maxz = self.welcome.bounds
        x, z = min(max(x, minx), maxx), min(max(z, minz), maxz)
        stride_max = self.welcome.speed / self.welcome.tick_hz

        async def walk() -> Entity:
            while True:
                me = self.pose
                dist = math.hypot(x - me.x, z - me.z)
                if dist <= within + 1e-6:
                    return me
                stride = min(dist - within, stride_max)
                yaw = math.atan2(x - me.x, z - me.z)
                seq = await self.move(me.x + stride * (x - me.x) / dist, me.y if y is None else y,
                                      me.z + stride * (z - me.z) / dist, yaw)
                await self.wait_ack(seq)

        return await asyncio.wait_for(walk(), timeout or self.timeout)

    def nearest(self, kind: str | None = None, name: str | None = None) -> Entity | None:
        """The entity in view nearest to us (x-z), optionally of a kind (`player`, `npc`,
        `object`) and/or with a name; never ourselves. None when nothing matches."""
        me = self.pose
        found = [e for e in self.entities.values() if e.id != self.you
                 and (kind is None or e.kind == kind) and (name is None or e.name == name)]
        if me is None or not found:
            return None
        return min(found, key=lambda e: math.hypot(e.x - me.x, e.z - me.z))

    # ---- chat ----------------------------------------------------------------------------

    async def chat(self, text: str, channel: str = "say", to: str | None = None,
                   timeout: float | None = None) -> Chat:
        """Send a chat line and return our own copy of it as the shard relayed it.

        Raises `ErrorReply` (`not_found` for an unknown or offline `to`, `rate_limited`,
        `invalid`), `Closed`, or `TimeoutError`.
        """
        msg = {"t": "chat", "text": text, "channel": channel}
        if to is not None:
            msg["to"] = to
        return await self.request(msg, ("chat",), timeout)

    async def say(self, text: str) -> Chat:
        """Say a line to players within hearing range (the area of interest)."""
        return await self.chat(text, "say")

    async def shout(self, text: str) -> Chat:
        """Shout a line: heard over the shard's wider shout range."""
        return await self.chat(text, "shout")

    async def global_(self, text: str) -> Chat:
        """Send a line to every player on every shard of the world."""
        return await self.chat(text, "global")

    async def whisper(self, to: str, text: str) -> Chat:
        """Send a private line to a player by id (`p:…`) or name, on any shard."""
        return await self.chat(text, "private", to)

    # ---- NPCs ----------------------------------------------------------------------------

    async def talk(self, npc: str, text: str, timeout: float | None = None) -> ReplyStream:
        """Say `text` to the NPC `npc` (`n:…`) and return its answer as a `ReplyStream`.

        Returns when the answer starts (`npc_start`); iterate the stream for the pieces,
        then read `stream.end` (`NpcEnd`; reason `busy` when the NPC service was saturated).
        Raises `ErrorReply` (`too_far`, `rate_limited` while our previous answer is still
        in flight), `Closed`, or `TimeoutError`.
        """
        msg = {"t": "chat", "text": text, "channel": "say", "to": npc}
        return await self.request(msg, ("npc_start",), timeout)

    async def cancel(self, reply: ReplyStream | str) -> None:
        """Ask the shard to stop an NPC answer; its stream then ends with reason `cancelled`
        (or its natural reason, if it had already finished)."""
        reply_id = reply.reply if isinstance(reply, ReplyStream) else reply
        await self.send({"t": "npc_cancel", "reply": reply_id})

    # ---- world objects -------------------------------------------------------------------

    async def place(self, shape: str, x: float, y: float, z: float, *,
                    yaw: float | None = None, color: str | None = None,
                    label: str | None = None, timeout: float | None = None) -> str:
        """Create a persistent object and return its id (`o:…`) once it enters our view.

        Place it within our area of interest, or the object never enters our view and
        this raises `TimeoutError`. Raises `ErrorReply` (`invalid` with `field` `color` for
        a colour that is not `#rrggbb`), `Closed`.
        """
        msg: dict = {"t": "place", "shape": shape, "x": x, "y": y, "z": z}
        for key, value in (("yaw", yaw), ("color", color), ("label", label)):
            if value is not None:
                msg[key] = value
        known = {eid for eid in self.entities if eid.startswith("o:")}
        minx, minz, maxx, maxz = self.welcome.bounds
        want_x, want_z = min(max(x, minx), maxx), min(max(z, minz), maxz)

        def is_ours(e: Entity) -> bool:
            props = e.props or {}
            return (e.kind == "object" and e.id not in known
                    and props.get("shape", shape) == shape
                    and props.get("owner", self.you) in (self.you, self.name)
                    and (label is None or props.get("label", label) == label)
                    and abs(e.x - want_x) <= _SAME_SPOT_M and abs(e.z - want_z) <= _SAME_SPOT_M)

        appeared = self.expect(lambda ev: isinstance(ev, State) and any(map(is_ours, ev.enter)))
        try:
            await self._until(msg, appeared, timeout)
        finally:
            appeared.cancel()
        return next(e.id for e in appeared.result().enter if is_ours(e))

    async def remove(self, target: str, timeout: float | None = None) -> None:
        """Remove an object we own (any object, for an admin).

        Returns once it has left our view, or, when it was not in view, once the shard has
        handled the request without error. Raises `ErrorReply` (`forbidden` when not ours,
        `not_found`), `Closed`, or `TimeoutError`.
        """
        msg = {"t": "remove", "target": target}
        if target in self.entities:
            gone = self.expect(lambda ev: isinstance(ev, State) and target in ev.leave)
            try:
                await self._until(msg, gone, timeout)
            finally:
                gone.cancel()
        else:
            # The shard handles a connection's messages in order, so once the ping sent
            # after it is answered, any error for the remove has already arrived.
            await self._until(msg, None, timeout)

    async def _until(self, msg: dict, outcome: asyncio.Future | None,
                     timeout: float | None) -> None:
        """Send `msg` with an id; wait for `outcome` (or, if None, a ping barrier) while
        turning an `error` for that id into `ErrorReply`."""
        errors = asyncio.ensure_future(self.request(msg, (), timeout))
        if outcome is None:
            outcome = asyncio.ensure_future(self.ping(timeout))
        try:
            done, _ = await asyncio.wait({errors, outcome}, timeout=timeout or self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if errors in done:
                errors.result()  # raises the ErrorReply or Closed
            if not done:
                raise TimeoutError(f"no outcome for {msg['t']} within the timeout")
            outcome.result()  # raises Closed if the connection went away
        finally:
            errors.cancel()

    # ---- presence and latency ------------------------------------------------------------

    async def who(self, timeout: float | None = None) -> Who:
        """The players online on every shard of the world."""
        return await self.request({"t": "who"}, ("who",), timeout)

    async def ping(self, timeout: float | None = None) -> float:
        """Round-trip time to the shard in seconds (a `ping` answered by `pong`)."""
        started = time.perf_counter()
        await self.request({"t": "ping", "ct": int(time.time() * 1000)}, ("pong",), timeout)
        return time.perf_counter() - started


__all__ = ["WorldClient", "ReplyStream", "ClientError", "ErrorReply", "Closed", "CloseCode",
           "ProtocolViolation"]
