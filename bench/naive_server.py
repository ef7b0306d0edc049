"""The in-run baseline: a naive full-broadcast shard, written the obvious way.

`python bench/naive_server.py --port 0` speaks enough of protocol v1 for the bots
(hello/welcome, move with seq/ack and clamping, ping, say-chat to everyone) and does what a
first version would: no area of interest (everyone sees every entity), and each tick it
builds and `json.dumps` a separate `state` for every observer and awaits each send in
turn. It exists so the load benchmark can compare the real shard's CPU against it in the
same run on the same machine. Not for production, on purpose.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


@dataclass
class NaiveConfig:
    """The naive shard's world: bounds, spawn disc, rules; validated on creation."""

    host: str = "127.0.0.1"
    port: int = 0
    tick_hz: float = 20.0
    aoi: float = 100.0
    speed: float = 5.0
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 1000.0, 1000.0)
    spawn: tuple[float, float] = (500.0, 500.0)
    spawn_radius: float = 500.0
    seed: int = 7

    def __post_init__(self) -> None:
        if not 0 < self.tick_hz <= 120:
            raise ValueError("tick_hz must be in (0, 120]")
        if self.aoi <= 0 or self.speed <= 0 or self.spawn_radius < 0:
            raise ValueError("aoi and speed must be positive, spawn_radius >= 0")
        x0, z0, x1, z1 = self.bounds
        if not (x0 < x1 and z0 < z1):
            raise ValueError("bounds must be minx,minz,maxx,maxz")


class Player:
    """One connected player: its pose, last applied move and what its client already knows."""

    def __init__(self, pid: str, name: str, x: float, z: float) -> None:
        self.id, self.name = pid, name
        self.x, self.y, self.z, self.yaw = x, 0.0, z, 0.0
        self.ack = 0
        self.last_move = time.monotonic()
        self.known: set[str] = set()

    def wire(self) -> dict:
        return {"id": self.id, "kind": "player", "name": self.name,
                "x": self.x, "y": self.y, "z": self.z, "yaw": self.yaw}


