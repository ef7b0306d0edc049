"""NPC answers through a remote worker over MQTT vs the same engine in process (issue 6).

    .venv/bin/python bench/remote_npc.py                         # tiny random-weight model
    .venv/bin/python bench/remote_npc.py --model default --requests 16 --max-tokens 32
    .venv/bin/python bench/remote_npc.py --device cuda --model default --concurrency 32 --requests 256

Starts a mosquitto on a free loopback port. Each round runs the same closed-loop load twice:
`--concurrency` answers in flight at a time, `--requests` in all, each a distinct chat,
greedy, exactly `--max-tokens` tokens (EOS ignored, so both sides do the same work): first
on an Engine in this process, then through `python -m npc.worker --mqtt` (same model, same
engine settings) and a RemoteEngine here. TTFT is submit -> first piece as the caller sees
it; throughput is completion tokens / wall time of the load. Targets: remote TTFT p50 no
more than 30 ms worse, remote tok/s at least 95% of in-process.

Then the failure drill (`--kill-rounds`): two workers; `--concurrency` long answers start;
the worker serving the first is killed with SIGKILL once every answer has begun. Measured:
kill -> the last affected answer ending `error` (target <= 5 s), and, once the survivor has
dropped the answers cancelled meanwhile, a fresh request's send -> first piece on it
(target <= 1 s; this includes the model's own time to first token). Prints a table and a JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from npc.engine.engine import Engine, EngineSettings  # noqa: E402  (after the path fix above)
from npc.engine.sequence import SamplingParams  # noqa: E402
from npc.remote import RemoteEngine, RemoteSettings, load_tokenizer  # noqa: E402
from tests.broker import Broker  # noqa: E402

TARGET_TTFT_MS = 30.0
TARGET_RATIO = 0.95
TARGET_ERROR_S = 5.0
TARGET_NEXT_S = 1.0


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny | default | a GGUF file or HF directory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for either engine")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="in-process/remote pairs; medians are reported")
    p.add_argument("--coalesce-ms", type=float, default=5.0)
    p.add_argument("--kill-rounds", type=int, default=3)
    return p.parse_args()


def engine_settings(args) -> EngineSettings:
    return EngineSettings(max_running=max(args.concurrency, 1), max_waiting=max(args.concurrency, 1),
                          kv_budget_mb=64, max_model_len=1024, device=args.device, threads=args.threads)


def build_engine(args) -> Engine:
    if args.model == "tiny":
        from npc.engine.tiny import tiny_model, tiny_tokenizer

        return Engine(tiny_model(), tiny_tokenizer(), engine_settings(args))
    return Engine.from_path(None if args.model == "default" else args.model, engine_settings(args))


def worker_cmd(args, url: str, name: str) -> list[str]:
    s = engine_settings(args)
    cmd = [sys.executable, "-m", "npc.worker", "--mqtt", url, "--worker-id", name, "--device", args.device,
           "--threads", str(args.threads), "--max-running", str(s.max_running), "--max-waiting",
           str(s.max_waiting), "--kv-budget-mb", str(s.kv_budget_mb), "--max-model-len", str(s.max_model_len),
           "--coalesce-ms", str(args.coalesce_ms), "--load-every-s", "0.2"]
    if args.model != "default":
        cmd += ["--model", args.model]
    return cmd


def chat(i: int) -> list[dict]:
    return [{"role": "system", "content": "You are Mira, the village smith. Answer briefly."},
            {"role": "user", "content": f"Traveller {i} asks: what news from the road today?"}]


async def load(engine, args) -> dict:
    """The closed-loop load: TTFT of every answer and aggregate tokens per second."""
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    ttfts: list[float] = []
    tokens = 0
    queue = list(range(args.requests))

    async def one(i: int) -> None:
        nonlocal tokens
        t0 = time.perf_counter()
        stream = engine.submit(chat(i), params)
        first = None
        async for _ in stream:
            if first is None:
                first = time.perf_counter() - t0
        result = await stream.result()
        if result.finish_reason != "length":
            raise RuntimeError(f"answer ended {result.finish_reason}: {result.detail}")
        ttfts.append(first)
        tokens += result.completion_tokens

    async def lane() -> None:
        while queue:
            await one(queue.pop())

    await one(-1)  # warm-up, not counted
    ttfts.clear()
    tokens = 0
    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(args.concurrency)))
    wall = time.perf_counter() - t0
    return {"ttft_p50_ms": statistics.median(ttfts) * 1000, "tok_s": tokens / wall, "wall_s": wall}


async def in_process(args) -> dict:
    engine = await asyncio.to_thread(build_engine, args)
    async with engine:
        return await load(engine, args)


async def remote(args, url: str, tokenizer, logdir: Path) -> dict:
    with Workers(args, url, logdir, 1) as workers:
        async with RemoteEngine(RemoteSettings(url, shard="bench"), tokenizer=tokenizer) as engine:
            await engine.wait_for_reports(lambda w: set(workers.names) <= set(w), timeout=120)
            return await load(engine, args)


class Workers:
    """Worker processes for one phase; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, args, url: str, logdir: Path, count: int) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        for i in range(count):
            name = f"bench-{os.getpid()}-{time.monotonic_ns() % 10**6}-{i}"
            with open(logdir / f"{name}.log", "wb") as log:
                self.procs[name] = subprocess.Popen(worker_cmd(args, url, name), cwd=ROOT, stdout=log,
                                                    stderr=subprocess.STDOUT)

    @property
    def names(self) -> list[str]:
        return list(self.procs)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


