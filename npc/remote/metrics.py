"""What the shard knows about its remote NPC workers, for its /metrics.

Shaped like `npc.engine.metrics.EngineMetrics` (`snapshot()`, `prometheus()`), so the shard
shows either kind of engine the same way: the workers' own figures (summed, and one series
per worker) plus what only the shard can see (time to first token across the broker,
answers offered again, workers lost, duplicates dropped).
"""
from __future__ import annotations

from npc.engine.metrics import Histogram


class AnswerTally:
    """What a shard counts of the answers an engine outside its thread gave: how each ended,
    tokens, time to first token. Shared by the remote and the child-process engines."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.ttft = Histogram()
        self.finished_by: dict[str, int] = {}
        self.completion_tokens = 0

    def finished(self, result) -> None:
        """Record one ended answer."""
        self.finished_by[result.finish_reason] = self.finished_by.get(result.finish_reason, 0) + 1
        self.completion_tokens += result.completion_tokens
        if result.timings.ttft_s is not None:
            self.ttft.observe(result.timings.ttft_s)


class RemoteMetrics(AnswerTally):
    """Counters kept by a RemoteEngine, plus its workers' last load reports."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.busy_local = 0       # refused at submit: no broker, no worker, all full
        self.busy_remote = 0      # refused by a worker
        self.reoffered = 0        # requests offered to the workers again
        self.workers_lost = 0
        self.duplicates = 0       # duplicate deliveries dropped (pieces, or a second worker)

    def snapshot(self) -> dict[str, float | int | None]:
        """A flat dict of current values (latencies in seconds), keys as the engine's where shared."""
        workers = self._engine.live_workers()
        return {
            "workers": len(workers),
            "queue_depth": sum(w.waiting for w in workers),
            "running": sum(w.running for w in workers),
            "capacity": sum(w.capacity for w in workers),
            "tokens_per_s": round(sum(w.tokens_per_s for w in workers), 1),
            "in_flight": self._engine.in_flight,
            "ttft_p50_s": self.ttft.quantile(0.5),
            "ttft_p99_s": self.ttft.quantile(0.99),
            "completion_tokens": self.completion_tokens,
            "rejected_busy": self.busy_local + self.busy_remote,
            "reoffered": self.reoffered,
            "workers_lost": self.workers_lost,
            "duplicates": self.duplicates,
            **{f"finished_{k}": v for k, v in self.finished_by.items()},
        }

    def prometheus(self, prefix: str = "npc_remote") -> str:
        """Prometheus text: totals, one series per worker, and the shard-side TTFT histogram."""
        snap = self.snapshot()
        lines: list[str] = []
        for key in ("workers", "queue_depth", "running", "capacity", "tokens_per_s", "in_flight"):
            lines += [f"# TYPE {prefix}_{key} gauge", f"{prefix}_{key} {snap[key]}"]
        for key in ("completion_tokens", "rejected_busy", "reoffered", "workers_lost", "duplicates"):
            lines += [f"# TYPE {prefix}_{key}_total counter", f"{prefix}_{key}_total {snap[key]}"]
        lines.append(f"# TYPE {prefix}_finished_total counter")
        lines += [f'{prefix}_finished_total{{reason="{k}"}} {v}' for k, v in sorted(self.finished_by.items())]
        for field in ("running", "waiting", "in_flight", "tokens_per_s"):
            lines.append(f"# TYPE {prefix}_worker_{field} gauge")
            lines += [f'{prefix}_worker_{field}{{worker="{w.worker}"}} {getattr(w, field)}'
                      for w in sorted(self._engine.workers.values(), key=lambda w: w.worker)]
        lines += self.ttft.prometheus(f"{prefix}_ttft_seconds")
        return "\n".join(lines) + "\n"
