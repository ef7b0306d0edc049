"""Ground truth: where every bot really is (all share one process), and checks against it.

Two checks run on a sample of bots a few times a second:
- delivery probes: a mover's latest move must reach every observer that stands well inside
  its area of interest before a deadline; those that never see it are missed updates;
- view completeness: an observer's view must hold every bot well inside its area of
  interest, and no bot well outside it ("slack" allows for moves in flight, about one tick).
"""
from __future__ import annotations

import math

from clients.bots.bot import Probe


class Truth:
    """A uniform grid of the bots' last sent poses, rebuilt on each sweep, and the checks."""

    def __init__(self, *, aoi: float, slack_m: float, probe_timeout: float, settle_s: float = 1.0):
        self.aoi = aoi
        self.slack_m = slack_m
        self.probe_timeout = probe_timeout
        self.settle_s = settle_s
        self.cell = max(aoi, 1.0)
        self.grid: dict[tuple[int, int], list] = {}
        self.open_probes: list = []
        # Totals for the report.
        self.probes = self.expected = self.missed = self.undecided = 0
        self.view_checks = self.view_expected = self.view_missing = self.view_extra = 0

    def rebuild(self, bots, now: float) -> None:
        """Index the bots that have been in the world long enough to be seen by others."""
        grid: dict[tuple[int, int], list] = {}
        cell = self.cell
        cutoff = now - self.settle_s
        for b in bots:
            if b.placed and b.welcomed and b.t_welcome <= cutoff:
                grid.setdefault((int(b.x // cell), int(b.z // cell)), []).append(b)
        self.grid = grid

    def near(self, x: float, z: float, radius: float):
        """Indexed bots within `radius` of (x, z) on the x–z plane."""
        cell, grid = self.cell, self.grid
        r2 = radius * radius
        span = int(math.ceil(radius / cell))
        cx, cz = int(x // cell), int(z // cell)
        for i in range(cx - span, cx + span + 1):
            for j in range(cz - span, cz + span + 1):
                for b in grid.get((i, j), ()):
                    if (b.x - x) ** 2 + (b.z - z) ** 2 <= r2:
                        yield b

    # -- delivery probes -------------------------------------------------------------------
    def open_probe(self, mover, now: float) -> None:
        """Expect the mover's latest move at every settled observer well inside its aoi."""
        if mover.probe is not None or mover.seq == 0 or not mover.welcomed:
            return
        rec = mover.history.get((round(mover.x * 100.0), round(mover.z * 100.0)))
        if rec is None or rec[1] is None:
            return
        seq, mid = rec[0], mover.id
        owed = [b for b in self.near(mover.x, mover.z, self.aoi - self.slack_m)
                if b.observer and b is not mover]
        if not owed:
            return
        # The move may already have arrived at some observers before this sweep.
        pending = {b.index for b in owed if b.seen.get(mid, -1) < seq}
        probe = Probe(seq, rec[1], rec[1] + self.probe_timeout, pending)
        probe.expected = len(owed)
        mover.probe = probe
        self.open_probes.append((mover, probe))

    def close_probes(self, bots, now: float, *, final: bool = False) -> None:
        """Count observers that never saw their probed move by the deadline as missed.

        An observer that meanwhile walked (or was walked past) out of the mover's area of
        interest is forgiven: it was no longer owed the update.
        """
        keep = []
        for mover, probe in self.open_probes:
            if probe.deadline > now and not final:
                keep.append((mover, probe))
                continue
            if probe.pending and mover.last_acked[0] < probe.seq + 2:
                # The shard may have clamped the probed move to no movement at all (moves that
                # arrive bunched together); only a later applied move proves what observers
                # should have seen. Undecided until then, and dropped if the run ends first.
                if final:
                    self.undecided += 1
                    mover.probe = None
                else:
                    keep.append((mover, probe))
                continue
            missed = 0
            r2 = (self.aoi - self.slack_m) ** 2
            for idx in probe.pending:
                b = bots[idx]
                if b.welcomed and not b.closed and (b.x - mover.x) ** 2 + (b.z - mover.z) ** 2 <= r2:
                    missed += 1
            forgiven = len(probe.pending) - missed
            self.probes += 1
            self.expected += probe.expected - forgiven
            self.missed += missed
            mover.probe = None
        self.open_probes = keep

    # -- view completeness -----------------------------------------------------------------
    def check_view(self, observer, now: float) -> None:
        """Compare one observer's view with the bots that ground truth puts in its aoi."""
        if not (observer.observer and observer.welcomed and observer.placed):
            return
        if now - observer.t_welcome < self.settle_s:
            return
        view = observer.view
        inner = self.aoi - self.slack_m
        outer2 = (self.aoi + self.slack_m) ** 2
        must = [b for b in self.near(observer.x, observer.z, inner) if b is not observer]
        self.view_checks += 1
        self.view_expected += len(must)
        self.view_missing += sum(1 for b in must if b.id not in view)
        by_id = observer.swarm.by_id
        for eid in view:
            b = by_id.get(eid)
            if b is not None and b is not observer and b.welcomed and b.t_welcome <= now - self.settle_s:
                if (b.x - observer.x) ** 2 + (b.z - observer.z) ** 2 > outer2:
                    self.view_extra += 1

    def report(self) -> dict:
        """Totals of both checks."""
        ratio = None
        if self.view_expected:
            ratio = round(1.0 - self.view_missing / self.view_expected, 5)
        return {
            "missed_updates": {"probes": self.probes, "expected": self.expected,
                               "delivered": self.expected - self.missed, "missed": self.missed,
                               "undecided": self.undecided, "timeout_s": self.probe_timeout},
            "completeness": {"checks": self.view_checks, "expected": self.view_expected,
                             "missing": self.view_missing, "extra": self.view_extra,
                             "ratio": ratio, "slack_m": round(self.slack_m, 3)},
        }
