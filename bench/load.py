"""The shard's load benchmark (issue 2): spread world, crowd, idle; the naive server as baseline.

    .venv/bin/python bench/load.py --quick            # 100/50/500 bots, 5 s each: a smoke run
    .venv/bin/python bench/load.py                    # the targets: 1000 spread, 500 crowd, 10k idle

Each scenario starts a fresh shard (`python -m server`) as a subprocess pinned to one core,
runs the bots (`clients.bots`) in this process pinned to another, samples the shard's CPU
from /proc/PID/stat over the bots' steady window (the JSON rows also give `shard_sys_pct`, the
kernel's part of it), and for spread and crowd repeats the run
against `bench/naive_server.py` so the ratios come from the same machine in the same minute.
Idle measures the shard's VmRSS per connected player beyond its warmed-up empty footprint.
Prints a table, the targets met or missed, and a final JSON line. Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.bots import BotSettings, run_bots  # noqa: E402  (after the path fix above)

WS_URL = re.compile(r"WebSocket (ws://[^\s;]+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = {"spread": {"ack_p99_ms": 100.0, "shard_cpu_pct": 50.0},
           "crowd": {"ack_p99_ms": 80.0},
           "idle": {"kb_per_player": 5.0}}


@dataclass(frozen=True)
class Plan:
    """Sizes and placement of one benchmark run; validated on creation."""

    spread_bots: int = 1000
    crowd_bots: int = 500
    idle_bots: int = 10000
    duration: float = 20.0
    world_m: float = 1000.0
    idle_world_m: float | None = None  # None: the same world as the other scenarios
    crowd_m: float = 200.0
    aoi: float = 100.0
    speed: float = 6.0
    tick_hz: float = 20.0
    rate: float = 10.0
    ramp: float = 100.0
    idle_ramp: float = 1000.0
    observers: int = 100
    shard_core: int | None = 0
    bots_core: int | None = 1
    naive: bool = True
    scenarios: tuple[str, ...] = ("spread", "crowd", "idle")

    def __post_init__(self) -> None:
        for name in ("spread_bots", "crowd_bots", "idle_bots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.duration <= 0 or self.world_m <= 0 or not 0 < self.crowd_m <= self.world_m:
            raise ValueError("duration and sizes must be positive, crowd_m <= world_m")
        unknown = set(self.scenarios) - {"spread", "crowd", "idle"}
        if unknown:
            raise ValueError(f"unknown scenarios: {sorted(unknown)}")


def world_toml(plan: Plan, spawn_radius: float) -> str:
    """A square world of `world_m` metres with its spawn disc at the centre."""
    c = plan.world_m / 2
    return (f'[world]\nname = "Bench"\nbounds = [0.0, 0.0, {plan.world_m}, {plan.world_m}]\n'
            f"spawn = [{c}, 0.0, {c}]\nspawn_radius = {spawn_radius}\naoi = {plan.aoi}\n"
            f"shout_range = {2 * plan.aoi}\ntalk_range = 8.0\nspeed = {plan.speed}\n")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/PID/stat."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def server_process(kind: str, plan: Plan, workdir: Path, *, spawn_radius: float, max_players: int):
    """Start the real shard or the naive one pinned to `shard_core`; yield (pid, ws_url)."""
    if kind == "shard":
        world = workdir / "world.toml"
        world.write_text(world_toml(plan, spawn_radius))
        db = workdir / f"bench-{time.monotonic_ns()}.db"
        # INFO: the ready line is logged at INFO; the shard logs nothing per player at INFO.
        cmd = [sys.executable, "-m", "server", "--port", "0", "--world", str(world),
               "--db", f"sqlite:///{db}", "--log-level", "info", "--tick-hz", str(plan.tick_hz),
               "--max-players", str(max_players), "--npc-model", "none"]  # bench worlds have no NPCs
    else:
        c = plan.world_m / 2
        cmd = [sys.executable, str(ROOT / "bench" / "naive_server.py"), "--port", "0",
               "--tick-hz", str(plan.tick_hz), "--aoi", str(plan.aoi), "--speed", str(plan.speed),
               "--bounds", f"0,0,{plan.world_m},{plan.world_m}", "--spawn", f"{c},{c}",
               "--spawn-radius", str(spawn_radius)]
    core = plan.shard_core

    def child_setup() -> None:
        _die_with_parent()
        if core is not None:
            os.sched_setaffinity(0, {core})

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=child_setup)
    try:
        url = _wait_ready(proc, timeout=60.0)
        yield proc.pid, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the benchmark dies, so no server outlives a killed run."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_ready(proc: subprocess.Popen, timeout: float) -> str:
    """Read the server's output until its ready line; return the WebSocket URL in it."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = WS_URL.search(line)
        if m:
            # Keep draining its output so a chatty server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return m.group(1)
    raise RuntimeError("server did not print its ready line:\n" + "".join(seen[-20:]))