class NaiveShard:
    """Everyone sees everyone; one json.dumps per observer per tick."""

    def __init__(self, cfg: NaiveConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.ids = itertools.count(1)
        self.clients: dict = {}   # websocket -> Player
        self.moved: set[str] = set()
        self.tick = 0

    def spawn_point(self) -> tuple[float, float]:
        cx, cz = self.cfg.spawn
        x0, z0, x1, z1 = self.cfg.bounds
        r = self.cfg.spawn_radius * math.sqrt(self.rng.random())
        a = self.rng.uniform(0, 2 * math.pi)
        return min(max(cx + r * math.cos(a), x0), x1), min(max(cz + r * math.sin(a), z0), z1)

    async def handler(self, ws) -> None:
        """One connection: hello, welcome, then moves/pings/chat until it closes."""
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except (asyncio.TimeoutError, ValueError, ConnectionClosed):
            await ws.close(4000, "no hello")
            return
        if not isinstance(hello, dict) or hello.get("t") != "hello":
            await ws.close(4000, "no hello")
            return
        x, z = self.spawn_point()
        p = Player(f"p:{next(self.ids)}", str(hello.get("name", "guest"))[:24], x, z)
        c = self.cfg
        await ws.send(json.dumps({
            "t": "welcome", "v": 1, "you": p.id, "name": p.name, "token": "naive", "shard": "naive",
            "tick_hz": c.tick_hz, "aoi": c.aoi, "speed": c.speed, "st": int(time.time() * 1000),
            "bounds": list(c.bounds), "spawn": [c.spawn[0], 0.0, c.spawn[1]]}))
        self.clients[ws] = p
        self.moved.add(p.id)
        try:
            async for raw in ws:
                self.on_message(ws, p, raw)
        except ConnectionClosed:
            pass
        finally:
            del self.clients[ws]

    def on_message(self, ws, p: Player, raw) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            return
        t = msg.get("t")
        if t == "move":
            self.apply_move(p, msg)
        elif t == "ping":
            asyncio.ensure_future(ws.send(json.dumps({"t": "pong", "ct": msg.get("ct"), "st": int(time.time() * 1000)})))
        elif t == "chat":
            line = {"t": "chat", "from": p.id, "name": p.name, "text": str(msg.get("text", "")),
                    "channel": "say", "st": int(time.time() * 1000)}
            for other in list(self.clients):
                copy = dict(line, re=msg["id"]) if other is ws and "id" in msg else line
                asyncio.ensure_future(other.send(json.dumps(copy)))

    def apply_move(self, p: Player, msg: dict) -> None:
        """Clamp to bounds and speed (elapsed time counted at most 1 s), apply, remember the ack."""
        now = time.monotonic()
        x0, z0, x1, z1 = self.cfg.bounds
        try:
            x = min(max(float(msg["x"]), x0), x1)
            z = min(max(float(msg["z"]), z0), z1)
            y, yaw, seq = float(msg.get("y", p.y)), float(msg.get("yaw", p.yaw)), int(msg["seq"])
        except (KeyError, TypeError, ValueError):
            return
        if seq <= p.ack:
            return
        dx, dz = x - p.x, z - p.z
        dist = math.hypot(dx, dz)
        allowed = self.cfg.speed * min(now - p.last_move, 1.0) * 1.5  # slack for network jitter
        if dist > allowed > 0:
            x, z = p.x + dx / dist * allowed, p.z + dz / dist * allowed
        p.x, p.y, p.z, p.yaw = x, y, z, yaw
        p.last_move = now
        p.ack = seq
        self.moved.add(p.id)

    async def tick_loop(self) -> None:
        """Each tick: for every observer, dumps a state with every new, changed or gone entity."""
        period = 1.0 / self.cfg.tick_hz
        next_t = time.monotonic()
        while True:
            next_t += period
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            self.tick += 1
            everyone = {p.id: p for p in self.clients.values()}
            moved, self.moved = self.moved, set()
            st = int(time.time() * 1000)
            for ws, obs in list(self.clients.items()):
                enter = [e.wire() for eid, e in everyone.items() if eid not in obs.known]
                upd = [[eid, e.x, e.y, e.z, e.yaw] for eid, e in everyone.items()
                       if eid in moved and eid in obs.known]
                leave = [eid for eid in obs.known if eid not in everyone]
                obs.known = set(everyone)
                if not (enter or upd or leave):
                    continue
                state = {"t": "state", "tick": self.tick, "st": st, "ack": obs.ack,
                         "enter": enter, "upd": upd, "leave": leave}
                try:
                    await ws.send(json.dumps(state))
                except ConnectionClosed:
                    pass


@contextlib.asynccontextmanager
async def naive_shard(cfg: NaiveConfig):
    """Serve the naive shard (tick loop included) while the block runs; yield its ws:// URL."""
    shard = NaiveShard(cfg)
    async with serve(shard.handler, cfg.host, cfg.port, subprotocols=["world.v1"],
                     compression=None, max_queue=None) as server:
        host, port = server.sockets[0].getsockname()[:2]
        ticker = asyncio.create_task(shard.tick_loop())
        try:
            yield f"ws://{host}:{port}/ws"
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def serve_naive(cfg: NaiveConfig) -> None:
    """Run the naive shard until cancelled; print the ready line the load script parses."""
    async with naive_shard(cfg) as url:
        print(f"Naive shard ready: WebSocket {url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    """Command line: `python bench/naive_server.py [--port 0] [--aoi 100] ...`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tick-hz", type=float, default=20.0)
    p.add_argument("--aoi", type=float, default=100.0)
    p.add_argument("--speed", type=float, default=5.0)
    p.add_argument("--bounds", default="0,0,1000,1000", help="minx,minz,maxx,maxz")
    p.add_argument("--spawn", default="500,500", help="x,z")
    p.add_argument("--spawn-radius", type=float, default=500.0)
    a = p.parse_args(argv)
    cfg = NaiveConfig(host=a.host, port=a.port, tick_hz=a.tick_hz, aoi=a.aoi, speed=a.speed,
                      bounds=tuple(float(v) for v in a.bounds.split(",")),
                      spawn=tuple(float(v) for v in a.spawn.split(",")), spawn_radius=a.spawn_radius)
    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop
        uvloop.run(serve_naive(cfg))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
