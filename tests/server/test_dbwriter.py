"""The database writer: store calls off the event loop, write-behind poses and chat, clean close."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading

import pytest
from sqlmodel import SQLModel

from server.dbwriter import DbWriter
from worldstate.passwords import ScryptCost
from worldstate.store import (
    ChatLine, InvalidRecord, NameTaken, PlayerRecord, Store, StoreClosed, StoreError,
    StoreSettings,
)

FAST = StoreSettings(kdf=ScryptCost(n=2**8))


@pytest.fixture
def db_url(tmp_path):
    """A SQLite file under tmp_path."""
    return f"sqlite:///{tmp_path / 'world.db'}"


@pytest.fixture
def db_path(tmp_path):
    """The filesystem path behind `db_url`."""
    return tmp_path / "world.db"


def _pose(name: str, x: float, ms: int = 1_000) -> PlayerRecord:
    return PlayerRecord(name, x, 0.0, -x, 0.0, ms)


def _reopen(url: str) -> Store:
    return Store(url, settings=FAST)


async def test_calls_run_on_one_thread_without_blocking_the_loop(db_url):
    """Store calls run on one dedicated non-loop thread, and the loop keeps running while a call blocks."""
    w = DbWriter(Store(db_url, settings=FAST))
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()
    gate = threading.Event()

    def blocking() -> int:
        loop.call_soon_threadsafe(entered.set)
        if not gate.wait(10):
            raise RuntimeError("the loop never released the gate")
        return threading.get_ident()

    try:
        job = asyncio.create_task(w.call(blocking))
        await asyncio.wait_for(entered.wait(), 10)  # only possible if the loop is free
        gate.set()
        db_thread = await asyncio.wait_for(job, 10)
        assert db_thread != threading.get_ident()
        assert await w.call(threading.get_ident) == db_thread
    finally:
        gate.set()
        await w.close()


async def test_call_returns_results_and_raises_store_errors(db_url):
    """`call` returns the store method's result and re-raises its typed errors on the loop."""
    store = Store(db_url, settings=FAST)
    w = DbWriter(store)
    try:
        await w.call(store.create_account, "Alice", "pw")
        assert await w.call(store.check_password, "alice", "pw") is True
        with pytest.raises(NameTaken):
            await w.call(store.create_account, "ALICE", "other")
    finally:
        await w.close()


async def test_latency_is_reported_on_the_loop_thread(db_url):
    """Each call and each batch write reports a positive latency to the callback, on the loop's thread."""
    seen: list[tuple[float, int]] = []
    store = Store(db_url, settings=FAST)
    w = DbWriter(store, pose_flush_s=60, on_latency=lambda s: seen.append((s, threading.get_ident())))
    await w.call(store.has_account, "alice")
    w.queue_pose(_pose("alice", 1))
    w.queue_chat(ChatLine(1, "s", "p:1", "alice", "say", "hi"))
    await w.flush()
    await w.close()
    assert len(seen) == 3  # the call, the chat batch, the pose batch
    assert all(s > 0 and tid == threading.get_ident() for s, tid in seen)


async def test_poses_coalesce_per_player_and_flush_on_close(db_url):
    """Many poses for three players stay three pending writes, are not written early, and close() writes the newest."""
    w = DbWriter(Store(db_url, settings=FAST), pose_flush_s=60)
    for i in range(100):
        w.queue_pose(_pose(("alice", "Bob", "carol")[i % 3], float(i), 1_000 + i))
    w.queue_pose(_pose("BOB", 500.0, 2_000))
    assert w.pending == 3
    peek = _reopen(db_url)
    assert peek.load_player("alice") is None  # write-behind: nothing yet
    peek.close()
    await w.close()
    after = _reopen(db_url)
    try:
        assert after.load_player("alice").x == 99.0
        assert after.load_player("bob") == _pose("BOB", 500.0, 2_000)
        assert after.load_player("carol").x == 98.0
    finally:
        after.close()


async def test_pending_poses_are_written_within_the_flush_bound(db_url):
    """A queued pose is written by the background flusher, not before its age bound and soon after it."""
    wrote = asyncio.Event()
    store = Store(db_url, settings=FAST)
    w = DbWriter(store, pose_flush_s=0.2, on_latency=lambda _s: wrote.set())
    loop = asyncio.get_running_loop()
    try:
        queued_at = loop.time()
        w.queue_pose(_pose("alice", 7.0))
        await asyncio.wait_for(wrote.wait(), 5)
        waited = loop.time() - queued_at
        assert 0.15 <= waited < 3.0
        assert w.pending == 0
        assert (await w.call(store.load_player, "alice")).x == 7.0
    finally:
        await w.close()


