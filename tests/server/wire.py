"""Raw-WebSocket helpers for the conformance suite: protocol v1 as a stranger speaks it.

Deliberately independent of `clients/`: plain `websockets` and `orjson`, so that the suite
checks the shard against the contract, not against our own client's reading of it.
Every wait has a timeout; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "world.v1"
WAIT_S = 5.0  # generous for a loaded 2-core machine; only failing tests ever wait this long
_names = itertools.count(1)


def unique_name(prefix: str = "t") -> str:
    """A player name no other test in this process uses (names are 1-24 of [A-Za-z0-9_-])."""
    return f"{prefix}{next(_names)}"


class Wire:
    """One raw connection: send dicts or raw text, receive decoded messages, watch the close.

    Every received message is also kept in `seen`, so a test can check what did *not* come.
    """

    def __init__(self, ws):
        self.ws = ws
        self.seen: list[dict] = []
        self.welcome: dict | None = None
        self.first_state: dict | None = None
        self.seq = 0  # last move seq sent by walk_to
        self.pose: list | None = None  # own [x, y, z, yaw] as last reported by the shard

    @property
    def you(self) -> str:
        """Own entity id from the welcome."""
        return self.welcome["you"]

    async def send(self, msg: dict | str | bytes) -> None:
        """Send a dict as JSON text, or raw text/bytes unchanged (for malformed input)."""
        await self.ws.send(orjson.dumps(msg).decode() if isinstance(msg, dict) else msg)

    async def recv(self, timeout: float = WAIT_S) -> dict:
        """The next message (decoded); TimeoutError if none within `timeout`."""
        msg = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.seen.append(msg)
        if msg.get("t") == "state" and self.welcome is not None:
            self._track_own_pose(msg)
        return msg

    def _track_own_pose(self, state: dict) -> None:
        for e in state.get("enter", ()):
            if e["id"] == self.you:
                self.pose = [e["x"], e["y"], e["z"], e["yaw"]]
        for u in state.get("upd", ()):
            if u[0] == self.you:
                self.pose = list(u[1:])

    async def recv_until(self, pred: Callable[[dict], bool], timeout: float = WAIT_S) -> dict:
        """Skip messages until one satisfies `pred`; return it. TimeoutError otherwise."""
        async def scan() -> dict:
            while True:
                msg = await self.recv(timeout=None)
                if pred(msg):
                    return msg
        return await asyncio.wait_for(scan(), timeout)

    async def recv_type(self, t: str, timeout: float = WAIT_S, **match: Any) -> dict:
        """The next message of type `t` whose fields equal `match`."""
        return await self.recv_until(
            lambda m: m.get("t") == t and all(m.get(k) == v for k, v in match.items()), timeout)

    async def error(self, timeout: float = WAIT_S) -> dict:
        """The next `error` message."""
        return await self.recv_type("error", timeout)

    async def state_where(self, pred: Callable[[dict], bool], timeout: float = WAIT_S) -> dict:
        """The next `state` message satisfying `pred`."""
        return await self.recv_until(lambda m: m.get("t") == "state" and pred(m), timeout)

    async def pose_of(self, eid: str, timeout: float = WAIT_S) -> list:
        """The next `upd` row `[id,x,y,z,yaw]` for `eid`."""
        msg = await self.state_where(lambda m: any(u[0] == eid for u in m.get("upd", ())),
                                     timeout)
        return next(u for u in msg["upd"] if u[0] == eid)

    async def barrier(self, timeout: float = WAIT_S) -> list[dict]:
        """Ping with a fresh id and return every message that came before its pong.

        The shard handles one connection's messages in order, so anything a message sent
        earlier causes directly (replies, errors) has arrived once the pong does.
        """
        ct = f"barrier{next(_names)}"
        start = len(self.seen)
        await self.send({"t": "ping", "ct": ct})
        await self.recv_until(lambda m: m.get("t") == "pong" and m.get("ct") == ct, timeout)
        return self.seen[start:-1]

    async def closed(self, timeout: float = WAIT_S) -> tuple[int, str]:
        """Read until the shard closes the connection; return (code, reason)."""
        async def drain() -> tuple[int, str]:
            try:
                while True:
                    self.seen.append(orjson.loads(await self.ws.recv()))
            except ConnectionClosed as exc:
                if exc.rcvd is None:
                    return 1006, ""
                return exc.rcvd.code, exc.rcvd.reason
        return await asyncio.wait_for(drain(), timeout)

    async def close(self) -> None:
        """Close from our side (1000)."""
        await self.ws.close()


async def open_wire(url: str, *, subprotocols=(SUBPROTOCOL,), **kwargs) -> Wire:
    """Open a raw WebSocket offering `world.v1` (no hello sent)."""
    ws = await connect(url, subprotocols=list(subprotocols) if subprotocols else None,
                       proxy=None, open_timeout=WAIT_S, **kwargs)
    return Wire(ws)


async def join(url: str, name: str | None = None, *, password: str | None = None,
               token: str | None = None, **extra: Any) -> Wire:
    """Open, send `hello`, and read `welcome` and the first `state` (kept on the Wire)."""
    w = await open_wire(url)
    hello: dict = {"t": "hello", "v": 1, "name": name if name is not None else unique_name()}
    if password is not None:
        hello["password"] = password
    if token is not None:
        hello["token"] = token
    hello.update(extra)
    await w.send(hello)
    w.welcome = await w.recv()
    assert w.welcome.get("t") == "welcome", w.welcome
    w.first_state = await w.recv()
    assert w.first_state.get("t") == "state", w.first_state
    return w


async def refused(url: str, hello: dict) -> tuple[int, str, list[dict]]:
    """Send `hello` on a fresh connection expecting refusal: (close code, reason, messages)."""
    w = await open_wire(url)
    await w.send(hello)
    code, reason = await w.closed()
    return code, reason, w.seen


def entity_ids(state: dict) -> set[str]:
    """Ids in a state's `enter` list."""
    return {e["id"] for e in state.get("enter", ())}


