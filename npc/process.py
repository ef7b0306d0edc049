"""The shard's engine in a child process of its own: `--npc-workers process`.

`ProcessEngine` spawns `python -m npc.worker --ready-line` and speaks its JSON-lines
protocol (`npc.queue`'s wire messages) over the child's stdin and stdout: no broker, and
the engine's compute no longer shares the shard's GIL. It has the in-process Engine's
interface (`submit`, `in_flight`, `tokenizer`, `start`, `aclose`, `metrics`,
`max_model_len`), and its answers are `RemoteReplyStream`s, the same consumer side as the
MQTT workers', so players see the same `npc_start`/`npc_token`/`npc_end`.

The child dies with the shard: a clean close terminates it; a shard that dies without
closing takes it along (Linux: the kernel kills it; anywhere: it stops when its stdin closes). A child that dies ends every answer in flight
with `error` at once and is started again after `restart_delay_s` (doubling up to
`restart_max_s` while it keeps dying before it is ready); until it is ready again new
lines get `busy`.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence as Seq
from dataclasses import dataclass

import orjson

from npc.engine.errors import Busy, EngineClosed
from npc.engine.sequence import Priority, SamplingParams
from npc.queue import Accepted, Done, GenerateRequest, Piece, Rejected, WireError, parse
from npc.remote.metrics import AnswerTally
from npc.remote.stream import RemoteReplyStream

log = logging.getLogger("worldsmith.npc.process")

Messages = Seq[Mapping[str, str]]
LINE_LIMIT = 2**22  # bytes in one line from the child (a whole answer's `done` fits easily)


@dataclass(frozen=True)
class ProcessSettings:
    """The child's engine (as `python -m npc.worker` flags) and how the shard looks after it."""

    model: str | None = None        # as --npc-model: None the default model, "tiny" the test model
    device: str = "auto"
    dtype: str = "auto"
    int8_rows: int = -1             # --int8-rows: -1 measured at load
    max_running: int = 16
    max_waiting: int = 16
    max_model_len: int = 1536
    threads: int = 0
    prefill_tokens: int | None = None  # --prefill-with-decodes; None: the worker's default
    restart_delay_s: float = 1.0    # wait before starting a child that died
    restart_max_s: float = 30.0     # the wait doubles up to this while children die before ready
    cancel_grace_s: float = 1.0     # a cancel the child doesn't confirm by then ends here
    deadline_grace_s: float = 2.0   # past its deadline plus this, an answer ends here
    stop_grace_s: float = 3.0       # at close, how long the child may take to exit on SIGTERM before SIGKILL

    def __post_init__(self) -> None:
        if self.int8_rows < -1:
            raise ValueError("process engine: int8_rows must be >= 0, or -1 to measure it")
        if self.max_running < 1 or self.max_waiting < 0 or self.max_model_len < 16 or self.threads < 0:
            raise ValueError("process engine: max_running >= 1, max_waiting >= 0, max_model_len >= 16, threads >= 0")
        for name in ("restart_delay_s", "restart_max_s", "cancel_grace_s", "deadline_grace_s", "stop_grace_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"process engine: {name} must be > 0")

    def command(self) -> list[str]:
        """The child's command line."""
        cmd = [sys.executable, "-m", "npc.worker", "--ready-line", "--parent-pid", str(os.getpid()),
               "--device", self.device, "--dtype", self.dtype, "--max-running", str(self.max_running),
               "--max-waiting", str(self.max_waiting), "--max-model-len", str(self.max_model_len),
               "--threads", str(self.threads), "--int8-rows", str(self.int8_rows)]
        if self.prefill_tokens is not None:
            cmd += ["--prefill-with-decodes", str(self.prefill_tokens)]
        return cmd + (["--model", self.model] if self.model else [])


class ProcessMetrics(AnswerTally):
    """What the shard sees of its child engine, for /metrics (shaped like the other engines')."""

    def __init__(self, engine: "ProcessEngine") -> None:
        super().__init__(engine)
        self.rejected_busy = 0
        self.restarts = 0

    def snapshot(self) -> dict[str, float | int | None]:
        """A flat dict of current values (latencies in seconds)."""
        return {"ready": int(self._engine.ready), "in_flight": self._engine.in_flight,
                "ttft_p50_s": self.ttft.quantile(0.5), "ttft_p99_s": self.ttft.quantile(0.99),
                "completion_tokens": self.completion_tokens, "rejected_busy": self.rejected_busy,
                "restarts": self.restarts, **{f"finished_{k}": v for k, v in self.finished_by.items()}}

    def prometheus(self, prefix: str = "npc_process") -> str:
        """Prometheus text: gauges, counters and the shard-side TTFT histogram."""
        snap = self.snapshot()
        lines: list[str] = []
        for key in ("ready", "in_flight"):
            lines += [f"# TYPE {prefix}_{key} gauge", f"{prefix}_{key} {snap[key]}"]
        for key in ("completion_tokens", "rejected_busy", "restarts"):
            lines += [f"# TYPE {prefix}_{key}_total counter", f"{prefix}_{key}_total {snap[key]}"]
        lines.append(f"# TYPE {prefix}_finished_total counter")
        lines += [f'{prefix}_finished_total{{reason="{k}"}} {v}' for k, v in sorted(self.finished_by.items())]
        lines += self.ttft.prometheus(f"{prefix}_ttft_seconds")
        return "\n".join(lines) + "\n"


class ProcessEngine:
    """Generates NPC answers in a child `python -m npc.worker`; an Engine stand-in."""

    def __init__(self, settings: ProcessSettings, *, tokenizer) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.metrics = ProcessMetrics(self)
        self.max_model_len: int | None = None   # as the ready child reports it
        self.ready = False
        self.ready_event = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self._calls: dict[str, RemoteReplyStream] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._task: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Start (and keep restarting) the child; idempotent; needs a running loop."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="npc-process")

    async def aclose(self) -> None:
        """End every answer in flight as cancelled and stop the child (killed if it lingers)."""
        self._closed = True
        for call in list(self._calls.values()):
            self._end(call, "cancelled", detail="engine closed")
        proc = self.proc
        if proc is not None and proc.returncode is None:
            # Nothing in the child is worth waiting for now: SIGTERM ends it at once (the
            # worker has no handler), where closing its stdin would let it finish its batch.
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), self.settings.stop_grace_s)
            except TimeoutError:
                log.warning("NPC worker process %d did not stop in %.1f s: killed", proc.pid,
                            self.settings.stop_grace_s)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> "ProcessEngine":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _supervise(self) -> None:
        delay = self.settings.restart_delay_s
        while not self._closed:
            started = time.monotonic()
            try:
                was_ready, code = await self._run_child(), self.proc.returncode
            except (OSError, ValueError) as e:  # could not start it; a line past LINE_LIMIT
                was_ready, code = False, e
            if self._closed:
                return
            self.metrics.restarts += 1
            if was_ready:
                delay = self.settings.restart_delay_s
            log.warning("NPC worker process exited (%s) after %.1f s; starting another in %.1f s",
                        code, time.monotonic() - started, delay)
            await asyncio.sleep(delay)  # back-off between restarts, not synchronisation
            if not was_ready:
                delay = min(2 * delay, self.settings.restart_max_s)

    async def _run_child(self) -> bool:
        """Run one child until it exits; True if it became ready."""
        self.proc = proc = await asyncio.create_subprocess_exec(
            *self.settings.command(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT, env={k: v for k, v in os.environ.items() if not k.startswith("WORLDSMITH_")})
        was_ready = False
        try:
            while line := await proc.stdout.readline():
                was_ready |= self._on_line(line)
        finally:
            # EOF: the child is gone (or going). Nothing more will come for these answers.
            self.ready = False
            self.ready_event.clear()
            for call in list(self._calls.values()):
                self._end(call, "error", detail="the NPC worker process exited")
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        return was_ready

    # -- requests -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Answers not yet ended."""
        return len(self._calls)

    def submit(self, messages: Messages | None = None, params: SamplingParams | None = None, *,
               prompt_ids: list[int] | None = None, deadline: float | None = None,
               timeout: float | None = None, priority: Priority = Priority.NORMAL) -> RemoteReplyStream:
        """Send one answer request to the child; same arguments and errors as `Engine.submit`.

        Raises Busy at once while the child is starting or restarting, or when it is full;
        EngineClosed after aclose; ValueError for bad arguments.
        """
        if (messages is None) == (prompt_ids is None):
            raise ValueError("pass exactly one of messages or prompt_ids")
        if self._closed:
            raise EngineClosed("the process engine is closed")
        if not self.ready:
            self.metrics.rejected_busy += 1
            raise Busy("the NPC worker process is not ready")
        if len(self._calls) >= self.settings.max_running + self.settings.max_waiting:
            self.metrics.rejected_busy += 1
            raise Busy("the NPC worker process is full")
        request, deadline = GenerateRequest.for_submit(f"p{next(self._ids)}", messages, prompt_ids,
                                                       params or SamplingParams(), deadline, timeout, priority)
        call = RemoteReplyStream(self, request, deadline)
        self._calls[call.id] = call
        self._write(request.to_wire())
        if deadline is not None:
            asyncio.get_running_loop().call_later(
                max(0.0, deadline - time.monotonic()) + self.settings.deadline_grace_s,
                functools.partial(self._end, call, "cancelled", detail="deadline"))
        return call

    def _write(self, obj: dict) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None and not proc.stdin.is_closing():
            proc.stdin.write(orjson.dumps(obj) + b"\n")

    def _cancel(self, call: RemoteReplyStream) -> None:
        # Called by RemoteReplyStream.cancel(): tell the child; end here if it doesn't confirm.
        if call.cancel_at is None and not call.done:
            call.cancel_at = time.monotonic()
            self._write({"t": "cancel", "id": call.id})
            asyncio.get_running_loop().call_later(self.settings.cancel_grace_s, functools.partial(
                self._end, call, "cancelled", detail="the NPC worker process did not confirm the cancel"))

    def _end(self, call: RemoteReplyStream, reason: str, **kw) -> None:
        if call.done:
            return
        self._calls.pop(call.id, None)
        self.metrics.finished(call._finish(reason, **kw))

    # -- inbound --------------------------------------------------------------------
    def _on_line(self, line: bytes) -> bool:
        """Act on one line from the child; True if it was the ready line."""
        try:
            obj = orjson.loads(line)
            if isinstance(obj, dict) and obj.get("t") == "ready":
                self._on_ready(obj)
                return True
            msg = parse(obj)
        except (orjson.JSONDecodeError, WireError) as e:
            log.warning("bad line from the NPC worker process: %s", e)
            return False
        call = self._calls.get(msg.request_id)
        if call is None:
            return False  # ended here already (cancel grace, deadline)
        if isinstance(msg, Piece):
            call._piece(msg.n, msg.text)
        elif isinstance(msg, Done):
            self._end(call, msg.finish_reason, text=msg.text, prompt_tokens=msg.prompt_tokens,
                      completion_tokens=msg.completion_tokens, detail=msg.detail)
        elif isinstance(msg, Rejected):
            # The child refusing looks like the engine refusing: `busy`, as in-process.
            self.metrics.rejected_busy += 1
            self._end(call, "busy", detail=f"{msg.reason}: {msg.message}")
        elif isinstance(msg, Accepted):
            call.worker = "process"
        return False

    def _on_ready(self, obj: dict) -> None:
        self.max_model_len = int(obj.get("max_model_len") or self.settings.max_model_len)
        self.ready = True
        self.ready_event.set()
        log.info("NPC engine ready in a worker process (pid %s, %s)", obj.get("pid"), obj.get("device"))
