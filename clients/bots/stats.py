"""Latency samples with their times: percentiles for the report, per-second series for plots."""
from __future__ import annotations

import math
from array import array


def percentile(sorted_values, q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank; NaN when empty."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    rank = math.ceil(q / 100.0 * n - 1e-9)  # the smallest rank covering q% of the samples
    return sorted_values[max(1, min(n, rank)) - 1]


def summary_ms(values) -> dict:
    """Count, mean and p50/p90/p99/max of latencies in seconds, reported in milliseconds."""
    v = sorted(values)
    if not v:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    r = lambda s: round(s * 1000.0, 2)  # noqa: E731 - local formatter
    return {"n": len(v), "mean": r(sum(v) / len(v)), "p50": r(percentile(v, 50)),
            "p90": r(percentile(v, 90)), "p99": r(percentile(v, 99)), "max": r(v[-1])}


class Recorder:
    """Samples (seconds) with the monotonic time each was taken; append is two array pushes."""

    __slots__ = ("times", "values", "_mark")

    def __init__(self) -> None:
        self.times = array("d")
        self.values = array("d")
        self._mark = 0

    def add(self, value: float, now: float) -> None:
        """Record one sample taken at `now`."""
        self.times.append(now)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)

    def since(self, start: float, end: float = float("inf")) -> list[float]:
        """The samples taken in [start, end)."""
        return [v for t, v in zip(self.times, self.values) if start <= t < end]

    def take_recent(self) -> list[float]:
        """The samples added since the previous call (for the progress line)."""
        out = self.values[self._mark:].tolist()
        self._mark = len(self.values)
        return out

    def series(self, t0: float, step: float = 1.0) -> list[tuple[float, float, float, int]]:
        """Per-`step` buckets from `t0`: (bucket start - t0, p50, p99, count), empty ones left out."""
        buckets: dict[int, list[float]] = {}
        for t, v in zip(self.times, self.values):
            buckets.setdefault(int((t - t0) // step), []).append(v)
        out = []
        for k in sorted(buckets):
            b = sorted(buckets[k])
            out.append((k * step, percentile(b, 50), percentile(b, 99), len(b)))
        return out