def run_swarm(settings: BotSettings, pid: int) -> tuple[dict, float | None, float | None]:
    """Run the bots to completion; return their report, the server's CPU % in the steady
    window, and the kernel's part of it (system CPU %)."""
    marks: dict[str, tuple[float, float, float]] = {}

    def on_phase(name: str, t: float) -> None:
        marks[name] = (time.monotonic(), *cpu_split(pid))

    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    report = runner(run_bots(settings, on_phase=on_phase))
    cpu = sys_cpu = None
    if "steady_start" in marks and "steady_end" in marks:
        (t0, u0, s0), (t1, u1, s1) = marks["steady_start"], marks["steady_end"]
        span = max(t1 - t0, 1e-9)
        cpu = round(100.0 * (u1 + s1 - u0 - s0) / span, 1)
        sys_cpu = round(100.0 * (s1 - s0) / span, 1)
    return report, cpu, sys_cpu


def bot_settings(plan: Plan, url: str, bots: int, scenario: str, area) -> BotSettings:
    """The bots' settings for one run."""
    return BotSettings(url=url, bots=bots, duration=plan.duration, scenario=scenario, rate=plan.rate,
                       area=area, ramp=plan.ramp, observers=plan.observers, progress=sys.stderr.isatty(),
                       connect_timeout=20.0)


