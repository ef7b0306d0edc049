"""NPCs under load in the world (issue 4): bots talking to the village's NPCs while others move.

    .venv/bin/python bench/npc_world.py                      # 16 talkers, 200 movers, 60 s
    .venv/bin/python bench/npc_world.py --talkers 4 --movers 50 --duration 20   # a quick run
    .venv/bin/python bench/npc_world.py --workers process    # the engine in a child process, over a pipe
    .venv/bin/python bench/npc_world.py --workers remote     # ... a worker process through a local mosquitto
    .venv/bin/python bench/npc_world.py --repeat 3           # three runs, each figure's median

Starts `python -m server` on the bundled village with the default model in-process, waits
for the NPC engine, then runs two groups of clients at once:
- talkers (this process): each walks to one of the village's NPCs at the speed limit and
  asks it a question every `--line-every` seconds (random phase), measuring the time to
  the first `npc_token` (TTFT), the gaps between tokens (ITL), and that every `npc_start`
  ends with exactly one `npc_end`;
- movers (`python -m clients.bots --scenario move`, a subprocess): random walks at 10 Hz,
  reporting their own-move ack latency, so the cost of the engine to the shard shows.
Targets (issue 4): TTFT p50 <= 400 ms and p99 <= 1.5 s; ITL p99 <= 300 ms; every start
ends; movers' ack p99 <= 150 ms. Prints a table and a final JSON line. Loopback only.
The report also carries the shard's NPC figures from its /metrics, read just before it
stops: for the in-process engine its own TTFT and ITL (submit to first token on the engine
thread, and its step gaps, so the rest of the players' TTFT is the shard's delivery),
prompt tokens and prefix-cache hits per answer, and tokens per engine step.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/, whose worldstate.py would shadow the package

import orjson  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from worldstate.config import default_world  # noqa: E402

WS_URL = re.compile(r"WebSocket (ws://[^\s;]+)")
HTTP_URL = re.compile(r"open (http://\S+) in a browser")
SERIES = re.compile(r'^(npc_\w+?)(?:\{([^}]*)\})? (\S+)$')
QUESTIONS = ["Where is the inn?", "What do you sell?", "How do I get to the mill?", "Hello! Who are you?",
             "What news do you have?", "Where is the market?", "Have you seen anything strange?"]


def pct(xs: list[float], q: float) -> float | None:
    """The q-quantile of xs in milliseconds (nearest rank), or None when empty."""
    if not xs:
        return None
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))], 1)


class Talker:
    """One player who walks to an NPC and keeps asking it questions."""

    def __init__(self, name: str, npc: dict, speed: float, stats: dict) -> None:
        self.name, self.npc, self.speed, self.stats = name, npc, speed, stats
        self.seq = 0

    async def run(self, url: str, until: float, line_every: float, rng: random.Random) -> None:
        async with connect(url, subprotocols=["world.v1"], max_size=None) as ws:
            await ws.send(orjson.dumps({"t": "hello", "v": 1, "name": self.name}).decode())
            welcome = orjson.loads(await ws.recv())
            me = next(e for e in orjson.loads(await ws.recv())["enter"] if e["id"] == welcome["you"])
            await self._walk(ws, welcome["you"], (me["x"], me["z"]))
            reader = asyncio.create_task(self._read(ws))
            await asyncio.sleep(rng.uniform(0, line_every))
            try:
                while time.monotonic() < until:
                    if self.stats["open"].get(self.name) is None:
                        self._ask(ws, rng)
                        await ws.send(orjson.dumps(self.pending).decode())
                    else:
                        self.stats["skipped"] += 1
                    await asyncio.sleep(line_every)
                deadline = time.monotonic() + 30  # let answers in flight finish
                while self.stats["open"].get(self.name) is not None and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
            finally:
                reader.cancel()

    def _ask(self, ws, rng: random.Random) -> None:
        self.pending = {"t": "chat", "text": rng.choice(QUESTIONS), "to": f"n:{self.npc['id']}", "id": "q"}
        self.stats["open"][self.name] = {"sent": time.monotonic(), "reply": None, "last": None}
        self.stats["asked"] += 1

    async def _walk(self, ws, you: str, pos: tuple[float, float]) -> None:
        """Walk at 90% of the speed limit to a spot 2-4 m from the NPC, one move per 100 ms."""
        angle = random.uniform(0, 2 * math.pi)
        tx = self.npc["x"] + 3 * math.cos(angle)
        tz = self.npc["z"] + 3 * math.sin(angle)
        x, z = pos
        while math.hypot(tx - x, tz - z) > 0.05:
            step = min(0.09 * self.speed, math.hypot(tx - x, tz - z))
            d = math.hypot(tx - x, tz - z)
            x, z = x + (tx - x) / d * step, z + (tz - z) / d * step
            self.seq += 1
            await ws.send(orjson.dumps({"t": "move", "seq": self.seq, "x": x, "y": 0, "z": z, "yaw": 0}).decode())
            await asyncio.sleep(0.1)

    async def _read(self, ws) -> None:
        async for raw in ws:
            msg = orjson.loads(raw)
            t = msg.get("t")
            ask = self.stats["open"].get(self.name)
            now = time.monotonic()
            if t == "npc_start" and msg.get("re") == "q" and ask is not None:
                ask["reply"] = msg["reply"]
                self.stats["starts"] += 1
            elif ask is None or msg.get("reply") != ask["reply"]:
                if t == "error" and msg.get("re") == "q":
                    self.stats["errors"][msg["code"]] = self.stats["errors"].get(msg["code"], 0) + 1
                    self.stats["open"][self.name] = None
                continue
            elif t == "npc_token":
                if ask["last"] is None:
                    self.stats["ttft"].append(now - ask["sent"])
                else:
                    self.stats["itl"].append(now - ask["last"])
                ask["last"] = now
            elif t == "npc_end":
                self.stats["ends"][msg["reason"]] = self.stats["ends"].get(msg["reason"], 0) + 1
                self.stats["tokens"].append(msg["tokens"])
                self.stats["open"][self.name] = None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(proc: subprocess.Popen) -> None:
    """Keep reading a process's output so its logging never blocks on a full pipe."""
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> None:
    """Read a process's output until a line containing `needle` (RuntimeError otherwise)."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if needle in line:
            drain(proc)
            return
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"no {needle!r} from {proc.args[:3]}")


def start_remote(args, tmp: str) -> tuple[list[subprocess.Popen], str]:
    """A mosquitto on a free loopback port and one NPC worker process on it."""
    port = free_port()
    conf = Path(tmp) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"mqtt://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDSMITH_")}
    model = [] if args.model == "default" else ["--model", args.model]
    worker = subprocess.Popen([sys.executable, "-m", "npc.worker", "--mqtt", url, *model,
                               "--threads", str(args.npc_threads), "--max-running", "16",
                               "--max-waiting", "16", "--max-model-len", "1536"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    wait_for_line(worker, "ready", 300)
    return [worker, broker], url


def start_shard(args, db: str, mqtt: str | None = None) -> tuple[subprocess.Popen, str, str]:
    """The shard as a subprocess; returns it, its WebSocket and HTTP URLs once NPCs can answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDSMITH_")}
    cmd = [sys.executable, "-m", "server", "--port", "0", "--db", db, "--npc-model", args.model,
           "--npc-threads", str(args.npc_threads), "--log-level", "INFO"]
    if mqtt:
        cmd += ["--mqtt", mqtt, "--npc-workers", "remote"]
    elif args.workers == "process":
        cmd += ["--npc-workers", "process"]
    if args.switch_interval_ms:
        cmd += ["--npc-switch-interval-ms", str(args.switch_interval_ms)]
    if args.prefill_tokens is not None:
        cmd += ["--npc-prefill-tokens", str(args.prefill_tokens)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    url, http, ready = None, None, False
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        url = url or (m.group(1) if (m := WS_URL.search(line)) else None)
        http = http or (m.group(1) if (m := HTTP_URL.search(line)) else None)
        if "NPC engine ready" in line or (mqtt and url):
            ready = True
        if url and ready:
            drain(proc)
            return proc, url, http
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the shard did not become ready with its NPC engine")


async def run(args) -> dict:
    world = default_world()
    npcs = list(world.npcs)
    with tempfile.TemporaryDirectory() as tmp:
        helpers, mqtt = start_remote(args, tmp) if args.workers == "remote" else ([], None)
        proc, url, http = start_shard(args, f"sqlite:///{tmp}/bench.db", mqtt)
        if mqtt:
            time.sleep(3)  # the shard hears the worker's retained load report
        try:
            movers = subprocess.Popen(
                [sys.executable, "-m", "clients.bots", url, "-n", str(args.movers), "--scenario", "move",
                 "--duration", str(args.duration), "--json", f"{tmp}/movers.json", "--quiet",
                 "--name-prefix", "mover"], cwd=ROOT, stdout=subprocess.DEVNULL)
            stats = {"open": {}, "asked": 0, "starts": 0, "ends": {}, "ttft": [], "itl": [], "tokens": [],
                     "skipped": 0, "errors": {}}
            rng = random.Random(args.seed)
            until = time.monotonic() + args.duration
            talkers = [Talker(f"talker{i}", npcs[i % len(npcs)], world.speed, stats) for i in range(args.talkers)]
            await asyncio.gather(*(t.run(url, until, args.line_every, random.Random(rng.random()))
                                   for t in talkers))
            movers.wait(timeout=args.duration + 120)
            mover_report = json.load(open(f"{tmp}/movers.json"))
            npc_metrics = shard_npc_metrics(http)
        finally:
            for p in (proc, *helpers):
                p.terminate()
            for p in (proc, *helpers):
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    print(f"{p.args[:3]} did not stop within 30 s of SIGTERM: killed", file=sys.stderr)
                    p.kill()
    ends = sum(stats["ends"].values())
    return {
        "talkers": args.talkers, "movers": args.movers, "duration_s": args.duration,
        "switch_interval_ms": args.switch_interval_ms or None, "prefill_tokens": args.prefill_tokens,
        "engine": {"remote": "remote worker process (MQTT)", "process": "child worker process (pipe)",
                   "inprocess": "in the shard's process"}[args.workers],
        "asked": stats["asked"], "npc_starts": stats["starts"], "npc_ends": ends, "end_reasons": stats["ends"],
        "every_start_ended": ends == stats["starts"], "errors": stats["errors"], "skipped_in_flight": stats["skipped"],
        "ttft_p50_ms": pct(stats["ttft"], 0.5), "ttft_p99_ms": pct(stats["ttft"], 0.99),
        "itl_p50_ms": pct(stats["itl"], 0.5), "itl_p99_ms": pct(stats["itl"], 0.99),
        "mean_tokens": round(statistics.mean(stats["tokens"]), 1) if stats["tokens"] else None,
        "movers_ack_p50_ms": mover_report["ack_ms"]["p50"], "movers_ack_p99_ms": mover_report["ack_ms"]["p99"],
        "movers_connected": mover_report["connections"]["made"], "movers_warnings": mover_report["warnings"],
        "shard_npc": npc_metrics,
    }


def shard_npc_metrics(http: str | None) -> dict:
    """The shard's NPC figures from its /metrics: counters and gauges, histogram quantiles
    (upper bucket bounds, ms), and per-answer ratios where the in-process engine reports them."""
    import urllib.request

    if not http:
        return {}
    try:
        text = urllib.request.urlopen(http.rstrip("/") + "/metrics", timeout=10).read().decode()
    except OSError as e:
        return {"error": str(e)}
    values: dict = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        m = SERIES.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name.endswith("_bucket"):
            bound = labels.split('le="')[1].rstrip('"')
            buckets.setdefault(name[:-7], []).append((math.inf if bound == "+Inf" else float(bound), value))
        else:
            values[name + (f"[{labels.split('=', 1)[1].strip(chr(34))}]" if labels else "")] = value
    out = {k: round(v, 3) for k, v in values.items() if not k.endswith(("_sum", "_count"))}
    for name, rows in buckets.items():
        total = rows[-1][1]
        for q in (0.5, 0.99):
            bound = next((b for b, n in rows if total and n >= q * total), None)
            top = max((b for b, _ in rows if b != math.inf), default=0.0)
            out[f"{name}_p{int(q * 100)}_ms_le"] = (None if bound is None else f"> {round(1000 * top)}"
                                                    if bound == math.inf else round(1000 * bound))
    steps, prompt = values.get("npc_engine_steps_total"), values.get("npc_engine_prompt_tokens_total")
    if prompt and steps:
        done = sum(v for k, v in values.items() if k.startswith("npc_engine_finished_total["))
        out["prompt_tokens_per_answer"] = round(prompt / done, 1) if done else None
        out["uncached_prompt_tokens_per_answer"] = round(
            (prompt - values.get("npc_engine_cached_prompt_tokens_total", 0)) / done, 1) if done else None
        out["completion_tokens_per_step"] = round(values.get("npc_engine_completion_tokens_total", 0) / steps, 2)
    return out


FIGURES = ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "movers_ack_p50_ms", "movers_ack_p99_ms")
TARGETS = {"ttft_p50_ms": 400, "ttft_p99_ms": 1500, "itl_p99_ms": 300, "movers_ack_p99_ms": 150}


