"""The tick loop: the one place that sends `state`, at most once per player per tick.

Each tick asks the world for its view diffs, encodes every entity that changed ONCE
(`enter` object, `upd` tuple, `leave` id), and builds each player's frame by joining those
bytes. A player whose send buffer is over the limit is skipped (its view goes stale); when
it drains it gets a full view; if it stays stuck past `stuck_close_s` it is dropped.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import math
import time

import orjson
from websockets.protocol import State

from server.protocol import frame_header
from server.sessions import Session, now_ms

log = logging.getLogger("worldsmith.tick")

# Housekeeping that needn't run every tick.
_GRACE_SWEEP_S = 1.0
_OPEN = State.OPEN


class _Entered(dict):
    """Entity -> its `enter` fragment (the whole entity object), encoded on first use."""

    __slots__ = ()

    def __missing__(self, entity) -> bytes:
        frag = self[entity] = orjson.dumps(entity.to_wire())
        return frag


class _Updated(dict):
    """Entity -> its `upd` fragment `[id,x,y,z,yaw]`, encoded on first use."""

    __slots__ = ()

    def __missing__(self, entity) -> bytes:
        p = entity.pose
        frag = self[entity] = orjson.dumps([entity.id, p.x, p.y, p.z, p.yaw])
        return frag


class _Left(dict):
    """Id -> its `leave` fragment (the quoted id), encoded on first use."""

    __slots__ = ()

    def __missing__(self, eid: str) -> bytes:
        frag = self[eid] = orjson.dumps(eid)
        return frag


class FragmentCache:
    """One tick's encodings of entity changes, shared by every observer, and the frames joined
    from them. Entities are keyed by identity (the world owns one live object per id), so a
    lookup hashes no string and a whole list maps to fragments without a Python loop."""

    __slots__ = ("head", "_enter", "_upd", "_leave")

    def __init__(self, tick: int, st: int) -> None:
        self.head = b'{"t":"state","tick":%d,"st":%d,"ack":' % (tick, st)
        self._enter = _Entered().__getitem__
        self._upd = _Updated().__getitem__
        self._leave = _Left().__getitem__

    def frame(self, ack: int, enter, upd, leave) -> tuple[bytes, int]:
        """A `state` as one whole WebSocket text frame, and its payload's length: `enter`/`upd`
        hold entities, `leave` ids (any sized iterables). Header and payload are joined once."""
        parts = [self.head, b"%d" % ack]
        if enter:
            parts += (b',"enter":[', b",".join(map(self._enter, enter)), b"]")
        if upd:
            parts += (b',"upd":[', b",".join(map(self._upd, upd)), b"]")
        if leave:
            parts += (b',"leave":[', b",".join(map(self._leave, leave)), b"]")
        parts.append(b"}")
        n = sum(map(len, parts))
        parts[0] = frame_header(n) + parts[0]  # the header joins the rest in the one copy
        return b"".join(parts), n


class Ticker:
    """Runs the shard's ticks at `tick_hz` until cancelled."""

    def __init__(self, shard) -> None:
        self.shard = shard
        self._next_pose_flush = time.monotonic() + shard.settings.pose_flush_s
        self._next_sweep = time.monotonic() + _GRACE_SWEEP_S
        self.failures = 0
        self._count = self._bytes = 0  # states written this tick, and their bytes

    async def run(self) -> None:
        """The loop; one tick per period, catching up by skipping rather than bunching."""
        loop = asyncio.get_running_loop()
        period = self.shard.settings.tick_s
        deadline = loop.time()
        while True:
            deadline += period
            delay = deadline - loop.time()
            if delay < -period:  # fell behind by more than a tick: don't burst to catch up
                deadline = loop.time()
                delay = 0
            await asyncio.sleep(max(delay, 0))
            start = time.perf_counter()
            try:
                self.tick()
            except Exception:  # one bad tick must not stop the world
                self.failures += 1
                # A bug that fails every tick would log 20 tracebacks a second: log the
                # 1st, 10th, 100th... with a count instead.
                if math.log10(self.failures).is_integer():
                    log.exception("tick %d failed (%d failed ticks so far)", self.shard.tick_no,
                                  self.failures)
            self.shard.metrics.tick_seconds.observe(time.perf_counter() - start)

    def tick(self) -> None:
        """Compute view diffs and send each player at most one state frame."""
        if not gc.isenabled():
            self._tick()
            return
        # A tick's diffs and frames live until it ends: collections during it would move
        # thousands of them to older generations and set off a full collection about once a
        # second (hundreds of ms with 1,000 players). Refcounting frees them at the end either
        # way, so the cyclic collector waits for the tick to finish.
        gc.disable()
        try:
            self._tick()
        finally:
            gc.enable()

    def _tick(self) -> None:
        shard = self.shard
        shard.tick_no += 1
        diffs = shard.world.tick()
        frames = FragmentCache(shard.tick_no, now_ms())
        mono = time.monotonic()
        self._count = self._bytes = 0
        # Only players with something to send are visited: a view diff, a new ack, or a
        # stale view waiting for its buffer to drain. Idle players cost nothing per tick.
        due, shard.due = shard.due, set()
        online = shard.sessions.online
        # Players waiting for an ack go first: a move's ack latency includes its place in
        # this loop, while a state that only carries others' moves is as fresh either way.
        later = []
        limit = shard.settings.send_buffer_limit
        for pid in due.union(diffs):
            session = online.get(pid)
            if session is None:
                continue
            diff = diffs.get(pid)
            transport = session.conn.transport
            # Checked here, not in a method: this runs for every player in most ticks.
            if transport is None or transport.is_closing() or transport.get_write_buffer_size() > limit:
                self._over_limit(session, transport, mono)
                if not session.stale:
                    self._go_stale(session, diff)
                shard.due.add(pid)  # look again next tick
                continue
            session.over_since = None
            if session.stale:
                shard.send_full_view(session)
            elif session.ack == session.sent_ack:
                if diff is not None:
                    later.append((session, diff))
            elif diff is not None:
                frame, n = frames.frame(session.ack, diff.enter, diff.upd, diff.leave)
                self._write(session, frame, n)
            else:
                frame, n = frames.frame(session.ack, (), (), ())
                self._write(session, frame, n)
        for session, diff in later:
            frame, n = frames.frame(session.ack, diff.enter, diff.upd, diff.leave)
            self._write(session, frame, n)
        if self._count:
            shard.metrics.messages_out.inc("state", by=self._count)
            shard.metrics.bytes_out.inc("state", by=self._bytes)
        self._housekeeping(mono)

    def _write(self, session: Session, frame: bytes, n: int) -> None:
        """Queue one state (a whole frame of `n` payload bytes) on a transport found writable
        this tick (`Shard.write` without its per-frame bookkeeping: the tick counts
        its states once)."""
        conn = session.conn
        if conn.protocol.state is not _OPEN:
            return
        transport = conn.transport
        transport.write(frame)
        if transport.get_write_buffer_size() > self.shard.settings.send_buffer_limit:
            self.shard.due.add(session.pid)  # the next tick checks it against the stuck limit
        session.sent_ack = session.ack
        self._count += 1
        self._bytes += n

    def _go_stale(self, session: Session, unsent) -> None:
        """Start skipping state: remember what the client holds, i.e. the world's view
        of it minus this tick's diff, which it will never get."""
        known = self.shard.world.view_ids(session.pid)
        if unsent is not None:
            known.difference_update(e.id for e in unsent.enter)
            known.update(unsent.leave)
        session.known = known
        session.stale = True

    def _over_limit(self, session: Session, transport, mono: float) -> None:
        """A client not writable this tick (closing, or its send buffer over the limit): count
        the skipped state, and drop the client once it has been stuck too long or too far."""
        if transport is None or transport.is_closing():
            return
        s = self.shard.settings
        size = transport.get_write_buffer_size()
        self.shard.metrics.send_drops.inc()
        if session.over_since is None:
            session.over_since = mono
        stuck_for = mono - session.over_since
        if stuck_for > s.stuck_close_s or size > s.send_buffer_max:
            log.warning("dropping %s: %d bytes queued for %.1fs (send_buffer_limit=%d, "
                        "stuck_close_s=%.1f, send_buffer_max=%d)", session.pid, size, stuck_for,
                        s.send_buffer_limit, s.stuck_close_s, s.send_buffer_max)
            self.shard.metrics.stuck_drops.inc()
            transport.abort()  # a close frame would only queue behind what it can't read

    def _housekeeping(self, mono: float) -> None:
        shard = self.shard
        if mono >= self._next_pose_flush:
            self._next_pose_flush = mono + shard.settings.pose_flush_s
            shard.queue_dirty_poses()
        if mono >= self._next_sweep:
            self._next_sweep = mono + _GRACE_SWEEP_S
            shard.sessions.expire()
