"""`python -m npc.worker`: the engine as a standalone worker behind the queue messages.

`Worker` is transport-free: feed it decoded messages with `handle()`, and it answers
through the `send` callable it was given (accepted/rejected, pieces, done), exactly the
schema of `npc.queue`. The MQTT transport (scale-out issue) will plug in here; until then
the command speaks JSON lines: one message per line on stdin, replies on stdout, logs on
stderr. End of input stops the worker after cancelling what is in flight.

    echo '{"t":"generate","id":"r1","messages":[{"role":"user","content":"Hi"}],"sampling":{"temperature":0}}' \\
      | python -m npc.worker --model tiny
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson

from npc.engine.errors import EngineError
from npc.queue import Cancel, GenerateRequest, InProcessQueue, NpcQueue, Rejected, WireError, parse, rejection

log = logging.getLogger("npc.worker")

Send = Callable[[dict[str, Any]], None]


class Worker:
    """Serves queue messages with an NpcQueue; one pump task per request in flight."""

    def __init__(self, queue: NpcQueue, send: Send) -> None:
        self.queue = queue
        self.send = send
        self._pumps: dict[str, asyncio.Task[None]] = {}

    async def handle(self, obj: Any) -> None:
        """Act on one incoming message (generate or cancel); malformed ones get `rejected`."""
        try:
            msg = parse(obj)
        except WireError as e:
            rid = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else ""
            self.send(Rejected(rid, "invalid", str(e)).to_wire())
            return
        if isinstance(msg, Cancel):
            await self.queue.cancel(msg.request_id)
        elif isinstance(msg, GenerateRequest):
            await self._generate(msg)
        else:
            self.send(Rejected(msg.request_id, "invalid", f"a worker does not accept {type(msg).__name__}").to_wire())

    async def _generate(self, req: GenerateRequest) -> None:
        if req.request_id in self._pumps:
            self.send(Rejected(req.request_id, "invalid", "request id already in flight").to_wire())
            return
        try:
            await self.queue.submit(req)
        except (EngineError, ValueError) as e:
            self.send(rejection(req.request_id, e).to_wire())
            return
        self.send({"t": "accepted", "id": req.request_id})
        task = asyncio.create_task(self._pump(req.request_id), name=f"npc-pump-{req.request_id}")
        self._pumps[req.request_id] = task

    async def _pump(self, request_id: str) -> None:
        try:
            async for reply in self.queue.stream(request_id):
                self.send(reply.to_wire())
        except Exception:
            log.exception("streaming request %s failed", request_id)
            self.send({"t": "done", "id": request_id, "text": "", "finish_reason": "error", "prompt_tokens": 0,
                       "completion_tokens": 0, "ttft_s": None, "total_s": 0.0, "detail": "worker failure"})
        finally:
            self._pumps.pop(request_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._pumps)

    async def drain(self) -> None:
        """Wait until every request in flight has sent its `done`."""
        while self._pumps:
            await asyncio.gather(*list(self._pumps.values()), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel everything in flight (each still sends its `done`), then close the queue."""
        for rid in list(self._pumps):
            await self.queue.cancel(rid)
        await self.drain()
        await self.queue.aclose()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m npc.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="GGUF file or HF directory; 'tiny' for the test model; "
                                                  "default: the bundled default model")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto | int8 | float32 | bfloat16 | float16 (auto: int8 "
                   "weights on a CPU, bfloat16 on CUDA)")
    p.add_argument("--int8-rows", type=int, default=-1,
                   help="with int8 weights: passes of up to this many tokens take the int8 kernel, "
                        "larger ones a GEMM on the same integers (-1: measured on this CPU at load)")
    p.add_argument("--max-running", type=int, default=32)
    p.add_argument("--max-waiting", type=int, default=64)
    p.add_argument("--kv-budget-mb", type=float, default=512.0)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--token-budget", type=int, default=0, help="tokens per step (0: max(128, 2 x max-running))")
    p.add_argument("--max-prefills-per-step", type=int, default=None,
                   help="prompts computed in one step, the rest wait a step (0: no limit; default: the "
                        "engine's, 4; fewer keep the running answers' inter-token latency down)")
    p.add_argument("--prefill-with-decodes", type=int, default=None,
                   help="prompt tokens per step while answers decode (0: what the token budget leaves; "
                        "default: the engine's, 64; fewer keep the gaps between tokens down, more "
                        "the time to a new answer's first token)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--share-prefix-attention", action="store_true",
                   help="decodes sharing a cached prompt prefix read its K/V once per group")
    p.add_argument("--ready-line", action="store_true",
                   help='stdio mode: once the engine is loaded, write {"t":"ready",...} as the first line')
    p.add_argument("--parent-pid", type=int, default=0,
                   help="die with this process (the shard that spawned this worker); Linux only, else ignored")
    from npc.remote.worker import add_arguments  # --mqtt: the scale-out transport

    add_arguments(p)
    return p


def build_engine(args: argparse.Namespace):
    """The Engine the command line asks for (blocking: loads weights)."""
    from npc.engine.engine import Engine, EngineSettings

    settings = EngineSettings(max_running=args.max_running, max_waiting=args.max_waiting,
                              kv_budget_mb=args.kv_budget_mb, max_model_len=args.max_model_len,
                              token_budget=args.token_budget, share_prefix_attention=args.share_prefix_attention,
                              device=args.device, dtype=args.dtype, threads=args.threads,
                              int8_max_rows=args.int8_rows, int8_head_rows=args.int8_rows)
    if args.max_prefills_per_step is not None:
        settings = dataclasses.replace(settings, max_prefills_per_step=args.max_prefills_per_step)
    if args.prefill_with_decodes is not None:
        settings = dataclasses.replace(settings, prefill_with_decodes=args.prefill_with_decodes)
    if args.model == "tiny":
        from npc.engine.tiny import tiny_model, tiny_tokenizer

        return Engine(tiny_model(), tiny_tokenizer(), settings)
    return Engine.from_path(args.model, settings)


async def serve_stdio(worker: Worker) -> None:
    """Read JSON lines from stdin until it closes; replies go out through the worker's send."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            worker.send(Rejected("", "invalid", f"not JSON: {e}").to_wire())
            continue
        await worker.handle(obj)
    await worker.drain()  # input ended: finish what was asked, then stop


def _write_line(obj: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.buffer.flush()


async def _main(args: argparse.Namespace) -> None:
    engine = await asyncio.to_thread(build_engine, args)
    engine.start()
    if args.mqtt:
        from npc.remote.worker import serve_from_args

        return await serve_from_args(engine, args)
    worker = Worker(InProcessQueue(engine), _write_line)
    if args.ready_line:
        _write_line({"t": "ready", "pid": os.getpid(), "max_model_len": engine.core.config.max_model_len,
                     "capacity": args.max_running + args.max_waiting, "device": str(engine.core.runner.device)})
    log.info("npc worker ready: model %s on %s; JSON lines on stdin/stdout", args.model or "default",
             engine.core.runner.device)
    try:
        await serve_stdio(worker)
    finally:
        await worker.aclose()


def _die_with_parent(pid: int) -> None:
    """Have the kernel kill this process when its parent `pid` dies (Linux); exit now if it
    already has. Elsewhere the parent closing our stdin still stops us."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != pid:
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m npc.worker`."""
    args = _parser().parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
