"""Engine metrics: gauges, counters and latency histograms, as a dict or Prometheus text.

Written by the engine thread, read from anywhere: one lock guards it all, held only for
a few dictionary updates.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import deque

# Seconds. Decode steps on CPU take tens of milliseconds, first tokens up to seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Cumulative buckets for Prometheus, plus a window of recent values for quantiles."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS, window: int = 8192) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, value: float) -> None:
        """Record one value."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1
        self.recent.append(value)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) of the recent window, or None when empty."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def prometheus(self, name: str) -> list[str]:
        """Exposition lines for this histogram."""
        lines, running = [f"# TYPE {name} histogram"], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


class EngineMetrics:
    """Everything the engine reports about itself."""

    def __init__(self, rate_window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self.ttft = Histogram()
        self.itl = Histogram()
        self.gauges = {"waiting": 0, "running": 0, "kv_blocks_used": 0, "kv_blocks_total": 0}
        self.counters = {"prompt_tokens": 0, "cached_prompt_tokens": 0, "completion_tokens": 0,
                         "steps": 0, "preemptions": 0, "rejected_busy": 0}
        self.finished: dict[str, int] = {}
        self._rate_window_s = rate_window_s
        self._recent_tokens: deque[tuple[float, int]] = deque()

    def step(self, *, waiting: int, running: int, kv_used: int, kv_total: int,
             new_tokens: int, preemptions: int, now: float | None = None) -> None:
        """Record one engine step."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.gauges.update(waiting=waiting, running=running, kv_blocks_used=kv_used,
                               kv_blocks_total=kv_total)
            self.counters["steps"] += 1
            self.counters["completion_tokens"] += new_tokens
            self.counters["preemptions"] = preemptions
            self._recent_tokens.append((now, new_tokens))
            while self._recent_tokens and self._recent_tokens[0][0] < now - self._rate_window_s:
                self._recent_tokens.popleft()

    def admitted(self, prompt_tokens: int, cached_tokens: int) -> None:
        """Record a request entering the running batch for the first time."""
        with self._lock:
            self.counters["prompt_tokens"] += prompt_tokens
            self.counters["cached_prompt_tokens"] += cached_tokens

    def latency(self, *, ttft: float | None = None, itl: float | None = None) -> None:
        """Record a first-token latency or an inter-token gap (seconds)."""
        with self._lock:
            if ttft is not None:
                self.ttft.observe(ttft)
            if itl is not None:
                self.itl.observe(itl)

    def finish(self, reason: str) -> None:
        """Count a finished request by its finish reason."""
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def rejected(self) -> None:
        """Count a submit refused with Busy."""
        with self._lock:
            self.counters["rejected_busy"] += 1

    def _tokens_per_s(self) -> float:
        if len(self._recent_tokens) < 2:
            return 0.0
        span = self._recent_tokens[-1][0] - self._recent_tokens[0][0]
        return sum(n for _, n in list(self._recent_tokens)[1:]) / span if span > 0 else 0.0

    def snapshot(self) -> dict[str, float | int | None]:
        """A flat dict of current values (latencies in seconds)."""
        with self._lock:
            prompt, cached = self.counters["prompt_tokens"], self.counters["cached_prompt_tokens"]
            total = self.gauges["kv_blocks_total"]
            return {
                "queue_depth": self.gauges["waiting"],
                "running": self.gauges["running"],
                "kv_usage": self.gauges["kv_blocks_used"] / total if total else 0.0,
                "kv_blocks_used": self.gauges["kv_blocks_used"],
                "kv_blocks_total": total,
                "prefix_hit_rate": cached / prompt if prompt else 0.0,
                "tokens_per_s": self._tokens_per_s(),
                "ttft_p50_s": self.ttft.quantile(0.5),
                "ttft_p99_s": self.ttft.quantile(0.99),
                "itl_p50_s": self.itl.quantile(0.5),
                "itl_p99_s": self.itl.quantile(0.99),
                **self.counters,
                **{f"finished_{k}": v for k, v in self.finished.items()},
            }

    def prometheus(self, prefix: str = "npc_engine") -> str:
        """Prometheus text exposition of every metric."""
        snap = self.snapshot()
        lines: list[str] = []
        for key in ("queue_depth", "running", "kv_usage", "prefix_hit_rate", "tokens_per_s"):
            lines += [f"# TYPE {prefix}_{key} gauge", f"{prefix}_{key} {snap[key]}"]
        with self._lock:
            for key, value in self.counters.items():
                lines += [f"# TYPE {prefix}_{key}_total counter", f"{prefix}_{key}_total {value}"]
            lines.append(f"# TYPE {prefix}_finished_total counter")
            lines += [f'{prefix}_finished_total{{reason="{k}"}} {v}' for k, v in sorted(self.finished.items())]
            lines += self.ttft.prometheus(f"{prefix}_ttft_seconds")
            lines += self.itl.prometheus(f"{prefix}_itl_seconds")
        return "\n".join(lines) + "\n"
