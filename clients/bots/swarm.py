"""The swarm: connects N bots on a ramp, paces their actions, checks ground truth, stops itself.

Everything runs on one event loop with a handful of tasks (ramp, pacers, sweeper, lag
monitor, progress); bots themselves have none. `Swarm.run()` returns the report dict.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import sys
import time
from collections import Counter

from clients.bots import wire
from clients.bots.bot import Bot
from clients.bots.report import build_report
from clients.bots.settings import BotSettings
from clients.bots.stats import Recorder, percentile
from clients.bots.truth import Truth

SWEEP_S = 0.25      # ground-truth checks run this often
LAG_TICK_S = 0.05   # the loop-lag monitor's period
PACER_SLOT_S = 0.005
NPC_DRAIN_S = 10.0  # at the end, wait this long at most for NPC answers still streaming


def roles_for(scenario: str, index: int) -> tuple[bool, bool, bool]:
    """(moves, chats, talks to NPCs) for bot `index` in `scenario`."""
    if scenario == "move":
        return True, False, False
    if scenario == "chat":
        return False, True, False
    if scenario == "npc":
        return False, False, True
    if scenario == "idle":
        return False, False, False
    k = index % 10  # mixed: 60% walk, 20% walk and chat, 10% ask NPCs, 10% idle
    return k < 8, k in (6, 7), k == 8


class Swarm:
    """N bots against one shard, and everything they measured."""

    def __init__(self, settings: BotSettings, *, on_phase=None) -> None:
        self.s = settings
        self.on_phase = on_phase or (lambda phase, t: None)
        self.rng = random.Random(settings.seed)
        self.counters = wire.Counters()
        self.ack, self.stale, self.lag = Recorder(), Recorder(), Recorder()
        self.chat_echo, self.ttft, self.itl, self.npc_total = Recorder(), Recorder(), Recorder(), Recorder()
        self.connect_lat = Recorder()
        self.events: Counter = Counter()
        self.close_codes: Counter = Counter()
        self.failures: Counter = Counter()
        self.by_id: dict[str, Bot] = {}
        self.unmatched: list = []  # (observer, mover, pose key, time) to match again at the sweep
        self.connected_series: list[tuple[float, int]] = []
        self.world: dict | None = None
        self.walk_speed = 0.0   # m/s, set from the shard's speed limit at the first welcome
        self.move_period = 1.0 / settings.rate
        self.area = settings.area
        self.truth: Truth | None = None
        self.made = self.welcomed = 0
        self.stopping = False
        self._ramp_done = False
        self._settled_n = 0
        self._settled = asyncio.Event()
        self._stop = asyncio.Event()
        self.t0 = self.t_measure = self.t_measure_end = 0.0
        self.cpu0 = self.cpu1 = 0.0
        self.snap0 = self.snap1 = (0, 0, 0, 0)
        tag = os.urandom(2).hex()
        stride = max(1, settings.bots // settings.observers) if settings.observers else 0
        self.bots: list[Bot] = []
        self.movers, self.chatters, self.talkers = [], [], []
        for i in range(settings.bots):
            moves, chats, talks = roles_for(settings.scenario, i)
            # Observers are spread evenly over the bots so they stand all over the area.
            observer = bool(stride) and i % stride == 0 and i // stride < settings.observers
            bot = Bot(self, i, f"{settings.name_prefix}{tag}_{i}", observer=observer,
                      full_parse=chats or talks)
            self.bots.append(bot)
            for wanted, group in ((moves, self.movers), (chats, self.chatters), (talks, self.talkers)):
                if wanted:
                    group.append(bot)

    # -- callbacks from bots -----------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        """Add to a named event counter (errors, clamps, NPC outcomes...)."""
        self.events[name] += n

    def on_welcome(self, bot: Bot, msg: dict, now: float) -> None:
        """Register a welcomed bot; the first welcome tells us the world's rules."""
        self.welcomed += 1
        self.by_id[bot.id] = bot
        if self.world is None:
            self.world = {k: msg.get(k) for k in ("shard", "tick_hz", "aoi", "speed", "bounds", "spawn")}
            speed = float(msg.get("speed") or 5.0)
            tick_hz = float(msg.get("tick_hz") or 20.0)
            self.walk_speed = speed * self.s.speed_fraction
            bounds = tuple(msg.get("bounds") or (-50.0, -50.0, 50.0, 50.0))
            if self.area is None:
                self.area = bounds
            else:  # walking outside the world would only get every move clamped
                x0, z0, x1, z1 = self.area
                clipped = (max(x0, bounds[0]), max(z0, bounds[1]), min(x1, bounds[2]), min(z1, bounds[3]))
                self.area = clipped if clipped[0] < clipped[2] and clipped[1] < clipped[3] else bounds
            # Two bots closing at walking speed for one tick, one move interval and 100 ms in flight.
            slack = 2 * self.walk_speed * (1 / tick_hz + 1 / self.s.rate + 0.1) + 0.05
            self.truth = Truth(aoi=float(msg.get("aoi") or 100.0), slack_m=slack,
                               probe_timeout=self.s.probe_timeout)

    def on_close(self, bot: Bot, code: int) -> None:
        """Count a close; closes we started while stopping are counted apart."""
        self.close_codes[str(code) + (" (at stop)" if self.stopping else "")] += 1
        if not bot.placed:  # turned away before it stood in the world (e.g. 4013)
            self._settled_n += 1
            self._check_settled()

    def random_point(self) -> tuple[float, float]:
        """A waypoint inside the walking area (kept 1 m off the edges)."""
        x0, z0, x1, z1 = self.area
        m = min(1.0, (x1 - x0) / 4, (z1 - z0) / 4)
        return self.rng.uniform(x0 + m, x1 - m), self.rng.uniform(z0 + m, z1 - m)

    # -- the run -----------------------------------------------------------------------------
    async def run(self) -> dict:
        """Connect, run the scenario for the set duration, stop, and return the report."""
        self.t0 = time.monotonic()
        helpers = [asyncio.create_task(c) for c in (self._lag_monitor(), self._sweeper(), self._progress())]
        pacers = []
        for members, rate, action in ((self.movers, self.s.rate, Bot.move),
                                      (self.chatters, self.s.chat_rate, Bot.chat),
                                      (self.talkers, self.s.npc_rate, Bot.talk)):
            if members:
                pacers.append(asyncio.create_task(self._pace(members, rate, action)))
        try:
            await self._ramp()
            # Everything allocated so far lives for the whole run: keep the collector off it.
            gc.freeze()
            self.t_measure = time.monotonic() + self.s.warmup
            # Nothing to measure when no bot got in: report at once instead of waiting.
            steady = self.s.duration if self.made else 0.0
            await self._wait_stop(self.s.warmup if self.made else 0.0)
            self.cpu0 = time.process_time()
            self.snap0 = self._snapshot()
            self.on_phase("steady_start", self.t_measure)
            await self._wait_stop(steady)
            self.t_measure_end = time.monotonic()
            self.cpu1 = time.process_time()
            self.snap1 = self._snapshot()
            self.on_phase("steady_end", self.t_measure_end)
            await _cancel(pacers)
            await self._drain()
        finally:
            await _cancel(pacers + helpers)
            await self._close_all()
        return build_report(self)

    def request_stop(self) -> None:
        """End the run early (Ctrl-C): stop acting, settle the checks, close, and still report."""
        self._stop.set()

    async def _wait_stop(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a stop is requested."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _snapshot(self) -> tuple[int, int, int, int]:
        c = self.counters
        return (c.msgs_in, c.msgs_out, c.bytes_in, c.bytes_out)

    async def _ramp(self) -> None:
        """Open connections at the set rate, at most `connect_concurrency` handshakes at once."""
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(self.s.connect_concurrency)
        start = loop.time()
        tasks = []
        for i, bot in enumerate(self.bots):
            if self._stop.is_set():
                break
            delay = start + i / self.s.ramp - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            tasks.append(asyncio.create_task(self._connect(bot, sem)))
        await asyncio.gather(*tasks)
        # The clock starts once every connected bot stands in the world (or was turned away).
        self._ramp_done = True
        self._check_settled()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._settled.wait(), self.s.connect_timeout)

    def on_placed(self, bot: Bot) -> None:
        """A bot got its first view: it stands in the world."""
        self._settled_n += 1
        self._check_settled()

    def _check_settled(self) -> None:
        if self._ramp_done and self._settled_n >= self.made:
            self._settled.set()

    async def _connect(self, bot: Bot, sem: asyncio.Semaphore) -> None:
        t = time.monotonic()
        try:
            bot.conn = await wire.connect(bot, self.s.host, self.s.port, self.s.path,
                                          self.counters, self.s.connect_timeout)
        except (OSError, asyncio.TimeoutError, wire.HandshakeError) as e:
            self.failures[type(e).__name__ + (f": {e}" if isinstance(e, wire.HandshakeError) else "")] += 1
            return
        finally:
            sem.release()
        self.made += 1
        now = time.monotonic()
        self.connect_lat.add(now - t, now)
        bot.hello()

    async def _pace(self, members: list[Bot], rate: float, action) -> None:
        """Call `action(bot, now)` for each member `rate` times a second, phases spread evenly."""
        order = list(members)
        self.rng.shuffle(order)
        period = 1.0 / rate
        slots = max(1, min(len(order), int(period / PACER_SLOT_S)))
        buckets = [order[k::slots] for k in range(slots)]
        dt = period / slots
        clock = time.monotonic  # not loop.time(): uvloop's clock ticks in whole milliseconds
        t_next = clock()
        k = 0
        while True:
            now = clock()
            if t_next > now:
                await asyncio.sleep(t_next - now)
                now = clock()
            for bot in buckets[k]:
                action(bot, now)
            k = (k + 1) % slots
            t_next += dt
            if now - t_next > 1.0:  # hopelessly behind: skip rather than burst
                self.count("pacer_skipped_s", int(now - t_next))
                t_next = now

    async def _lag_monitor(self) -> None:
        """Measure how late a periodic timer fires: the bots' own event-loop lag."""
        while True:
            t = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            now = time.monotonic()
            self.lag.add(max(0.0, now - t - LAG_TICK_S), now)

    async def _sweeper(self) -> None:
        """Rebuild ground truth, open and close delivery probes, check views, on a slice each time."""
        k = 0
        while True:
            await asyncio.sleep(SWEEP_S)
            self._sweep(time.monotonic(), k)
            k += 1

    def _sweep(self, now: float, k: int) -> None:
        truth = self.truth
        self.connected_series.append((now - self.t0, self.welcomed_now()))
        if truth is None:
            return
        self._rematch()
        truth.rebuild(self.bots, now)
        parts = max(1, round(self.s.probe_interval / SWEEP_S))
        for mover in self.movers[k % parts::parts]:
            truth.open_probe(mover, now)
        for obs in self.bots[k % parts::parts]:
            if obs.observer:
                truth.check_view(obs, now)
        truth.close_probes(self.bots, now)

    def _rematch(self) -> None:
        """Match poses that were unknown when they arrived (a mover's clamped pose, read late)."""
        pending, self.unmatched = self.unmatched, []
        for observer, mover, key, t in pending:
            rec = mover.history.get(key)
            if rec is None:
                self.count("unmatched_poses")
            else:
                observer.matched(mover, rec[0], rec[1], t)

    def welcomed_now(self) -> int:
        """Bots currently welcomed and not closed."""
        return sum(1 for b in self.bots if b.welcomed)

    async def _drain(self) -> None:
        """Actions have stopped: let NPC answers finish and the last probes come due, then settle them."""
        deadline = time.monotonic() + NPC_DRAIN_S
        while any(b.npc_ask is not None and b.welcomed for b in self.talkers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        unfinished = sum(1 for b in self.talkers if b.npc_ask is not None)
        if unfinished:
            self.count("npc_unfinished", unfinished)
        if self.truth is not None and self.truth.open_probes:
            await asyncio.sleep(self.s.probe_timeout + SWEEP_S)
            self._rematch()
            self.truth.close_probes(self.bots, time.monotonic(), final=True)

    async def _close_all(self, timeout: float = 5.0) -> None:
        """Close every connection, wait for the shard to finish closing, then abort stragglers."""
        self.stopping = True
        conns = [b.conn for b in self.bots if b.conn is not None and not b.conn.closed.done()]
        for c in conns:
            c.close(1000)
        if conns:
            await asyncio.wait([c.closed for c in conns], timeout=timeout)
        for c in conns:
            if not c.closed.done():
                c.abort()

    async def _progress(self) -> None:
        """Print one progress line a second (overwritten in place on a terminal)."""
        if not self.s.progress:
            return
        tty = sys.stderr.isatty()
        c = self.counters
        last = (c.msgs_in, c.msgs_out, c.bytes_in)
        while True:
            await asyncio.sleep(1.0)
            now = (c.msgs_in, c.msgs_out, c.bytes_in)
            rates = [a - b for a, b in zip(now, last)]
            last = now
            line = progress_line(self, rates)
            sys.stderr.write(("\r" + line.ljust(118)) if tty else line + "\n")
            sys.stderr.flush()


def progress_line(swarm: Swarm, rates: list[int]) -> str:
    """One line: elapsed, connections, recent ack/staleness p99, traffic, loop lag."""
    def p99(rec: Recorder) -> str:
        v = sorted(rec.take_recent())
        return f"{percentile(v, 99) * 1000:.0f}ms" if v else "-"

    t = time.monotonic() - swarm.t0
    return (f"t={t:5.1f}s bots {swarm.welcomed_now()}/{swarm.s.bots} fail {sum(swarm.failures.values())}"
            f" | ack p99 {p99(swarm.ack)} stale p99 {p99(swarm.stale)}"
            f" | in {rates[0] / 1000:.1f}k msg/s {rates[2] / 1e6:.2f} MB/s out {rates[1] / 1000:.1f}k msg/s"
            f" | lag p99 {p99(swarm.lag)}")


async def _cancel(tasks) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
