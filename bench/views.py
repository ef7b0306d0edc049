"""Micro-benchmark: World.tick() view diffs vs the brute-force oracle on one core.

1,000 moving observers among 10,000 entities (players, NPCs, objects) on 1 km^2 with a 100 m
area of interest. Prints a table and a final JSON line. Run:

    .venv/bin/python bench/views.py            # full size
    .venv/bin/python bench/views.py --quick    # small smoke run
    .venv/bin/python bench/views.py --idle     # memory: 10,000 silent players joining 1 km^2
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import sys
import time

# bench/ holds no packages: put the repository first so imports find the project's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One core: keep numpy's helper libraries from spreading over more.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

from worldstate import Entity, Pose, World, WorldConfig  # noqa: E402
from worldstate.oracle import Oracle  # noqa: E402

TICK_MS = 50  # 20 Hz


def build(args, rng: random.Random) -> tuple[World, list[str], list[str], dict[str, float]]:
    """A world of `args.entities` entities; the first `args.observers` are walking players."""
    size = args.size
    cfg = WorldConfig(name="bench", bounds=(0.0, 0.0, size, size), spawn=(size / 2, 0.0, size / 2),
                      aoi=args.aoi, shout_range=args.aoi * 2, speed=args.speed)
    world = World(cfg, skin=args.skin)
    players, walkers = [], []
    heading: dict[str, float] = {}
    n_npc = (args.entities - args.observers) // 5
    for i in range(args.entities):
        x, z = rng.uniform(0, size), rng.uniform(0, size)
        if i < args.observers:
            eid, kind = f"p:{i}", "player"
        elif i < args.observers + n_npc:
            eid, kind = f"n:{i}", "npc"
        else:
            eid, kind = f"o:{i}", "object"
        world.add(Entity(eid, kind, eid, Pose(x, 0.0, z, rng.uniform(-math.pi, math.pi))))
        if kind == "player":
            players.append(eid)
        if kind != "object":
            walkers.append(eid)
            heading[eid] = rng.uniform(-math.pi, math.pi)
    for p in players:
        world.watch(p)
    return world, players, walkers, heading


def step(world: World, rng: random.Random, players, npcs, heading, now_ms: int, speed: float) -> None:
    """Every player walks (a wandering heading at up to the speed limit); a tenth of NPCs shuffle."""
    dist = speed * TICK_MS / 1000.0
    movers = players + rng.sample(npcs, len(npcs) // 10)
    for eid in movers:
        h = heading[eid] + rng.uniform(-0.3, 0.3)
        heading[eid] = h
        p = world.get(eid).pose
        world.move(eid, Pose(p.x + math.cos(h) * dist, p.y, p.z + math.sin(h) * dist, h), now_ms)


def resident_kb() -> int:
    """This process's resident set (VmRSS) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def idle(args) -> int:
    """Players join as the shard admits them (add, watch, reset_view; `--join-per-tick` per
    tick) and then stand still: the world's resident memory per player, the joins' CPU and
    an idle tick's CPU. The connection layer's share is bench/load.py's idle scenario."""
    rng = random.Random(args.seed)
    size, n = args.size, args.observers
    cfg = WorldConfig(name="bench", bounds=(0.0, 0.0, size, size), spawn=(size / 2, 0.0, size / 2),
                      aoi=args.aoi, shout_range=args.aoi * 2, speed=args.speed)
    world = World(cfg, skin=args.skin)
    gc.collect()
    before = resident_kb()
    c0 = time.process_time()
    worst = 0.0
    for i in range(n):
        # Uniform over a disc of radius size/2, as the load bench's spawn.
        r, a = size / 2 * math.sqrt(rng.random()), rng.uniform(-math.pi, math.pi)
        pid = f"p:{i}"
        world.add(Entity(pid, "player", pid, Pose(size / 2 + r * math.cos(a), 0.0, size / 2 + r * math.sin(a))))
        world.watch(pid)
        world.reset_view(pid)
        if (i + 1) % args.join_per_tick == 0 or i == n - 1:
            t = time.process_time()
            world.tick()
            worst = max(worst, time.process_time() - t)
    for _ in range(args.warmup):  # let the last joiners settle (a band rebuild)
        world.tick()
    join_cpu = time.process_time() - c0
    gc.collect()
    after = resident_kb()
    c1 = time.process_time()
    for _ in range(args.ticks):
        world.tick()
    idle_ms = (time.process_time() - c1) / args.ticks * 1000.0
    view = statistics.fmean(len(world.view_ids(f"p:{i}")) for i in range(0, n, max(1, n // 500)))
    kb = (after - before) / n
    rows = [
        ("players (all watching), world", f"{n}, {size:.0f} m square, aoi {args.aoi:.0f} m"),
        ("mean view size", f"{view:.0f}"),
        ("resident before / after", f"{before} / {after} KiB"),
        ("resident per player", f"{kb:.2f} KiB"),
        ("joins CPU (all ticks included)", f"{join_cpu:.1f} s; worst tick {worst * 1000:.0f} ms"),
        ("idle tick CPU", f"{idle_ms:.3f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(json.dumps({"bench": "worldstate-idle", "players": n, "size": size, "aoi": args.aoi,
                      "mean_view": round(view, 1), "rss_before_kb": before, "rss_after_kb": after,
                      "kb_per_player": round(kb, 2), "join_cpu_s": round(join_cpu, 2),
                      "worst_tick_ms": round(worst * 1000, 1), "idle_tick_ms": round(idle_ms, 4)}))
    return 0


def main(argv=None) -> int:
    """Run the benchmark; print the table and a JSON line; exit 1 if any diff differs from the oracle."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--observers", type=int, default=1000)
    ap.add_argument("--entities", type=int, default=10_000)
    ap.add_argument("--size", type=float, default=1000.0, help="world side in metres")
    ap.add_argument("--aoi", type=float, default=100.0)
    ap.add_argument("--speed", type=float, default=5.0, help="walking speed, m/s")
    ap.add_argument("--warmup", type=int, default=40, help="ticks before measuring")
    ap.add_argument("--ticks", type=int, default=100, help="measured ticks")
    ap.add_argument("--oracle-ticks", type=int, default=3, help="ticks also computed by the oracle")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skin", type=float, default=None, help="band skin in metres (default aoi/10)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() after building the world, as a long-running shard may")
    ap.add_argument("--quick", action="store_true", help="a small, fast smoke run")
    ap.add_argument("--idle", action="store_true",
                    help="memory of silent players instead: --observers players (default 10,000) join "
                         "the world and stand still")
    ap.add_argument("--join-per-tick", type=int, default=50,
                    help="--idle: players admitted per tick (50 = the load bench's 1,000/s at 20 Hz)")
    args = ap.parse_args(argv)
    if args.idle:
        if args.observers == ap.get_default("observers"):
            args.observers = 10_000
        return idle(args)
    if args.quick:
        args.observers, args.entities, args.warmup, args.ticks, args.oracle_ticks = 100, 1000, 5, 10, 2
    rng = random.Random(args.seed)
    world, players, walkers, heading = build(args, rng)
    npcs = [w for w in walkers if w.startswith("n:")]
    now = 1_000_000
    world.tick()  # the initial full views are not part of a steady tick
    gc.collect()
    if args.gc_freeze:
        gc.freeze()
    times, cpu_times, move_times, sizes = [], [], [], []
    oracle_times, oracle_cpu_times = [], []
    oracle = Oracle(args.aoi)
    oracle_at = set(range(args.warmup, args.warmup + args.ticks, max(1, args.ticks // max(1, args.oracle_ticks))))
    oracle_at = set(sorted(oracle_at)[: args.oracle_ticks])
    mismatches = 0
    for t in range(args.warmup + args.ticks):
        if t in oracle_at:
            # Tell the oracle what each observer knows now, before this tick's moves.
            for p in players:
                oracle.reset(p, [world.get(i) for i in world.view_ids(p)])
        now += TICK_MS
        t0 = time.perf_counter()
        step(world, rng, players, npcs, heading, now, args.speed)
        t1 = time.perf_counter()
        c1 = time.process_time()
        diffs = world.tick()
        c2 = time.process_time()
        t2 = time.perf_counter()
        if t >= args.warmup:
            move_times.append(t1 - t0)
            times.append(t2 - t1)
            cpu_times.append(c2 - c1)
            sizes.append(sum(len(d.enter) + len(d.upd) + len(d.leave) for d in diffs.values()))
        if t in oracle_at:
            t3, c3 = time.perf_counter(), time.process_time()
            expected = oracle.tick(world.entities(), players)
            oracle_times.append(time.perf_counter() - t3)
            oracle_cpu_times.append(time.process_time() - c3)
            for p in players:
                got, exp = diffs.get(p), expected.get(p)
                g = (({e.id for e in got.enter}, {e.id for e in got.upd}, set(got.leave)) if got
                     else (set(), set(), set()))
                x = (exp.enter, exp.upd, exp.leave) if exp else (set(), set(), set())
                mismatches += g != x
            # Drop the oracle's bookkeeping (~300k objects) so it does not burden the
            # collector during the world's later ticks.
            del expected
            oracle.told.clear()
            gc.collect()
    ms = lambda v: v * 1000.0  # noqa: E731
    pct = lambda v, q: ms(sorted(v)[int(q * (len(v) - 1))])  # noqa: E731
    tick_med, cpu_med = ms(statistics.median(times)), ms(statistics.median(cpu_times))
    oracle_med = ms(statistics.median(oracle_times)) if oracle_times else float("nan")
    oracle_cpu = ms(statistics.median(oracle_cpu_times)) if oracle_cpu_times else float("nan")
    avg_view = statistics.fmean(len(world.view_ids(p)) for p in players)
    rows = [
        ("observers / entities", f"{len(players)} / {len(world)}"),
        ("world, aoi", f"{args.size:.0f} m square, {args.aoi:.0f} m"),
        ("mean view size", f"{avg_view:.0f}"),
        ("diff items per tick (median)", f"{statistics.median(sizes):.0f}"),
        ("World.tick CPU median / mean", f"{cpu_med:.2f} ms / {ms(statistics.fmean(cpu_times)):.2f} ms"),
        ("World.tick CPU p95 / max", f"{pct(cpu_times, 0.95):.2f} ms / {ms(max(cpu_times)):.2f} ms"),
        ("World.tick wall median / max", f"{tick_med:.2f} ms / {ms(max(times)):.2f} ms"),
        ("moves applied per tick (wall median)", f"{ms(statistics.median(move_times)):.2f} ms"),
        ("oracle tick CPU median", f"{oracle_cpu:.1f} ms ({len(oracle_times)} ticks)"),
        ("speed-up vs oracle (CPU median)", f"{oracle_cpu / cpu_med:.0f}x"),
        ("diffs differing from oracle", str(mismatches)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(json.dumps({
        "bench": "worldstate", "observers": len(players), "entities": len(world), "aoi": args.aoi,
        "ticks": len(times), "tick_cpu_ms_median": round(cpu_med, 3),
        "tick_cpu_ms_mean": round(ms(statistics.fmean(cpu_times)), 3),
        "tick_cpu_ms_p95": round(pct(cpu_times, 0.95), 3), "tick_cpu_ms_max": round(ms(max(cpu_times)), 3),
        "tick_wall_ms_median": round(tick_med, 3), "tick_wall_ms_max": round(ms(max(times)), 3),
        "move_wall_ms_median": round(ms(statistics.median(move_times)), 3),
        "oracle_cpu_ms_median": round(oracle_cpu, 1), "oracle_wall_ms_median": round(oracle_med, 1),
        "speedup_cpu": round(oracle_cpu / cpu_med, 1), "mismatches": mismatches,
    }))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
