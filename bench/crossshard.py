"""Cross-shard chat through a local MQTT broker (issue 6): delivery latency of global and
private lines between two shard processes.

    .venv/bin/python bench/crossshard.py                  # 1,000 lines a minute for 60 s
    .venv/bin/python bench/crossshard.py --seconds 20 --players 5 --chat-lines 200 --rate 6000
    .venv/bin/python bench/crossshard.py --in-process     # both shards in this process

Starts a mosquitto on a free loopback port (or uses `--mqtt URL`), two shards `a` and `b`
(`python -m server --mqtt ...`, a shared SQLite file unless `--db` names PostgreSQL), and
`--players` raw-WebSocket players on each. Lines go out at `--rate` per minute, alternately
global and private, from a random player on either shard, each addressed (when private) to
a random player on the other shard. Latency is send -> receipt in this one process (one
clock), counted per delivery; "cross" counts only deliveries on the other shard, the path
through the broker. Two baselines come first: `broker_hop`, two bare MQTT clients through
the same broker, and `control_no_mqtt`, one shard without MQTT at the same rate and number
of players, so that on a busy machine what the relay adds can be told from what the
machine does to every shard. Prints a table, the target (p99 <= 50 ms), and a JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.broker import Broker  # noqa: E402  (after the path fix above)
from tests.scaleout.shards import ShardProcess  # noqa: E402

TARGET_P99_MS = 50.0


class Player:
    """One raw connection; records the receipt time of every bench line it gets."""

    def __init__(self, ws, pid: str, name: str, shard: str) -> None:
        self.ws, self.pid, self.name, self.shard = ws, pid, name, shard
        self.reader: asyncio.Task | None = None
        self.errors: collections.Counter[str] = collections.Counter()

    async def read(self, sent: dict[str, tuple[float, str, str]], out: dict[str, list[float]]) -> None:
        """Record latency (ms) of each bench line, keyed global_cross/global_local/private_cross."""
        try:
            async for frame in self.ws:
                self._one(frame, sent, out)
        except ConnectionClosed as exc:
            self.errors[f"closed {exc.rcvd.code if exc.rcvd else 1006}"] += 1

    def _one(self, frame, sent, out) -> None:
        now = time.perf_counter()
        msg = orjson.loads(frame)
        if msg.get("t") == "error":
            self.errors[msg["code"]] += 1
        if msg.get("t") != "chat" or not msg.get("text", "").startswith("bench "):
            return
        key = msg["text"].split(" ", 2)[1]
        origin = sent.get(key)
        if origin is None or msg["from"] == self.pid:
            return  # the sender's own echo is not a delivery
        t0, shard, channel = origin
        where = "cross" if shard != self.shard else "local"
        out.setdefault(f"{channel}_{where}", []).append((now - t0) * 1000.0)


async def join(url: str, name: str, shard: str) -> Player:
    """Connect and say hello; returns once the welcome and first state are read."""
    ws = await connect(url, subprotocols=["world.v1"], proxy=None, max_queue=None)
    await ws.send(orjson.dumps({"t": "hello", "v": 1, "name": name}).decode())
    welcome = orjson.loads(await ws.recv())
    await ws.recv()  # the first state
    return Player(ws, welcome["you"], name, shard)


async def wait_presence(p: Player, total: int, timeout: float = 30.0) -> None:
    """Ask `who` until it lists every player of both shards (presence is asynchronous)."""
    async with asyncio.timeout(timeout):
        while True:
            await p.ws.send('{"t":"who"}')
            while (msg := orjson.loads(await p.ws.recv())).get("t") not in ("who", "error"):
                pass
            if msg.get("total") == total:
                return
            await asyncio.sleep(0.1)  # pacing the polls


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))] if s else float("nan")


async def run(args, urls: dict[str, str]) -> dict:
    """Drive the load and return the measured figures."""
    players = {s: [await join(u, f"{s}{i}", s) for i in range(args.players)] for s, u in urls.items()}
    everyone = [p for group in players.values() for p in group]
    await wait_presence(everyone[0], len(everyone))
    sent: dict[str, tuple[float, str, str]] = {}
    out: dict[str, list[float]] = {}
    for p in everyone:
        p.reader = asyncio.get_running_loop().create_task(p.read(sent, out))
    interval = 60.0 / args.rate
    count = int(args.seconds * args.rate / 60.0)
    rng = random.Random(7)
    # Round-robin over senders keeps each under the chat limit (5 lines per 10 s).
    senders = itertools.cycle(rng.sample(everyone, len(everyone)))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * interval - loop.time()))  # pacing the load
        p = next(senders)
        channel = "global" if i % 2 == 0 else "private"
        key = f"k{i}"
        msg = {"t": "chat", "text": f"bench {key} line", "channel": "global"}
        if channel == "private":
            other = "b" if p.shard == "a" else "a"
            msg = {"t": "chat", "text": f"bench {key} line", "to": rng.choice(players[other]).name}
        sent[key] = (time.perf_counter(), p.shard, channel)
        await p.ws.send(orjson.dumps(msg).decode())
    expected_global = (count + 1) // 2 * (len(everyone) - 1)

    def delivered() -> tuple[int, int]:
        return (len(out.get("global_cross", [])) + len(out.get("global_local", [])),
                len(out.get("private_cross", [])))

    # Let the last lines arrive (bounded: whatever is later than this counts as lost).
    deadline = loop.time() + args.drain
    while delivered() != (expected_global, count // 2) and loop.time() < deadline:
        await asyncio.sleep(0.05)  # polling counters other tasks fill
    for p in everyone:
        p.reader.cancel()
        await p.ws.close()
    got_global = delivered()[0]
    errors = sum((p.errors for p in everyone), collections.Counter())
    return {"errors": dict(errors), "lines": count, "players": len(everyone), "rate_per_min": args.rate,
            "global_delivered": got_global, "global_expected": expected_global,
            "private_delivered": len(out.get("private_cross", [])), "private_expected": count // 2,
            **{f"{k}_ms": {"p50": pct(v, 50), "p99": pct(v, 99), "max": max(v), "n": len(v)}
               for k, v in sorted(out.items())}}


async def broker_baseline(mqtt: str, n: int = 100, gap_s: float = 0.05) -> list[float]:
    """Latency (ms) of the broker hop alone: two bare aiomqtt clients in this process, one
    small message every `gap_s`. What the shards add is the rest of the cross-shard figure."""
    import socket

    import aiomqtt

    from server.cluster import parse_broker_url

    a = parse_broker_url(mqtt)
    opts = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    lat: list[float] = []

    def client() -> aiomqtt.Client:
        return aiomqtt.Client(a.host, a.port, username=a.username, password=a.password,
                              protocol=aiomqtt.ProtocolVersion.V5, socket_options=opts)

    async with client() as pub, client() as sub:
        await sub.subscribe("crossshard-bench/hop")

        async def read() -> None:
            async for m in sub.messages:
                lat.append((time.perf_counter() - float(m.payload.decode())) * 1000.0)
                if len(lat) == n:
                    return

        reader = asyncio.get_running_loop().create_task(read())
        for _ in range(n):
            await pub.publish("crossshard-bench/hop", str(time.perf_counter()).encode())
            await asyncio.sleep(gap_s)  # pacing
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)
    return lat


async def control(args, url: str) -> list[float]:
    """Latency (ms) of global lines on ONE shard without MQTT, same players and rate: what
    this machine does to any shard right now, relay or not."""
    players = [await join(url, f"c{i}", "c") for i in range(args.players * 2)]
    sent: dict[str, tuple[float, str, str]] = {}
    out: dict[str, list[float]] = {}
    for p in players:
        p.reader = asyncio.get_running_loop().create_task(p.read(sent, out))
    loop = asyncio.get_running_loop()
    start, interval = loop.time(), 60.0 / args.rate
    count = int(args.control_seconds * args.rate / 60.0)
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * interval - loop.time()))  # pacing the load
        sent[f"k{i}"] = (time.perf_counter(), "c", "global")
        await players[i % len(players)].ws.send(
            orjson.dumps({"t": "chat", "text": f"bench k{i} line", "channel": "global"}).decode())
    deadline = loop.time() + args.drain
    while len(out.get("global_local", [])) < count * (len(players) - 1) and loop.time() < deadline:
        await asyncio.sleep(0.05)  # polling counters other tasks fill
    for p in players:
        p.reader.cancel()
        await p.ws.close()
    return out.get("global_local", [])


async def in_process(args, mqtt: str, db: str) -> dict:
    """Both shards as `run_shard` in this event loop; the players and the broker as usual."""
    from server.app import run_shard
    from server.settings import Settings

    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for name in "ab":
            s = Settings(host="127.0.0.1", port=0, shard=name, db=db, mqtt=mqtt,
                         chat_lines=args.chat_lines)
            urls[name] = (await stack.enter_async_context(run_shard(s))).ws_url
        return await run(args, urls)


def _run_loop(coro):
    """Run on uvloop where available, as `python -m server` does."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Entry point: start broker and shards, run, print the table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="lines a minute (all shards)")
    parser.add_argument("--players", type=int, default=50, help="players on each shard")
    parser.add_argument("--mqtt", help="an existing broker (default: start mosquitto)")
    parser.add_argument("--db", help="shared database URL (default: a temporary SQLite file)")
    parser.add_argument("--drain", type=float, default=10.0,
                        help="seconds to wait for the last deliveries before counting the rest lost")
    parser.add_argument("--control-seconds", type=float, default=20.0,
                        help="also run one shard WITHOUT MQTT for this long as a control (0: skip)")
    parser.add_argument("--in-process", action="store_true",
                        help="run both shards in this process's event loop (still through the real "
                             "broker): what the relay adds, without inter-process scheduling")
    parser.add_argument("--chat-lines", type=float, default=5.0,
                        help="the shards' chat limit per player per 10 s (raise it to test rate, not fan-out)")
    args = parser.parse_args(argv)
    if args.rate * 10 / 60 > args.players * 2 * args.chat_lines:
        parser.error("rate too high for the chat limit: add --players")
    with tempfile.TemporaryDirectory(prefix="crossshard-") as tmp:
        broker = None if args.mqtt else Broker(Path(tmp) / "broker")
        shards = []
        try:
            if broker:
                broker.start()
            url = args.mqtt or broker.url
            db = args.db or f"sqlite:///{tmp}/world.db"
            hop = _run_loop(broker_baseline(url))
            ctl: list[float] = []
            if args.control_seconds > 0:
                alone = ShardProcess("c", cwd=Path(tmp), mqtt=None, db=f"sqlite:///{tmp}/control.db",
                                     extra=("--chat-lines", str(args.chat_lines)))
                try:
                    ctl = _run_loop(control(args, alone.ws))
                finally:
                    alone.stop()
            if args.in_process:
                result = _run_loop(in_process(args, url, db))
            else:
                extra = ("--chat-lines", str(args.chat_lines))
                shards = [ShardProcess(s, cwd=Path(tmp), mqtt=url, db=db, extra=extra) for s in "ab"]
                result = _run_loop(run(args, {s.name: s.ws for s in shards}))
        finally:
            for s in shards:
                s.stop()
            if broker:
                broker.close()
    result["broker_hop_ms"] = {"p50": pct(hop, 50), "p99": pct(hop, 99), "max": max(hop), "n": len(hop)}
    if ctl:
        result["control_no_mqtt_ms"] = {"p50": pct(ctl, 50), "p99": pct(ctl, 99), "max": max(ctl), "n": len(ctl)}
    print(f"{'path':<16}{'n':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for key in ("broker_hop", "control_no_mqtt", "global_cross", "global_local", "private_cross"):
        r = result.get(f"{key}_ms")
        if r:
            print(f"{key:<16}{r['n']:>8}{r['p50']:>9.1f}{r['p99']:>9.1f}{r['max']:>9.1f}")
    cross = [result[k]["p99"] for k in ("global_cross_ms", "private_cross_ms") if k in result]
    ok = bool(cross) and max(cross) <= TARGET_P99_MS
    print(f"target p99 <= {TARGET_P99_MS:g} ms across shards: {'met' if ok else 'MISSED'}; "
          f"delivered global {result['global_delivered']}/{result['global_expected']}, "
          f"private {result['private_delivered']}/{result['private_expected']}")
    if result["errors"]:
        print(f"errors and closes seen by the players: {result['errors']}")
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