async def test_a_steady_stream_of_poses_does_not_postpone_the_write(db_url):
    """Poses queued every 20 ms still get written about pose_flush_s after the first: the bound is age, not quiet."""
    wrote = asyncio.Event()
    store = Store(db_url, settings=FAST)
    w = DbWriter(store, pose_flush_s=0.3, on_latency=lambda _s: wrote.set())
    loop = asyncio.get_running_loop()
    try:
        first = loop.time()
        i = 0
        while not wrote.is_set() and loop.time() - first < 5:
            w.queue_pose(_pose("alice", float(i), 1_000 + i))
            i += 1
            # Pacing the producer, not waiting for the writer: the loop exits on `wrote`.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wrote.wait(), 0.02)
        assert wrote.is_set(), "a continuous stream of poses was never written"
        assert 0.25 <= loop.time() - first < 3.0
    finally:
        await w.close()


async def test_chat_lines_are_batched_in_order(db_url):
    """Queued chat lines reach the chat log in the order queued after one flush."""
    store = Store(db_url, settings=FAST)
    w = DbWriter(store, pose_flush_s=60)
    try:
        lines = [ChatLine(i, "s", "p:1", "alice", "say", f"line {i}") for i in range(10)]
        for line in lines:
            w.queue_chat(line)
        assert await w.call(store.recent_chat, 100) == []
        await w.flush()
        assert await w.call(store.recent_chat, 100) == lines
    finally:
        await w.close()


async def test_overflow_drops_the_oldest_and_logs_once(db_url, caplog):
    """Past max_pending the least recently queued poses and chat lines are dropped, counted, and logged once."""
    w = DbWriter(Store(db_url, settings=FAST), pose_flush_s=60, max_pending=4)
    with caplog.at_level(logging.WARNING, logger="server.dbwriter"):
        for i in range(6):
            w.queue_pose(_pose(f"p{i}", float(i)))
        for i in range(6):
            w.queue_chat(ChatLine(i, "s", "p:1", "alice", "say", f"line {i}"))
    assert (w.dropped_poses, w.dropped_chat, w.pending) == (2, 2, 8)
    assert len([r for r in caplog.records if "dropping the oldest" in r.message]) == 1
    await w.close()
    after = _reopen(db_url)
    try:
        assert [after.load_player(f"p{i}") is not None for i in range(6)] == [False] * 2 + [True] * 4
        assert [c.text for c in after.recent_chat(10)] == [f"line {i}" for i in range(2, 6)]
    finally:
        after.close()


async def test_failed_write_keeps_items_queued_until_it_succeeds(db_url, db_path):
    """When the database refuses a batch, flush raises StoreError and the poses stay queued for the next try."""
    store = Store(db_url, settings=FAST)
    w = DbWriter(store, pose_flush_s=60)
    try:
        w.queue_pose(_pose("alice", 1.0))
        with sqlite3.connect(db_path) as conn:  # break the table under the store
            conn.execute("DROP TABLE players")
        with pytest.raises(StoreError):
            await w.flush()
        w.queue_pose(_pose("bob", 2.0))
        assert w.pending == 2
        SQLModel.metadata.create_all(store._engine)  # repair
        await w.flush()
        assert w.pending == 0
        assert (await w.call(store.load_player, "alice")).x == 1.0
    finally:
        await w.close()


async def test_cancelled_flush_does_not_lose_its_batch(db_url):
    """Cancelling a caller waiting on flush() still lets its batch be written."""
    w = DbWriter(Store(db_url, settings=FAST), pose_flush_s=60)
    w.queue_pose(_pose("alice", 3.0))
    waiter = asyncio.create_task(w.flush())
    await asyncio.sleep(0)  # let it hand the batch over before cancelling (a yield, not a wait)
    assert w.pending == 0
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await w.close()
    after = _reopen(db_url)
    try:
        assert after.load_player("alice").x == 3.0
    finally:
        after.close()


async def test_close_stops_the_thread_and_refuses_more_work(db_url):
    """After close() the database thread is gone, calls and queues raise StoreClosed, and closing again is harmless."""
    store = Store(db_url, settings=FAST)
    w = DbWriter(store)
    await w.call(store.get_secret)
    await asyncio.gather(w.close(), w.close())
    await w.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("worldsmith-db")]
    assert store.closed
    with pytest.raises(StoreClosed):
        await w.call(store.get_secret)
    with pytest.raises(StoreClosed):
        w.queue_pose(_pose("alice", 1.0))


async def test_bad_arguments_are_refused(db_url):
    """Invalid settings raise ValueError, and a non-record queued raises InvalidRecord without queuing it."""
    store = Store(db_url, settings=FAST)
    for bad in [dict(pose_flush_s=0), dict(pose_flush_s=float("inf")), dict(max_pending=0),
                dict(on_latency="nope")]:
        with pytest.raises(ValueError):
            DbWriter(store, **bad)
    w = DbWriter(store)
    with pytest.raises(InvalidRecord):
        w.queue_pose({"name": "alice"})
    with pytest.raises(InvalidRecord):
        w.queue_chat("hello")
    assert w.pending == 0
    await w.close()