async def kill_drill(args, url: str, tokenizer, logdir: Path) -> dict:
    """Kill -9 the worker of a begun answer: time to `error` for its answers, and to the next first piece."""
    long = SamplingParams(temperature=0, max_tokens=900, ignore_eos=True)
    with Workers(args, url, logdir, 2) as workers:
        async with RemoteEngine(RemoteSettings(url, shard="drill"), tokenizer=tokenizer) as engine:
            await engine.wait_for_reports(lambda w: set(workers.names) <= set(w), timeout=120)
            streams = [engine.submit(chat(i), long) for i in range(args.concurrency)]
            for s in streams:
                await anext(aiter(s))  # every answer has begun
            victim = streams[0].worker
            affected = [s for s in streams if s.worker == victim]
            killed = time.perf_counter()
            workers.kill(victim)
            results = await asyncio.gather(*(s.result() for s in affected))
            to_error = time.perf_counter() - killed
            assert all(r.finish_reason == "error" for r in results), [r.finish_reason for r in results]
            for s in streams:
                s.cancel()
            # The survivor frees the cancelled answers' slots first, so the next request is
            # measured on its own, not queued behind work nobody wants any more.
            survivor = next(n for n in workers.names if n != victim)
            await engine.wait_for_reports(lambda w: survivor in w and w[survivor].in_flight == 0, timeout=60)
            sent = time.perf_counter()
            nxt = engine.submit(chat(999), SamplingParams(temperature=0, max_tokens=8))
            await anext(aiter(nxt))
            to_next = time.perf_counter() - sent
            assert nxt.worker != victim
            await nxt.result()
            return {"affected": len(affected), "to_error_s": to_error, "next_first_piece_s": to_next}


async def main() -> None:
    args = _args()
    tokenizer = load_tokenizer(None if args.model == "default" else args.model)
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        local, far = [], []
        for r in range(args.rounds):
            local.append(await in_process(args))
            far.append(await remote(args, broker.url, tokenizer, Path(tmp)))
            print(f"round {r + 1}: in-process TTFT p50 {local[-1]['ttft_p50_ms']:.1f} ms, "
                  f"{local[-1]['tok_s']:.0f} tok/s | remote {far[-1]['ttft_p50_ms']:.1f} ms, "
                  f"{far[-1]['tok_s']:.0f} tok/s", flush=True)
        drills = [await kill_drill(args, broker.url, tokenizer, Path(tmp)) for _ in range(args.kill_rounds)]
    med = {k: statistics.median(x[k] for x in local) for k in ("ttft_p50_ms", "tok_s")}
    rmed = {k: statistics.median(x[k] for x in far) for k in ("ttft_p50_ms", "tok_s")}
    ttft_diff = rmed["ttft_p50_ms"] - med["ttft_p50_ms"]
    ratio = rmed["tok_s"] / med["tok_s"]
    print(f"\nmodel {args.model} on {args.device}, {args.concurrency} in flight, {args.requests} answers of "
          f"{args.max_tokens} tokens, coalesce {args.coalesce_ms:g} ms, {args.rounds} round(s) (medians)")
    print(f"  TTFT p50   in-process {med['ttft_p50_ms']:7.1f} ms   remote {rmed['ttft_p50_ms']:7.1f} ms   "
          f"diff {ttft_diff:+.1f} ms (target <= {TARGET_TTFT_MS:g})  {'OK' if ttft_diff <= TARGET_TTFT_MS else 'MISS'}")
    print(f"  tok/s      in-process {med['tok_s']:7.0f}      remote {rmed['tok_s']:7.0f}      "
          f"ratio {ratio:.1%} (target >= {TARGET_RATIO:.0%})  {'OK' if ratio >= TARGET_RATIO else 'MISS'}")
    worst_err = max((d["to_error_s"] for d in drills), default=0.0)
    worst_next = max((d["next_first_piece_s"] for d in drills), default=0.0)
    if drills:
        print(f"  kill -9    affected answers ended error in <= {worst_err * 1000:.0f} ms (target <= "
              f"{TARGET_ERROR_S:g} s); next first piece in <= {worst_next * 1000:.0f} ms (target <= "
              f"{TARGET_NEXT_S:g} s), {len(drills)} drill(s)")
    print(json.dumps({"model": args.model, "device": args.device, "concurrency": args.concurrency,
                      "requests": args.requests, "max_tokens": args.max_tokens, "in_process": local,
                      "remote": far, "ttft_p50_diff_ms": round(ttft_diff, 2), "tok_s_ratio": round(ratio, 4),
                      "kill": drills}))


if __name__ == "__main__":
    asyncio.run(main())
