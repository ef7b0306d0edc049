"""How much an in-process NPC engine slows when the shard's thread is busy in Python.

The engine's forward pass is hundreds of small torch operations per step. Each releases the
GIL while it computes and takes it back afterwards; with another thread running Python (the
shard's event loop), every take-back waits up to `sys.getswitchinterval()`. This bench runs
engine steps (4 sequences, 300-token prompts, greedy) in a thread for a few seconds while
the main thread either sleeps or spins in Python, and prints steps per second for each case
and the slowdown against the idle case.

    .venv/bin/python bench/npc_gil.py [--seconds 8] [--model PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # before bench/, whose npc.py would shadow the package

from npc.engine.engine import Engine, EngineSettings  # noqa: E402
from npc.engine.sequence import SamplingParams, Sequence  # noqa: E402


def steps_per_s(engine: Engine, seconds: float, busy: bool, interval_s: float) -> float:
    sys.setswitchinterval(interval_s)
    core, stop, steps = engine.core, threading.Event(), [0]
    prompt = list(range(100, 400))

    def work() -> None:
        while not stop.is_set():
            if not core.has_work():
                for _ in range(4):
                    core.add(Sequence(prompt, SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)))
            core.step()
            steps[0] += 1

    thread = threading.Thread(target=work)
    thread.start()
    started, x = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        if busy:
            for i in range(1000):
                x += i * i
        else:
            time.sleep(0.01)
    stop.set()
    thread.join()
    return steps[0] / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each case")
    ap.add_argument("--model", default=None, help="GGUF file or HF directory (default: the default model)")
    args = ap.parse_args()
    engine = Engine.from_path(args.model, EngineSettings())
    default = sys.getswitchinterval()
    cases = [("idle main thread", False, default), ("busy main thread", True, default),
             ("busy, switch interval 0.5 ms", True, 0.0005), ("busy, switch interval 0.1 ms", True, 0.0001)]
    out = {}
    for name, busy, interval in cases:
        out[name] = round(steps_per_s(engine, args.seconds, busy, interval), 2)
        print(f"{name:32s} {out[name]:6.2f} steps/s  ({out[name] / out[cases[0][0]]:.3f}x idle)", flush=True)
    sys.setswitchinterval(default)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
