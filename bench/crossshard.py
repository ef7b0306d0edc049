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

Every shard is measured in its steady state: the bench waits until each shard's NPC engine
has loaded (the shards run with their default in-process NPC model unless `--npc-model
none`). While a model loads, its thread stalls the shard's event loop for up to a second
at a time (see docs/benchmarks.md); `--during-npc-load` measures that window on purpose.
Each delivery is also split at the shard's stamp (`st`, the wall clock when the origin
shard handled the line): "in" is send -> `st`, the rest is the way out. The bench's own
event-loop lag, GC pauses and CPU, and the shards' CPU, are printed beside the figures, so
a slow bench or a busy machine shows as such.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import itertools
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.broker import Broker  # noqa: E402  (after the path fix above)
from tests.scaleout.shards import ShardProcess  # noqa: E402

TARGET_P99_MS = 50.0
NPC_READY = r"NPC engine (ready|failed to load)"  # npc.service's log line either way
NPC_READY_TIMEOUT_S = 300.0  # a cold model load on a loaded 2-core machine takes tens of seconds
LAG_PROBE_S = 0.005  # the bench's loop-lag probe sleeps this long and records the overshoot


class Probe:
    """What the bench itself costs while it measures: its event-loop lag (how late a short
    sleep wakes), its GC pauses, its CPU, and the CPU of the shard processes."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.lag_ms: list[float] = []
        self.gc_ms: list[float] = []
        self._gc_start = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Freeze what setup left (no GC pass rescans it) and start the probes."""
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self._on_gc)
        self._cpu0 = (_own_cpu(), [_proc_cpu(p) for p in self.pids], time.perf_counter())
        self._task = asyncio.get_running_loop().create_task(self._lag())

    def stop(self) -> dict:
        """Stop the probes and return their figures."""
        self._task.cancel()
        gc.callbacks.remove(self._on_gc)
        gc.unfreeze()
        own0, shards0, t0 = self._cpu0
        wall = time.perf_counter() - t0
        return {"bench_cpu": (_own_cpu() - own0) / wall,
                "shard_cpu": [(_proc_cpu(p) - c) / wall for p, c in zip(self.pids, shards0)],
                "bench_lag_ms": _summary(self.lag_ms),
                "bench_gc_ms": {"n": len(self.gc_ms), "max": max(self.gc_ms, default=0.0),
                                "total": sum(self.gc_ms)}}

    async def _lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_PROBE_S)  # the probe itself: how late does it wake?
            self.lag_ms.append(max(0.0, loop.time() - t - LAG_PROBE_S) * 1000.0)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_ms.append((time.perf_counter() - self._gc_start) * 1000.0)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc (Linux); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(values: list[float]) -> dict:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": max(values, default=float("nan")),
            "n": len(values)}


class Sent(NamedTuple):
    """When (both clocks) and from where a bench line was sent."""

    t0: float      # time.perf_counter(): for the latency
    wall: float    # time.time(): to compare with the shard's `st` stamp
    shard: str
    channel: str


def sent_now(shard: str, channel: str) -> Sent:
    """Stamp a line as it goes out."""
    return Sent(time.perf_counter(), time.time(), shard, channel)


class Player:
    """One raw connection; records the receipt time of every bench line it gets."""

    def __init__(self, ws, pid: str, name: str, shard: str) -> None:
        self.ws, self.pid, self.name, self.shard = ws, pid, name, shard
        self.reader: asyncio.Task | None = None
        self.errors: collections.Counter[str] = collections.Counter()

    async def read(self, sent: dict[str, Sent], out: dict[str, list[float]]) -> None:
        """Record latency (ms) of each bench line, keyed global_cross/global_local/private_cross,
        and the part of it before the origin shard handled the line (keyed ..._in)."""
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
        where = "cross" if origin.shard != self.shard else "local"
        out.setdefault(f"{origin.channel}_{where}", []).append((now - origin.t0) * 1000.0)
        # The shard's stamp is whole wall-clock milliseconds: good to a millisecond.
        out.setdefault(f"{origin.channel}_{where}_in", []).append(msg["st"] - origin.wall * 1000.0)


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