def combined(runs: list[dict]) -> dict:
    """One report for several runs: the last run's details, each figure the median of the runs',
    counts summed, and every start ended only if it did in every run."""
    r = dict(runs[-1])
    for key in FIGURES:
        values = [x[key] for x in runs if x[key] is not None]
        r[key] = round(statistics.median(values), 1) if values else None
    for key in ("asked", "npc_starts", "npc_ends", "skipped_in_flight"):
        r[key] = sum(x[key] for x in runs)
    r["end_reasons"] = {k: sum(x["end_reasons"].get(k, 0) for x in runs)
                        for k in sorted({k for x in runs for k in x["end_reasons"]})}
    r["every_start_ended"] = all(x["every_start_ended"] for x in runs)
    r["runs"] = [{k: x[k] for k in (*FIGURES, "asked", "every_start_ended")} for x in runs]
    r["met_in_runs"] = {k: sum(1 for x in runs if x[k] is not None and x[k] <= t) for k, t in TARGETS.items()}
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--talkers", type=int, default=16, help="bots talking to NPCs")
    ap.add_argument("--movers", type=int, default=200, help="bots walking about")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of talking after the walk to the NPCs")
    ap.add_argument("--line-every", type=float, default=10.0, help="seconds between a talker's lines")
    ap.add_argument("--model", default="default", help="--npc-model for the shard")
    ap.add_argument("--npc-threads", type=int, default=0, help="--npc-threads for the shard (0: the shard's auto: all CPUs in-process, one fewer for a child process)")
    ap.add_argument("--workers", choices=("inprocess", "process", "remote"), default="inprocess",
                    help="--npc-workers for the shard: its own engine, a child process over a pipe, or a "
                         "worker process through a local mosquitto")
    ap.add_argument("--remote", action="store_const", dest="workers", const="remote", help="--workers remote")
    ap.add_argument("--switch-interval-ms", type=float, default=0.0,
                    help="--npc-switch-interval-ms for the shard (in-process engine; 0: Python's 5 ms)")
    ap.add_argument("--prefill-tokens", type=int, default=None,
                    help="--npc-prefill-tokens for the shard (default: the shard's, 48)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs in a row, each with a fresh shard; the report gives each run's figures and "
                         "their medians (identical runs differ by ~30%% on TTFT and ITL p99)")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    runs = []
    for i in range(args.repeat):
        runs.append(asyncio.run(run(args)))
        if args.repeat > 1:
            print(f"run {i + 1}/{args.repeat}: " + ", ".join(f"{k} {runs[-1][k]}" for k in FIGURES), flush=True)
    r = runs[0] if len(runs) == 1 else combined(runs)
    median = " (median of the runs)" if len(runs) > 1 else ""
    for key in ("asked", "npc_starts", "npc_ends", "end_reasons", "skipped_in_flight", "mean_tokens",
                *FIGURES, "shard_npc"):
        mark = ""
        if key in TARGETS and r[key] is not None:
            mark = f"  (target <= {TARGETS[key]}: {'met' if r[key] <= TARGETS[key] else 'MISSED'}{median})"
            if len(runs) > 1:
                mark += f", met in {r['met_in_runs'][key]} of {len(runs)} runs"
        print(f"{key:<20} {r[key]}{mark}")
    print(f"{'every start ended':<20} {r['every_start_ended']}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    print(json.dumps(r))


if __name__ == "__main__":
    main()
