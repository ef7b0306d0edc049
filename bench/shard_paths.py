"""CPU per inbound move and per tick of a real Shard, its players fed in-process (no bots).

    .venv/bin/python bench/shard_paths.py                           # spread: 1,000 players, 1 km²
    .venv/bin/python bench/shard_paths.py --players 500 --size 200  # crowd: 500 in a 200 m square

Each player is a real `ShardConnection` (handshake, hello, admission as on the wire) whose
transport writes into a TCP loopback socket, so the kernel's cost of each write stays in;
the sockets are drained outside the timed regions. Each 50 ms "tick" half the players send
one masked `move` frame (bots at 10 Hz), fed to `data_received`, then `Ticker.tick()` runs.
What is timed is process CPU time (`time.process_time`), which the other work on a shared
machine inflates less than wall time; the bots' side, the event loop and epoll are not in
it. Prints one JSON line: CPU µs per move, CPU ms per tick (mean, p10, median) and the
share of one core that both would take at 20 Hz. `--speed 3` walks as bench/load.py's bots
do (more view changes and band rebuilds than the default's 0.1 m/s); `--drop-writes` leaves
the kernel's sends out, for before/after ratios of the shard's own Python.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import math
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from server.app import run_shard  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.ticker import Ticker  # noqa: E402
from server.wsconn import ShardConnection  # noqa: E402


# The bench world's speed limit (m/s). The ticks here run faster than real time, so with the
# usual 6 m/s the shard's clock would allow less than a real 100 ms step between two moves of
# a player; a high limit keeps every step unclamped, as the load run's bots' steps are.
SPEED_LIMIT = 1000.0


class LoopbackTransport:
    """The parts of an asyncio transport the shard uses, writing into a TCP loopback socket."""

    def __init__(self, listening: socket.socket) -> None:
        peer = socket.create_connection(listening.getsockname())
        own, _ = listening.accept()
        for s in (own, peer):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
        self.own, self.peer = own, peer
        self.closing = False

    def write(self, data: bytes) -> None:
        self.own.send(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 0) if name == "peername" else default

    def drain(self) -> None:
        """Read and drop what the shard wrote (outside the timed regions)."""
        try:
            while self.peer.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


def _drop(data: bytes) -> None:
    """A transport write that sends nothing (`--drop-writes`)."""


def masked(payload: bytes) -> bytes:
    """One masked client text frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade_request() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: world.v1\r\n\r\n").encode()


async def connect_players(shard, n: int) -> list[tuple[ShardConnection, LoopbackTransport]]:
    """`n` admitted players, each a real ShardConnection on a loopback transport."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(4096)
    players = []
    for i in range(n):
        conn, transport = ShardConnection(shard.listener), LoopbackTransport(listening)
        conn.connection_made(transport)
        conn.data_received(upgrade_request())
        conn.data_received(masked(orjson.dumps({"t": "hello", "v": 1, "name": f"b{i}"})))
        players.append((conn, transport))
        if i % 50 == 0:
            await asyncio.sleep(0)  # let admissions run
    while any(conn.session is None for conn, _ in players):
        await asyncio.sleep(0.01)
    listening.close()
    return players


def run_ticks(shard, players, *, ticks: int, warmup: int, size: float, step: float) -> dict:
    """Drive moves and ticks; return the timings of the ticks after `warmup`."""
    ticker = Ticker(shard)
    rnd = random.Random(1)
    walk = []
    for conn, _ in players:
        pose = shard.world.get(conn.session.pid).pose
        walk.append([pose.x, pose.z, rnd.uniform(0, 2 * math.pi), 0])
    tick_s, move_s, moves = [], [], 0
    for k in range(warmup + ticks):
        frames = []
        for i in range(k % 2, len(players), 2):  # 10 Hz moves at 20 Hz ticks
            x, z, heading, seq = walk[i]
            heading += rnd.uniform(-0.3, 0.3)
            x = min(max(x + step * math.cos(heading), 0.0), size)
            z = min(max(z + step * math.sin(heading), 0.0), size)
            walk[i] = [x, z, heading, seq + 1]
            frames.append((players[i][0], masked(b'{"t":"move","seq":%d,"x":%r,"y":0.0,"z":%r,"yaw":%r}'
                                                 % (seq + 1, x, z, heading))))
        t0 = time.process_time()
        for conn, frame in frames:
            conn.data_received(frame)
        t1 = time.process_time()
        ticker.tick()
        t2 = time.process_time()
        if k >= warmup:
            tick_s.append(t2 - t1)
            move_s.append(t1 - t0)
            moves += len(frames)
        for _, transport in players:
            transport.drain()
    ordered = sorted(tick_s)
    return {"us_per_move": round(1e6 * sum(move_s) / moves, 1),
            "ms_per_tick": round(1e3 * sum(tick_s) / ticks, 2),
            "tick_p10_p50_ms": [round(1e3 * ordered[ticks // 10], 2), round(1e3 * ordered[ticks // 2], 2)],
            "core_pct_at_20hz": round(100 * (sum(move_s) + sum(tick_s)) / (ticks * 0.05), 1),
            "states_per_tick": round(shard.metrics.messages_out.get("state") / (warmup + ticks))}


async def main(args) -> dict:
    with tempfile.TemporaryDirectory() as d:
        world = Path(d) / "world.toml"
        c = args.size / 2
        world.write_text(f'[world]\nname = "Bench"\nbounds = [0.0, 0.0, {args.size}, {args.size}]\n'
                         f"spawn = [{c}, 0.0, {c}]\nspawn_radius = {c}\naoi = {args.aoi}\n"
                         f"shout_range = {2 * args.aoi}\ntalk_range = 8.0\nspeed = {SPEED_LIMIT}\n")
        # The shard's own ticker barely runs (tick_hz 0.01): this script calls tick() itself.
        settings = Settings(host="127.0.0.1", port=0, db=f"sqlite:///{d}/bench.db", npc_model="none",
                            world=str(world), tick_hz=0.01, max_players=args.players + 10,
                            log_level="WARNING")
        async with run_shard(settings) as shard:
            players = await connect_players(shard, args.players)
            if args.drop_writes:
                for _, transport in players:
                    transport.write = _drop
            gc.collect()
            result = run_ticks(shard, players, ticks=args.ticks, warmup=args.warmup, size=args.size,
                               step=args.speed / 10)
        for _, transport in players:  # after the shard's shutdown wrote its closes into them
            transport.own.close()
            transport.peer.close()
    return {"players": args.players, "size_m": args.size, "speed": args.speed,
            "writes": "dropped" if args.drop_writes else "sent", **result,
            "load": round(os.getloadavg()[0], 2)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--players", type=int, default=1000)
    p.add_argument("--size", type=float, default=1000.0, help="side of the square world, metres")
    p.add_argument("--aoi", type=float, default=100.0)
    p.add_argument("--ticks", type=int, default=150, help="timed ticks")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--speed", type=float, default=0.1,
                   help="walking speed, m/s (bench/load.py's bots walk at 3.0: views change more)")
    p.add_argument("--drop-writes", action="store_true",
                   help="the transports drop what the shard writes: the shard's Python alone, without "
                        "the kernel's sends (about half of a tick), for steadier before/after ratios")
    print(json.dumps(asyncio.run(main(p.parse_args()))))
