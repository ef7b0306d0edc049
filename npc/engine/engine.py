"""The asyncio-facing engine: submit a conversation, stream its answer, cancel at any time.

    async with Engine(model, tokenizer) as engine:
        stream = engine.submit(messages, SamplingParams(temperature=0))
        async for piece in stream:
            print(piece, end="")
        result = await stream.result()

The model runs on one dedicated thread (never on the event loop). That thread drives an
`EngineCore` (schedule -> run -> postprocess, all synchronous) and hands each step's text
pieces to the event loop in one `call_soon_threadsafe` per step.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence as Seq
from dataclasses import dataclass

import torch

from npc.engine.blocks import BlockManager
from npc.engine.detok import Detokenizer
from npc.engine.errors import Busy, EngineClosed, RequestTooLong
from npc.engine.metrics import EngineMetrics
from npc.engine.model import Transformer
from npc.engine.runner import Runner, blocks_in_budget
from npc.engine.scheduler import Scheduler, SchedulerConfig
from npc.engine.sequence import Priority, SamplingParams, Sequence, Status

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class EngineSettings:
    """Capacity and placement of one engine.

    Memory: `kv_budget_mb` of KV pages (the blocks the prefix cache shares), plus one
    contiguous KV row per running sequence (what attention reads), each `max_model_len`
    long. On a CPU the rows are reserved address space that takes RAM only as sequences
    write into it: for SmolLM2-135M in fp32 a token's K/V is 45 KiB, so 32 full rows of
    1024 tokens would commit 1.4 GiB, 32 answers of ~350 tokens about 0.5 GiB.
    """

    max_running: int = 32  # sequences decoding together
    max_waiting: int = 64  # queued beyond that; more submits raise Busy
    # Tokens per forward pass (decodes first, prefill chunks get the rest). It bounds how
    # much a prompt arriving mid-conversation stretches everyone's next token: on a CPU each
    # prefill token in a step costs about as much as a decode. 0: max(128, 2 * max_running).
    token_budget: int = 0
    # Sequences in prefill per forward pass (0: no limit): see SchedulerConfig.max_prefills.
    max_prefills_per_step: int = 4
    # Prompt tokens per forward pass while answers are decoding (0: what the token budget
    # leaves): see SchedulerConfig.prefill_with_decodes.
    prefill_with_decodes: int = 64
    block_size: int = 16  # tokens per KV block (and prefix-cache granularity)
    kv_budget_mb: float = 512.0  # memory for the KV pages (prefix cache and block accounting)
    max_model_len: int = 1024  # prompt plus completion, capped at the model's max_position
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto"
    # "auto" (int8 on CPU, bfloat16 on CUDA), "float32", "bfloat16", "float16", or "int8":
    # weight-only int8 projections and head with fp32 activations and KV, CPU only (see
    # npc/engine/quant.py for the kernel choice and the parity bound against fp32).
    dtype: str = "auto"
    # With int8 weights: forward passes of up to this many tokens use the int8 kernel,
    # larger ones a bf16 (or fp32) GEMM on the same integers. -1: measured for this CPU
    # when the engine loads, per weight shape (npc/engine/crossover.py; 4 to 64 rows on the
    # hosts measured so far, and a second or a few of start-up).
    int8_max_rows: int = -1
    # The same for the output head (-1: measured).
    int8_head_rows: int = -1
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    # Decodes sharing a cached prefix (one NPC's persona) read its K/V once per group. The
    # logits move by float noise (~3e-5, like a change of batch size), which can flip a
    # greedy near-tie; off by default so greedy output depends only on batch composition.
    share_prefix_attention: bool = False

    def __post_init__(self) -> None:
        if self.token_budget == 0:
            object.__setattr__(self, "token_budget", max(128, 2 * self.max_running))
        SchedulerConfig(self.max_running, self.max_waiting, self.token_budget, self.max_model_len,
                        self.max_prefills_per_step, self.prefill_with_decodes)
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.kv_budget_mb <= 0:
            raise ValueError("kv_budget_mb must be > 0")
        if self.dtype not in ("auto", "int8") and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto, int8 or one of {sorted(_DTYPES)}")
        if self.int8_max_rows < -1:
            raise ValueError("int8_max_rows must be >= 0, or -1 for this CPU's crossover")
        if self.int8_head_rows < -1:
            raise ValueError("int8_head_rows must be >= 0, or -1 for this CPU's crossover")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError("device must be auto, cpu or cuda[:N]")

    def resolved_device(self) -> torch.device:
        """The torch device, with auto resolved to CUDA when available."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        """The activation/KV dtype (and weights', unless int8): fp32 on CPU, bf16 on CUDA."""
        if self.dtype in ("auto", "int8"):
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return _DTYPES[self.dtype]

    def int8_weights(self) -> bool:
        """Whether projections are int8 (asked for, or auto on a CPU); raises ValueError off the CPU."""
        on_cpu = self.resolved_device().type == "cpu"
        if self.dtype == "int8" and not on_cpu:
            raise ValueError("dtype int8 is implemented for the CPU only")
        return self.dtype == "int8" or (self.dtype == "auto" and on_cpu)


@dataclass(frozen=True)
class Timings:
    """Seconds from submit to the first token, and to the end."""

    ttft_s: float | None
    total_s: float


@dataclass(frozen=True)
class Result:
    """How a request ended. `text` is exactly the concatenation of the streamed pieces."""

    text: str
    finish_reason: str  # stop | length | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    token_ids: tuple[int, ...] = ()
    detail: str | None = None  # why it was cancelled or failed ("deadline", the error)


class _Request:
    """The engine thread's per-request state, kept in Sequence.tag."""

    __slots__ = ("stream", "detok", "submitted", "first_token", "last_token", "admitted", "detail")

    def __init__(self, stream: "ReplyStream | None", detok: Detokenizer, submitted: float) -> None:
        self.stream = stream
        self.detok = detok
        self.submitted = submitted
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.admitted = False
        self.detail: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """Output of one step for one sequence: new text, and the Result when it finished."""

    seq: Sequence
    piece: str
    result: Result | None


class EngineCore:
    """Synchronous heart of the engine: one `step()` is schedule -> run -> postprocess."""

    def __init__(self, model: Transformer, tokenizer, settings: EngineSettings) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        if settings.threads:
            # Process-wide. On a busy CPU fewer threads beat spinning OpenMP barriers.
            torch.set_num_threads(settings.threads)
        device, dtype = settings.resolved_device(), settings.resolved_dtype()
        num_blocks = blocks_in_budget(model, budget_mb=settings.kv_budget_mb,
                                      block_size=settings.block_size, dtype=dtype)
        if num_blocks < 1:
            raise ValueError("kv_budget_mb is too small for even one KV block")
        max_len = min(settings.max_model_len, model.cfg.max_position)
        self.config = SchedulerConfig(settings.max_running, settings.max_waiting,
                                      settings.token_budget, max_len, settings.max_prefills_per_step,
                                      settings.prefill_with_decodes)
        self.blocks = BlockManager(num_blocks, settings.block_size)
        self.scheduler = Scheduler(self.config, self.blocks)
        int8_rows = settings.int8_max_rows if settings.int8_weights() else None
        self.runner = Runner(model, num_blocks=num_blocks, block_size=settings.block_size,
                             max_running=settings.max_running, row_len=max_len, device=device, dtype=dtype,
                             int8_max_rows=int8_rows, int8_head_rows=settings.int8_head_rows,
                             max_pass_tokens=settings.token_budget)
        if settings.share_prefix_attention:
            self.runner.min_shared_prefix = max(32, 2 * settings.block_size)
        self.metrics = EngineMetrics()
        self.eos_ids = frozenset(tokenizer.eos_ids)
        log.info("engine on %s/%s%s: %d KV blocks of %d tokens + %d rows of up to %d tokens (%.0f MiB reserved)",
                 device, str(dtype).removeprefix("torch."), "" if int8_rows is None else " (int8 weights)", num_blocks, settings.block_size,
                 settings.max_running, max_len, self.runner.cache_bytes / 2**20)

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        """Raise RequestTooLong if the request could never be served."""
        if len(prompt) + 1 > self.config.max_model_len:
            raise RequestTooLong(f"prompt of {len(prompt)} tokens exceeds the context of "
                                 f"{self.config.max_model_len}")
        longest = min(len(prompt) + params.max_tokens, self.config.max_model_len)
        if self.blocks.blocks_for(longest) > self.blocks.num_blocks:
            raise RequestTooLong(f"{longest} tokens exceed the KV budget of "
                                 f"{self.blocks.num_blocks * self.blocks.block_size}")

    def add(self, seq: Sequence, stream: "ReplyStream | None" = None) -> Sequence:
        """Queue a request's sequence; its `tag` becomes the engine's per-request state."""
        self.check(seq.tokens, seq.params)
        skip = frozenset() if seq.params.ignore_eos else self.eos_ids
        seq.tag = _Request(stream, Detokenizer(self.tokenizer, seq.params.stop, skip_ids=skip), seq.arrival)
        self.scheduler.add(seq)
        return seq

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def abort(self, seq: Sequence, reason: str = "cancelled", detail: str | None = None) -> Event | None:
        """End a request now and free its KV; returns its final event (None if already done)."""
        if seq.finished:
            return None
        seq.tag.detail = detail
        self.scheduler.abort(seq, reason)
        return self._final(seq, seq.tag.detok.flush(), time.monotonic())

    def expire(self, now: float | None = None) -> list[Event]:
        """Cancel every request whose deadline has passed."""
        now = time.monotonic() if now is None else now
        late = [s for s in (*self.scheduler.running, *self.scheduler.waiting)
                if s.deadline is not None and s.deadline <= now]
        return [e for s in late if (e := self.abort(s, "cancelled", "deadline")) is not None]

    def step(self) -> list[Event]:
        """Run one forward pass for the scheduled work; return text pieces and finished results."""
        work = self.scheduler.schedule()
        for w in work:
            req = w.seq.tag
            if not req.admitted:
                req.admitted = True
                self.metrics.admitted(w.seq.num_prompt, w.seq.num_cached)
        try:
            sampled = self.runner.run(work)
        except Exception:
            # A failed forward pass fails only the requests that were in it.
            log.exception("engine step failed")
            events = []
            for w in work:
                ev = self.abort(w.seq, "error", "the forward pass failed; see the engine log")
                if ev is not None:
                    events.append(ev)
            return events
        events: list[Event] = []
        for seq_id, why in self.runner.sampler.take_errors().items():
            seq = next(w.seq for w in work if w.seq.seq_id == seq_id)
            sampled.pop(seq_id, None)
            if (ev := self.abort(seq, "error", why)) is not None:
                events.append(ev)
        grown = self.scheduler.postprocess(work, sampled, self.eos_ids)
        now = time.monotonic()
        for seq in grown:
            req = seq.tag
            if req.first_token is None:
                req.first_token = now
                self.metrics.latency(ttft=now - req.submitted)
            else:
                self.metrics.latency(itl=now - req.last_token)
            req.last_token = now
            piece = req.detok.push(seq.tokens[-1])
            if req.detok.stopped and not seq.finished:
                self.scheduler.abort(seq, "stop")
            if seq.finished:
                events.append(self._final(seq, piece + req.detok.flush(), now))
            elif piece:
                events.append(Event(seq, piece, None))
        self.metrics.step(waiting=len(self.scheduler.waiting), running=len(self.scheduler.running),
                          kv_used=self.blocks.num_used, kv_total=self.blocks.num_blocks,
                          new_tokens=len(grown), preemptions=self.scheduler.preemptions, now=now)
        return events

    def _final(self, seq: Sequence, piece: str, now: float) -> Event:
        req = seq.tag
        self.runner.release(seq.seq_id)
        self.metrics.finish(seq.finish_reason)
        timings = Timings(None if req.first_token is None else req.first_token - req.submitted,
                          now - req.submitted)
        result = Result(req.detok.text, seq.finish_reason, seq.num_prompt, seq.num_completion,
                        timings, tuple(seq.completion), req.detail)
        return Event(seq, piece, result)


class AnswerStream:
    """The consumer's side of one answer: iterate for text pieces, `await result()` for the end.

    Shared by the in-process `ReplyStream` and the remote-worker stream; each feeds it with
    `_push` and `_end` on the event loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self._result: asyncio.Future[Result] = loop.create_future()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while (piece := await self._pieces.get()) is not None:
            yield piece

    async def result(self) -> Result:
        """Wait for the end of the answer (after cancel(), the cancelled result)."""
        return await asyncio.shield(self._result)

    @property
    def done(self) -> bool:
        return self._result.done()

    def _push(self, piece: str) -> None:
        if piece:
            self._pieces.put_nowait(piece)

    def _end(self, result: Result) -> None:
        if not self._result.done():
            self._pieces.put_nowait(None)
            self._result.set_result(result)


class ReplyStream(AnswerStream):
    """One request's answer: iterate for text pieces, `await result()` for the end, `cancel()` any time."""

    def __init__(self, engine: "Engine", loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._engine = engine
        self._loop = loop
        self.seq: Sequence | None = None

    @property
    def id(self) -> int:
        """The engine's id for this request."""
        return self.seq.seq_id if self.seq is not None else 0

    def cancel(self) -> None:
        """Stop generating; the KV blocks are freed at the engine's next step boundary."""
        if self.seq is not None and not self._result.done():
            self._engine._post(("cancel", self.seq))

    def _deliver(self, piece: str, result: Result | None) -> None:
        # Runs on the event loop.
        self._push(piece)
        if result is not None:
            self._end(result)


Messages = Seq[Mapping[str, str]]


class Engine:
    """Serves many conversations at once from one model on one device.

    Call `submit` from the event loop; it never blocks on the model. Over the running plus
    waiting bound it raises `Busy` at once. Use as `async with`, or `start()` then `close()`.
    """

    def __init__(self, model: Transformer, tokenizer, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.core = EngineCore(model, tokenizer, self.settings)
        self.tokenizer = tokenizer
        self.metrics = self.core.metrics
        self._inbox: deque[tuple[str, Sequence]] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closing = False
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_path(cls, path: str | None = None, settings: EngineSettings | None = None) -> "Engine":
        """Load a GGUF file or Hugging Face directory (the default model when None) and wrap it."""
        from npc.engine.loader import load_model

        settings = settings or EngineSettings()
        if path is None:
            from npc.models import default_model_path

            path = default_model_path()
        model, tokenizer = load_model(path, device=settings.resolved_device(), dtype=settings.resolved_dtype())
        return cls(model, tokenizer, settings)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        if self._thread is None:
            if self.core.runner.device.type == "cpu":
                release_openmp_threads()
            self._thread = threading.Thread(target=self._run, name="npc-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Cancel everything in flight and stop the engine thread; waits for it (blocking)."""
        self._closing = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    async def aclose(self) -> None:
        """`close()` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> "Engine":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests -------------------------------------------------------------------------
    def submit(self, messages: Messages | None = None, params: SamplingParams | None = None, *,
               prompt_ids: list[int] | None = None, deadline: float | None = None,
               timeout: float | None = None, priority: Priority = Priority.NORMAL) -> ReplyStream:
        """Queue one answer: chat `messages` (rendered by the model's template) or raw `prompt_ids`.

        `deadline` is a `time.monotonic()` instant, `timeout` seconds from now (the earlier
        wins); past it the request ends as cancelled with detail "deadline". Raises Busy at
        capacity, RequestTooLong if it can never fit, EngineClosed after close. Must be
        called on the event loop thread that will consume the stream.
        """
        if (messages is None) == (prompt_ids is None):
            raise ValueError("pass exactly one of messages or prompt_ids")
        if self._closing or self._failed is not None:
            raise EngineClosed("the engine is closed" if self._failed is None else
                               f"the engine thread failed: {self._failed!r}")
        params = params or SamplingParams()
        prompt = list(prompt_ids) if prompt_ids is not None else self.tokenizer.render_chat(messages)
        now = time.monotonic()
        if timeout is not None:
            deadline = min(deadline, now + timeout) if deadline is not None else now + timeout
        self.core.check(prompt, params)
        loop = asyncio.get_running_loop()  # raises outside a coroutine, before anything is counted
        with self._lock:
            if self._in_flight >= self.settings.max_running + self.settings.max_waiting:
                self.metrics.rejected()
                raise Busy(f"{self._in_flight} requests in flight")
            self._in_flight += 1
        stream = ReplyStream(self, loop)
        seq = Sequence(prompt, params, priority=priority, deadline=deadline, arrival=now)
        stream.seq = seq
        seq.tag = stream  # until the engine thread swaps in its own state
        self.start()
        self._post(("add", seq))
        return stream

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet finished."""
        return self._in_flight

    def _post(self, item: tuple[str, Sequence]) -> None:
        self._inbox.append(item)
        self._wake.set()

    # -- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        core = self.core
        streams: dict[int, ReplyStream] = {}
        try:
            while True:
                self._wake.clear()
                events: list[Event] = []
                while self._inbox:
                    kind, seq = self._inbox.popleft()
                    if kind == "add":
                        streams[seq.seq_id] = seq.tag
                        core.add(seq, seq.tag)
                    elif (ev := core.abort(seq, "cancelled")) is not None:
                        events.append(ev)
                if self._closing:
                    for seq in (*core.scheduler.running, *core.scheduler.waiting):
                        if (ev := core.abort(seq, "cancelled", "engine closed")) is not None:
                            events.append(ev)
                    self._deliver(events, streams)
                    return
                events += core.expire()
                if core.has_work():
                    events += core.step()
                self._deliver(events, streams)
                if not core.has_work():
                    self._wake.wait()
                elif not core.scheduler.running:
                    # Work is waiting but nothing could be admitted: do not spin.
                    self._wake.wait(0.01)
        except BaseException as exc:  # noqa: BLE001 - report to every waiter, then stop
            log.exception("the engine thread failed")
            self._failed = exc
            events = [e for s in (*core.scheduler.running, *core.scheduler.waiting)
                      if (e := core.abort(s, "error", f"engine failure: {exc!r}")) is not None]
            self._deliver(events, streams)
            raise

    def _deliver(self, events: list[Event], streams: dict[int, ReplyStream]) -> None:
        """Hand a step's output to the event loop(s), one callback per loop."""
        if not events:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[ReplyStream, str, Result | None]]] = {}
        for ev in events:
            stream = streams.get(ev.seq.seq_id)
            if stream is None:
                continue
            if ev.result is not None:
                del streams[ev.seq.seq_id]
                with self._lock:
                    self._in_flight -= 1
            by_loop.setdefault(stream._loop, []).append((stream, ev.piece, ev.result))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:
                pass  # that event loop is closed: nobody is listening any more


def release_openmp_threads() -> bool:
    """Let go of the calling thread's OpenMP worker threads (they are made again on demand).

    Loading and preparing the model on one thread (usually the main one) leaves that thread
    an OpenMP pool. While it exists, the engine thread's own pool runs every parallel op
    3-4x slower on a 2-core machine (measured: a 960x576 int8 GEMV 18 -> 63 us, a small
    softmax 3 -> 13 us; a decode step 22 -> 37 ms), because OpenMP then has more threads
    than cores and stops spinning between regions. `omp_pause_resource_all` (OpenMP 5.0)
    frees the calling thread's pool. Returns whether the runtime accepted.
    """
    import ctypes
    import glob
    import os

    fn = getattr(ctypes.CDLL(None), "omp_pause_resource_all", None)
    if fn is None:
        for path in glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "lib*omp*.so*")):
            try:
                fn = getattr(ctypes.CDLL(path), "omp_pause_resource_all", None)
            except OSError:
                continue
            if fn is not None:
                break
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn(1) == 0  # omp_pause_soft


def _deliver_all(items: list[tuple[ReplyStream, str, Result | None]]) -> None:
    for stream, piece, result in items:
        stream._deliver(piece, result)