async def close_all(*wires: Wire) -> None:
    """Close every wire given (ignoring ones already closed)."""
    await asyncio.gather(*(w.close() for w in wires), return_exceptions=True)


# ---- a small, fast world for tests that need geometry ---------------------------------

FAST_WORLD = {
    "bounds": (-100.0, -100.0, 100.0, 100.0),
    "aoi": 20.0,
    "shout_range": 50.0,
    "talk_range": 4.0,
    "speed": 10000.0,  # fast enough that one tick's allowance crosses the whole world
}
GUARD = {"id": "guard", "name": "Guard", "x": 10.0, "y": 0.0, "z": 0.0,
         "persona": "A quiet test guard."}
HERMIT = {"id": "hermit", "name": "Hermit", "x": 60.0, "y": 0.0, "z": 60.0,
          "persona": "A test hermit who lives far from the spawn point."}


def write_world(path, *, npcs=(GUARD, HERMIT), **overrides) -> str:
    """Write a TOML world (FAST_WORLD with `overrides`, spawn at the origin) to `path`."""
    world = {**FAST_WORLD, "name": "TestField", "spawn": (0.0, 0.0, 0.0), "spawn_radius": 0.0,
             **overrides}
    lines = ["[world]"]
    for key, value in world.items():
        lines.append(f"{key} = {_toml(value)}")
    for npc in npcs:
        lines.append("\n[[npcs]]")
        lines += [f"{key} = {_toml(value)}" for key, value in npc.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _toml(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(float(value)) if isinstance(value, (int, float)) else str(value)


def own_entity(w: Wire) -> dict:
    """The player's own entity from its first state."""
    return next(e for e in w.first_state["enter"] if e["id"] == w.you)


async def walk_to(w: Wire, x: float, z: float, *, y: float = 0.0, yaw: float = 0.0,
                  seq_start: int | None = None) -> list:
    """Move `w` to (x, y, z) in the fast world and return the shard's `upd` row for it.

    Repeats the move, each after the previous one's ack, until the shard reports the
    target (a tick's time allowance is already plenty at FAST_WORLD's speed).
    """
    seq = seq_start if seq_start is not None else w.seq
    for _ in range(10):
        seq += 1
        await w.send({"t": "move", "seq": seq, "x": x, "y": y, "z": z, "yaw": yaw})
        await w.state_where(lambda m: m["ack"] >= seq)
        if abs(w.pose[0] - x) < 1e-6 and abs(w.pose[2] - z) < 1e-6 and w.pose[3] == yaw:
            w.seq = seq
            return [w.you, *w.pose]
    raise AssertionError(f"could not reach {(x, z)}: last pose {w.pose}")
