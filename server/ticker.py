"""The tick loop: the one place that sends `state`, at most once per player per tick.

Each tick asks the world for its view diffs, encodes every entity that changed ONCE
(`enter` object, `upd` tuple, `leave` id), and builds each player's frame by joining those
bytes. A player whose send buffer is over the limit is skipped (its view goes stale); when
it drains it gets a full view; if it stays stuck past `stuck_close_s` it is dropped.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time

import orjson

from server.protocol import state_frame
from server.sessions import Session, now_ms

log = logging.getLogger("worldsmith.tick")

# Housekeeping that needn't run every tick.
_GRACE_SWEEP_S = 1.0


class FragmentCache:
    """Per-tick encodings of entity changes, shared by every observer."""

    __slots__ = ("enter", "upd", "leave")

    def __init__(self) -> None:
        self.enter: dict[str, bytes] = {}
        self.upd: dict[str, bytes] = {}
        self.leave: dict[str, bytes] = {}

    def entered(self, entity) -> bytes:
        """The `enter` fragment (full entity object) of `entity`, encoded once per tick."""
        frag = self.enter.get(entity.id)
        if frag is None:
            frag = self.enter[entity.id] = orjson.dumps(entity.to_wire())
        return frag

    def updated(self, entity) -> bytes:
        """The `upd` fragment `[id,x,y,z,yaw]` of `entity`, encoded once per tick."""
        frag = self.upd.get(entity.id)
        if frag is None:
            p = entity.pose
            frag = self.upd[entity.id] = orjson.dumps([entity.id, p.x, p.y, p.z, p.yaw])
        return frag

    def left(self, eid: str) -> bytes:
        """The `leave` fragment (the quoted id)."""
        frag = self.leave.get(eid)
        if frag is None:
            frag = self.leave[eid] = orjson.dumps(eid)
        return frag


class Ticker:
    """Runs the shard's ticks at `tick_hz` until cancelled."""

    def __init__(self, shard) -> None:
        self.shard = shard
        self._next_pose_flush = time.monotonic() + shard.settings.pose_flush_s
        self._next_sweep = time.monotonic() + _GRACE_SWEEP_S
        self.failures = 0

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
        shard = self.shard
        shard.tick_no += 1
        diffs = shard.world.tick()
        cache = FragmentCache()
        enter_cache, upd_cache, leave_cache = cache.enter, cache.upd, cache.leave
        st = now_ms()
        mono = time.monotonic()
        # Only players with something to send are visited: a view diff, a new ack, or a
        # stale view waiting for its buffer to drain. Idle players cost nothing per tick.
        due, shard.due = shard.due, set()
        online = shard.sessions.online
        for pid in due.union(diffs):
            session = online.get(pid)
            if session is None:
                continue
            if not self._writable(session, mono):
                if not session.stale:
                    self._go_stale(session, diffs.get(pid))
                shard.due.add(pid)  # look again next tick
                continue
            if session.stale:
                shard.send_full_view(session)
                continue
            diff = diffs.get(pid)
            if diff is None:
                if session.ack != session.sent_ack:
                    self._send(session, state_frame(shard.tick_no, st, session.ack, [], [], []))
                continue
            # The hot loop of a crowd (observers x entities in view): a dict hit per entry,
            # the encoding call only on a miss.
            enter = [enter_cache.get(e.id) or cache.entered(e) for e in diff.enter]
            upd = [upd_cache.get(e.id) or cache.updated(e) for e in diff.upd]
            leave = [leave_cache.get(i) or cache.left(i) for i in diff.leave]
            self._send(session, state_frame(shard.tick_no, st, session.ack, enter, upd, leave))
        self._housekeeping(mono)

    def _send(self, session: Session, frame: bytes) -> None:
        if self.shard.write(session, frame, "state"):
            session.sent_ack = session.ack

    def _go_stale(self, session: Session, unsent) -> None:
        """Start skipping state: remember what the client holds, i.e. the world's view
        of it minus this tick's diff, which it will never get."""
        known = self.shard.world.view_ids(session.pid)
        if unsent is not None:
            known.difference_update(e.id for e in unsent.enter)
            known.update(unsent.leave)
        session.known = known
        session.stale = True

    def _writable(self, session: Session, mono: float) -> bool:
        """False while the client's send buffer is over the limit; drops it when stuck."""
        s = self.shard.settings
        transport = session.conn.transport
        if transport is None or transport.is_closing():
            return False
        size = transport.get_write_buffer_size()
        if size <= s.send_buffer_limit:
            session.over_since = None
            return True
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
        return False

    def _housekeeping(self, mono: float) -> None:
        shard = self.shard
        if mono >= self._next_pose_flush:
            self._next_pose_flush = mono + shard.settings.pose_flush_s
            shard.queue_dirty_poses()
        if mono >= self._next_sweep:
            self._next_sweep = mono + _GRACE_SWEEP_S
            shard.sessions.expire()