async def run(args, urls: dict[str, str], pids: list[int]) -> dict:
    """Drive the load and return the measured figures (`pids`: the shard processes)."""
    players = {s: [await join(u, f"{s}{i}", s) for i in range(args.players)] for s, u in urls.items()}
    everyone = [p for group in players.values() for p in group]
    await wait_presence(everyone[0], len(everyone))
    sent: dict[str, Sent] = {}
    out: dict[str, list[float]] = {}
    for p in everyone:
        p.reader = asyncio.get_running_loop().create_task(p.read(sent, out))
    probe = Probe(pids)
    probe.start()
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
        sent[key] = sent_now(p.shard, channel)
        await p.ws.send(orjson.dumps(msg).decode())
    expected_global = (count + 1) // 2 * (len(everyone) - 1)

    def delivered() -> tuple[int, int]:
        return (len(out.get("global_cross", [])) + len(out.get("global_local", [])),
                len(out.get("private_cross", [])))

    # Let the last lines arrive (bounded: whatever is later than this counts as lost).
    deadline = loop.time() + args.drain
    while delivered() != (expected_global, count // 2) and loop.time() < deadline:
        await asyncio.sleep(0.05)  # polling counters other tasks fill
    cost = probe.stop()
    for p in everyone:
        p.reader.cancel()
        await p.ws.close()
    got_global = delivered()[0]
    errors = sum((p.errors for p in everyone), collections.Counter())
    return {"errors": dict(errors), "lines": count, "players": len(everyone), "rate_per_min": args.rate,
            "global_delivered": got_global, "global_expected": expected_global,
            "private_delivered": len(out.get("private_cross", [])), "private_expected": count // 2,
            **cost, **{f"{k}_ms": _summary(v) for k, v in sorted(out.items())}}


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


async def control(args, url: str, pid: int) -> dict:
    """Latency (ms) of global lines on ONE shard without MQTT, same players and rate: what
    this machine does to any shard right now, relay or not. Returns the figures by key
    (`control_no_mqtt`, `control_no_mqtt_in`) and the probe's."""
    players = [await join(url, f"c{i}", "c") for i in range(args.players * 2)]
    sent: dict[str, Sent] = {}
    out: dict[str, list[float]] = {}
    for p in players:
        p.reader = asyncio.get_running_loop().create_task(p.read(sent, out))
    probe = Probe([pid])
    probe.start()
    loop = asyncio.get_running_loop()
    start, interval = loop.time(), 60.0 / args.rate
    count = int(args.control_seconds * args.rate / 60.0)
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * interval - loop.time()))  # pacing the load
        sent[f"k{i}"] = sent_now("c", "global")
        await players[i % len(players)].ws.send(
            orjson.dumps({"t": "chat", "text": f"bench k{i} line", "channel": "global"}).decode())
    deadline = loop.time() + args.drain
    while len(out.get("global_local", [])) < count * (len(players) - 1) and loop.time() < deadline:
        await asyncio.sleep(0.05)  # polling counters other tasks fill
    cost = probe.stop()
    for p in players:
        p.reader.cancel()
        await p.ws.close()
    return {"control_no_mqtt": out.get("global_local", []), "control_no_mqtt_in": out.get("global_local_in", []),
            "cost": cost}


async def in_process(args, mqtt: str, db: str) -> dict:
    """Both shards as `run_shard` in this event loop; the players and the broker as usual."""
    from server.app import run_shard
    from server.settings import Settings

    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for name in "ab":
            s = Settings(host="127.0.0.1", port=0, shard=name, db=db, mqtt=mqtt,
                         chat_lines=args.chat_lines, npc_model=args.npc_model)
            shard = await stack.enter_async_context(run_shard(s))
            if args.npc_model != "none" and not args.during_npc_load:
                await asyncio.wait_for(shard.npcs.ready.wait(), NPC_READY_TIMEOUT_S)
            urls[name] = shard.ws_url
        return await run(args, urls, [])


def _steady(shards: list[ShardProcess], args) -> None:
    """Wait until every shard's NPC engine has loaded (or failed to), unless told not to."""
    if args.npc_model == "none" or args.during_npc_load:
        return
    for s in shards:
        s.wait_for(NPC_READY, NPC_READY_TIMEOUT_S)


def _print_table(result: dict) -> None:
    """The latency table ("in": the part before the origin shard handled the line) and
    what the bench and the shards cost meanwhile."""
    print(f"{'path':<16}{'n':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p99 in':>9}")
    for key in ("broker_hop", "control_no_mqtt", "global_cross", "global_local", "private_cross"):
        r = result.get(f"{key}_ms")
        if r:
            inn = result.get(f"{key}_in_ms", {}).get("p99", float("nan"))
            print(f"{key:<16}{r['n']:>8}{r['p50']:>9.1f}{r['p99']:>9.1f}{r['max']:>9.1f}{inn:>9.1f}")
    for label, cost in (("control", result.get("control_cost")), ("two shards", result)):
        if cost and "bench_lag_ms" in cost:
            lag, gcs = cost["bench_lag_ms"], cost["bench_gc_ms"]
            shards = " ".join(f"{c:.0%}" for c in cost["shard_cpu"]) or "in the bench"
            print(f"{label}: bench loop lag p50 {lag['p50']:.1f} / p99 {lag['p99']:.1f} / max "
                  f"{lag['max']:.1f} ms, bench GC {gcs['n']} passes (max {gcs['max']:.1f} ms), "
                  f"CPU: bench {cost['bench_cpu']:.0%}, shards {shards}")


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
    parser.add_argument("--npc-model", default="default",
                        help="the shards' --npc-model ('none': no NPC engine, nothing to wait for)")
    parser.add_argument("--during-npc-load", action="store_true",
                        help="start measuring as soon as the shards listen, while their NPC model "
                             "still loads (default: wait until it has loaded)")
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
            extra = ("--chat-lines", str(args.chat_lines), "--npc-model", args.npc_model)
            ctl: dict = {}
            if args.control_seconds > 0:
                alone = ShardProcess("c", cwd=Path(tmp), mqtt=None, db=f"sqlite:///{tmp}/control.db",
                                     extra=extra)
                try:
                    _steady([alone], args)
                    ctl = _run_loop(control(args, alone.ws, alone.proc.pid))
                finally:
                    alone.stop()
            if args.in_process:
                result = _run_loop(in_process(args, url, db))
            else:
                shards = [ShardProcess(s, cwd=Path(tmp), mqtt=url, db=db, extra=extra) for s in "ab"]
                _steady(shards, args)
                result = _run_loop(run(args, {s.name: s.ws for s in shards}, [s.proc.pid for s in shards]))
        finally:
            for s in shards:
                s.stop()
            if broker:
                broker.close()
    result["broker_hop_ms"] = _summary(hop)
    if ctl:
        result["control_no_mqtt_ms"] = _summary(ctl["control_no_mqtt"])
        result["control_no_mqtt_in_ms"] = _summary(ctl["control_no_mqtt_in"])
        result["control_cost"] = ctl["cost"]
    _print_table(result)
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
