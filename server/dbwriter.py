"""The shard's database writer: every `Store` call runs on one dedicated thread.

The event loop never blocks on the database. Two ways in:

- `await call(fn, *args)` runs one store method on the thread and returns its result —
  write-before-acknowledge for accounts and objects (the reply goes out after the commit).
- `queue_pose(rec)` / `queue_chat(line)` are write-behind: poses coalesce per player
  (only the newest matters), chat lines batch; both are written at most `pose_flush_s`
  after the oldest pending one was queued, sooner when a queue half-fills.

Pending queues are bounded by `max_pending`: past it the oldest pose (or chat line) is
dropped and counted, logged once. `close()` is the one place that stops the thread; it
writes whatever is pending first. A batch being written is never lost to cancellation: it
runs in its own task that callers await through a shield.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from worldstate.records import ChatLine, InvalidRecord, PlayerRecord, StoreClosed, name_key
from worldstate.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class DbWriter:
    """Runs a `Store` on one thread; see the module docstring for the two paths in."""

    def __init__(self, store: Store, *, pose_flush_s: float = 1.0, max_pending: int = 10_000,
                 on_latency: Callable[[float], None] | None = None,
                 close_store: bool = True) -> None:
        if not isinstance(pose_flush_s, (int, float)) or not math.isfinite(pose_flush_s) \
                or pose_flush_s <= 0:
            raise ValueError(f"pose_flush_s must be a positive number, got {pose_flush_s!r}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be an integer >= 1, got {max_pending!r}")
        if on_latency is not None and not callable(on_latency):
            raise ValueError("on_latency must be callable or None")
        self.store = store
        self.pose_flush_s = float(pose_flush_s)
        self.max_pending = max_pending
        self.on_latency = on_latency
        self.close_store = close_store
        self.dropped_poses = 0
        self.dropped_chat = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worldsmith-db")
        self._poses: dict[str, PlayerRecord] = {}  # insertion order = least recently queued first
        self._chat: deque[ChatLine] = deque()
        self._oldest: float | None = None  # loop time the oldest pending item was queued
        self._wake = asyncio.Event()  # pending went from empty to non-empty
        self._urgent = asyncio.Event()  # a queue half-filled: write now
        self._inflight: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._closed = False
        self._closing: asyncio.Task | None = None
        self._warned_drop = False

    # -- write-before-acknowledge -----------------------------------------------------
    async def call(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run `fn(*args)` (a store method) on the database thread and return its result.

        Raises whatever `fn` raises (StoreError and subclasses), or StoreClosed after
        `close()`. Reports the time from submission to result to `on_latency`.
        """
        if self._closed:
            raise StoreClosed("the database writer is closed")
        return await self._timed(functools.partial(fn, *args))

    # -- write-behind -----------------------------------------------------------------
    def queue_pose(self, rec: PlayerRecord) -> None:
        """Queue a player's pose; a newer pose for the same name replaces a pending one."""
        self._check_queueable(rec, PlayerRecord)
        key = name_key(rec.name)
        self._poses.pop(key, None)  # re-inserted at the end: most recently queued
        if len(self._poses) >= self.max_pending:
            del self._poses[next(iter(self._poses))]
            self.dropped_poses += 1
            self._warn_drop()
        self._poses[key] = rec
        self._queued(len(self._poses))

    def queue_chat(self, line: ChatLine) -> None:
        """Queue one chat line for the chat log."""
        self._check_queueable(line, ChatLine)
        if len(self._chat) >= self.max_pending:
            self._chat.popleft()
            self.dropped_chat += 1
            self._warn_drop()
        self._chat.append(line)
        self._queued(len(self._chat))

    @property
    def pending(self) -> int:
        """Poses plus chat lines queued and not yet handed to the database."""
        return len(self._poses) + len(self._chat)

    async def flush(self) -> None:
        """Write everything queued before this call; returns once it is committed.

        Raises StoreError if the database refused the write (the items stay queued).
        """
        if self._inflight is not None and not self._inflight.done():
            await self._join(self._inflight)  # the batch ahead of ours
        if self.pending:
            if self._inflight is None or self._inflight.done():
                # Hand the batch over now, synchronously, so no later await can lose it.
                poses, self._poses = self._poses, {}
                chat, self._chat = self._chat, deque()
                self._oldest = None
                self._inflight = asyncio.get_running_loop().create_task(
                    self._write_batch(poses, chat))
                # Retrieve a failure even if every awaiting caller was cancelled meanwhile.
                self._inflight.add_done_callback(_consume)
            await self._join(self._inflight)

    async def close(self) -> None:
        """Write what is pending, stop the flusher and the thread, and close the store.

        Safe to call more than once (later calls wait for the first). Raises StoreError if
        the final write failed; the thread is stopped either way.
        """
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._closing)

    async def _shutdown(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()  # safe: a batch in progress is its own shielded task
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        try:
            await self.flush()
        finally:
            # The executor runs jobs in order, so once this last one returns every earlier
            # call has finished and shutdown() below cannot block the loop.
            last = self.store.close if self.close_store else _nothing
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._executor, last)
            self._executor.shutdown(wait=True)

    # -- internals --------------------------------------------------------------------
    def _check_queueable(self, item: object, kind: type) -> None:
        if self._closed:
            raise StoreClosed("the database writer is closed")
        if not isinstance(item, kind):
            raise InvalidRecord(f"expected {kind.__name__}, got {type(item).__name__}")

    def _queued(self, size: int) -> None:
        loop = asyncio.get_running_loop()
        if self._flusher is None:
            self._flusher = loop.create_task(self._run_flusher(), name="worldsmith-db-flusher")
        if self._oldest is None:
            self._oldest = loop.time()
            self._wake.set()
        if size >= max(1, self.max_pending // 2):
            self._urgent.set()

    def _warn_drop(self) -> None:
        if not self._warned_drop:
            self._warned_drop = True
            log.warning("database writer is behind: over %d pending, dropping the oldest "
                        "(counted in dropped_poses/dropped_chat; logged once)", self.max_pending)

    async def _run_flusher(self) -> None:
        """Write pending items when the oldest reaches `pose_flush_s`, or sooner if urgent."""
        loop = asyncio.get_running_loop()
        while True:
            if self._oldest is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self._oldest + self.pose_flush_s - loop.time()
            if delay > 0 and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), delay)
            self._urgent.clear()
            try:
                await self.flush()
            except Exception:  # logged by _write_batch; back off, the items are re-queued
                await asyncio.sleep(self.pose_flush_s)

    async def _write_batch(self, poses: dict[str, PlayerRecord], chat: deque[ChatLine]) -> None:
        """Write one batch to the database; re-queue whatever was not written."""
        try:
            if chat:
                await self._timed(functools.partial(self.store.log_chat, list(chat)))
                chat = deque()
            if poses:
                await self._timed(functools.partial(self.store.save_poses, list(poses.values())))
        except Exception:
            log.exception("database write failed; %d poses and %d chat lines re-queued",
                          len(poses), len(chat))
            self._requeue(poses, chat)
            raise

    def _requeue(self, poses: dict[str, PlayerRecord], chat: deque[ChatLine]) -> None:
        # Poses queued since the failed batch are newer: they win over the re-queued ones.
        merged = {k: v for k, v in poses.items() if k not in self._poses}
        merged.update(self._poses)
        while len(merged) > self.max_pending:
            del merged[next(iter(merged))]
            self.dropped_poses += 1
        self._poses = merged
        chat.extend(self._chat)
        while len(chat) > self.max_pending:
            chat.popleft()
            self.dropped_chat += 1
        self._chat = chat
        if self.pending and self._oldest is None:
            self._oldest = asyncio.get_running_loop().time()
            self._wake.set()

    async def _timed(self, job: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            return await loop.run_in_executor(self._executor, job)
        finally:
            self._report(time.perf_counter() - start)

    def _report(self, seconds: float) -> None:
        if self.on_latency is None:
            return
        try:
            self.on_latency(seconds)
        except Exception:  # a broken metrics hook must not fail database writes
            log.exception("on_latency callback failed")

    @staticmethod
    async def _join(task: asyncio.Task) -> None:
        # Shielded: cancelling a caller must not cancel a batch that is half handed over.
        await asyncio.shield(task)


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _nothing() -> None:
    pass