def moving_run(plan: Plan, name: str, workdir: Path) -> list[dict]:
    """Spread or crowd: the shard, then the naive server, each driven by the same bots."""
    bots = plan.spread_bots if name == "spread" else plan.crowd_bots
    if name == "spread":
        area, radius = (0.0, 0.0, plan.world_m, plan.world_m), plan.world_m / 2
    else:
        c, h = plan.world_m / 2, plan.crowd_m / 2
        area, radius = (c - h, c - h, c + h, c + h), h
    # In a crowd every observer checks nearly every pose of everyone: fewer observers keep the
    # bots' own cost (and so their loop lag) down while still sampling hundreds of views a second.
    observers = plan.observers if name == "spread" else max(1, plan.observers // 4)
    rows = []
    for kind in ("shard", "naive") if plan.naive else ("shard",):
        _log(f"{name}: {bots} bots against the {kind} server")
        with server_process(kind, plan, workdir, spawn_radius=radius, max_players=bots + 100) as (pid, url):
            settings = replace(bot_settings(plan, url, bots, "move", area), observers=observers)
            report, cpu, sys_cpu = run_swarm(settings, pid)
        rows.append(_row(name, kind, report, shard_cpu_pct=cpu, shard_sys_pct=sys_cpu))
    return rows


def idle_run(plan: Plan, workdir: Path) -> list[dict]:
    """Idle: memory per silent connected player beyond the warmed-up empty footprint."""
    n = plan.idle_bots
    if plan.idle_world_m is not None:
        plan = replace(plan, world_m=plan.idle_world_m)
    radius = plan.world_m / 2
    _log(f"idle: {n} silent bots against the shard ({plan.world_m:g} m world)")
    with server_process("shard", plan, workdir, spawn_radius=radius, max_players=n + 100) as (pid, url):
        # Warm up: the first connections import and allocate what every later one reuses.
        warm = replace(bot_settings(plan, url, 20, "idle", None), duration=0.5, warmup=0.0,
                       name_prefix="warm", progress=False)
        run_swarm(warm, pid)
        empty_kb = rss_kb(pid)
        marks = {}
        settings = replace(bot_settings(plan, url, n, "idle", None), ramp=plan.idle_ramp,
                           duration=min(plan.duration, 5.0), observers=min(plan.observers, 20))

        def on_phase(name: str, t: float) -> None:
            marks[name] = (rss_kb(pid), time.monotonic(), cpu_seconds(pid))

        try:
            import uvloop
            report = uvloop.run(run_bots(settings, on_phase=on_phase))
        except ImportError:
            report = asyncio.run(run_bots(settings, on_phase=on_phase))
    full_kb = marks["steady_start"][0]
    (_, t0, c0), (_, t1, c1) = marks["steady_start"], marks["steady_end"]
    held = report["connections"]["welcomed"] or 1
    row = _row("idle", "shard", report, shard_cpu_pct=round(100 * (c1 - c0) / max(t1 - t0, 1e-9), 1))
    row.update(empty_rss_kb=empty_kb, full_rss_kb=full_kb,
               kb_per_player=round((full_kb - empty_kb) / held, 2))
    return [row]


def _row(scenario: str, server: str, r: dict, *, shard_cpu_pct, shard_sys_pct=None) -> dict:
    """One result row: the headline numbers of a bots report plus the server's CPU."""
    mu, cp = r.get("missed_updates") or {}, r.get("completeness") or {}
    return {"scenario": scenario, "server": server, "bots": r["bots"], "report": r,
            "made": r["connections"]["made"], "failed": r["connections"]["failed"],
            "close_codes": r["connections"]["close_codes"],
            "ack_p50_ms": r["ack_ms"]["p50"], "ack_p99_ms": r["ack_ms"]["p99"],
            "stale_p99_ms": r["staleness_ms"]["p99"], "missed": mu.get("missed"),
            "expected": mu.get("expected"), "completeness": cp.get("ratio"),
            "msgs_in_per_s": r["traffic"]["msgs_in_per_s"], "bytes_in_per_s": r["traffic"]["bytes_in_per_s"],
            "shard_cpu_pct": shard_cpu_pct, "shard_sys_pct": shard_sys_pct,
            "bots_cpu_pct": r["bots_cpu_pct"],
            "bots_lag_p99_ms": r["loop_lag_ms"]["p99"], "bots_bottleneck": r["bottleneck"]}


def judge(rows: list[dict]) -> tuple[dict, list[str]]:
    """Ratios against the naive baseline and each target met or missed."""
    by = {(r["scenario"], r["server"]): r for r in rows}
    ratios, verdicts = {}, []
    for sc in ("spread", "crowd"):
        s, n = by.get((sc, "shard")), by.get((sc, "naive"))
        if s and n and s["shard_cpu_pct"] and n["shard_cpu_pct"]:
            ratios[f"{sc}_cpu_shard_over_naive"] = round(s["shard_cpu_pct"] / n["shard_cpu_pct"], 3)
        if s and n and s["ack_p99_ms"] and n["ack_p99_ms"]:
            ratios[f"{sc}_ack_p99_shard_over_naive"] = round(s["ack_p99_ms"] / n["ack_p99_ms"], 3)
    s = by.get(("spread", "shard"))
    if s:
        ok = (s["ack_p99_ms"] is not None and s["ack_p99_ms"] <= 100 and s["missed"] == 0
              and s["completeness"] == 1.0 and (s["shard_cpu_pct"] or 100) < 50 and s["failed"] == 0)
        verdicts.append(f"spread {s['bots']} bots: ack p99 {s['ack_p99_ms']} ms (<=100), missed {s['missed']} (0),"
                        f" completeness {s['completeness']} (1.0), shard CPU {s['shard_cpu_pct']}% (<50):"
                        f" {'MET' if ok else 'MISSED'}")
    s, n = by.get(("crowd", "shard")), by.get(("crowd", "naive"))
    if s:
        cpu_ok = n is None or (s["shard_cpu_pct"] or 0) <= (n["shard_cpu_pct"] or 0)
        ok = s["ack_p99_ms"] is not None and s["ack_p99_ms"] <= 80 and cpu_ok and s["failed"] == 0
        verdicts.append(f"crowd {s['bots']} bots: ack p99 {s['ack_p99_ms']} ms (<=80), shard CPU "
                        f"{s['shard_cpu_pct']}% vs naive {n['shard_cpu_pct'] if n else '-'}%:"
                        f" {'MET' if ok else 'MISSED'}")
    s = by.get(("idle", "shard"))
    if s:
        ok = s["kb_per_player"] <= 5.0 and s["failed"] == 0
        verdicts.append(f"idle {s['bots']} players: {s['kb_per_player']} KB each beyond the empty "
                        f"footprint (<=5): {'MET' if ok else 'MISSED'}")
    if any(r["bots_bottleneck"] for r in rows if r["scenario"] != "idle"):
        verdicts.append("BOTS ARE THE BOTTLENECK in at least one run (see bots_lag_p99_ms): "
                        "its latencies overstate the server's")
    return ratios, verdicts


def format_rows(rows: list[dict]) -> str:
    """The results as a fixed-width table."""
    cols = [("scenario", 8), ("server", 6), ("bots", 6), ("made", 6), ("failed", 6), ("ack_p50_ms", 10),
            ("ack_p99_ms", 10), ("stale_p99_ms", 12), ("missed", 7), ("completeness", 12),
            ("shard_cpu_pct", 13), ("bots_cpu_pct", 12), ("bots_lag_p99_ms", 15), ("kb_per_player", 13)]
    head = " ".join(n.rjust(w) for n, w in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(" ".join(str(r.get(n) if r.get(n) is not None else "-").rjust(w) for n, w in cols))
    return "\n".join(lines)


def _log(msg: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pin_self(core: int | None) -> None:
    """Pin this process (the bots) to one core, if the machine has it."""
    if core is not None:
        os.sched_setaffinity(0, {core})


def parse_plan(argv: list[str] | None) -> tuple[Plan, str | None]:
    """The command line into a Plan (and the JSON output path)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 spread, 50 crowd, 500 idle bots, 5 s each")
    p.add_argument("--scenarios", default="spread,crowd,idle", help="comma-separated, in this order")
    p.add_argument("--spread-bots", type=int, help="bots over the whole world (default 1000)")
    p.add_argument("--crowd-bots", type=int, help="bots in the 200 m square (default 500)")
    p.add_argument("--idle-bots", type=int, help="silent connected players (default 10000)")
    p.add_argument("--duration", type=float, help="steady seconds per run (default 20; idle 5 at most)")
    p.add_argument("--observers", type=int, help="observer bots in spread (a quarter in crowd; default 100)")
    p.add_argument("--idle-world-m", type=float,
                   help="side of the idle scenario's square world (default: 1000, as the others)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive baseline runs")
    p.add_argument("--no-pin", action="store_true", help="do not pin the shard and the bots to cores")
    p.add_argument("--json", dest="json_path", help="also write the final JSON here")
    a = p.parse_args(argv)
    kw: dict = {"scenarios": tuple(s for s in a.scenarios.split(",") if s), "naive": not a.no_naive}
    if a.quick:
        kw.update(spread_bots=100, crowd_bots=50, idle_bots=500, duration=5.0)
    for k in ("spread_bots", "crowd_bots", "idle_bots", "duration", "observers", "idle_world_m"):
        if getattr(a, k) is not None:
            kw[k] = getattr(a, k)
    cpus = sorted(os.sched_getaffinity(0))
    if a.no_pin or len(cpus) < 2:
        kw.update(shard_core=None, bots_core=None)
    else:
        kw.update(shard_core=cpus[0], bots_core=cpus[1])
    return Plan(**kw), a.json_path


def main(argv: list[str] | None = None) -> int:
    """Run the planned scenarios; print the table, the verdicts and a final JSON line."""
    plan, json_path = parse_plan(argv)
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so servers are stopped in `finally`.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(plan.idle_bots, plan.spread_bots, plan.crowd_bots) + 1024
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    pin_self(plan.bots_core)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="worldsmith-load-") as tmp:
        for name in plan.scenarios:
            rows += idle_run(plan, Path(tmp)) if name == "idle" else moving_run(plan, name, Path(tmp))
    ratios, verdicts = judge(rows)
    print(format_rows(rows))
    for k, v in ratios.items():
        print(f"{k}: {v}")
    for v in verdicts:
        print(v)
    result = {"machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
                          "shard_core": plan.shard_core, "bots_core": plan.bots_core},
              "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__}, "rows": rows,
              "ratios": ratios, "verdicts": verdicts}
    if json_path:  # the file keeps each run's whole bots report; the printed line only the rows
        Path(json_path).write_text(json.dumps(result, indent=1))
    for r in rows:
        r.pop("report")
    print(json.dumps(result, separators=(",", ":")))
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
