"""A tiny metrics registry of our own: counters, gauges, histograms -> Prometheus text."""
from __future__ import annotations

import bisect
import math


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels

    def header(self) -> list[str]:
        """The HELP and TYPE lines."""
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count, optionally split by labels."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        """Add `by` to the series named by `labels`."""
        self.values[labels] = self.values.get(labels, 0.0) + by

    def get(self, *labels: str) -> float:
        """The current value of one series (0 when never incremented)."""
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        """This metric's lines of Prometheus text."""
        lines = self.header()
        if not self.values and not self.label_names:
            lines.append(f"{self.name} 0")
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, key)} {_num(value)}")
        return lines


class Gauge(_Metric):
    """A value read at render time from a callable."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read) -> None:
        super().__init__(name, help)
        self.read = read

    def render(self) -> list[str]:
        """This metric's lines of Prometheus text."""
        return self.header() + [f"{self.name} {_num(self.read())}"]


class Histogram(_Metric):
    """Observations counted into cumulative buckets (upper bounds in seconds or bytes)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help)
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        """This metric's lines of Prometheus text."""
        lines = self.header()
        running = 0
        for bound, n in zip(self.bounds + (math.inf,), self.counts):
            running += n
            lines.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {running}')
        lines += [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]
        return lines


class Registry:
    """Holds metrics in registration order and renders them all."""

    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def add(self, metric):
        """Register `metric` and return it."""
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        """The whole registry in Prometheus text exposition format."""
        lines: list[str] = []
        for metric in self.metrics:
            lines += metric.render()
        return "\n".join(lines) + "\n"


_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ShardMetrics:
    """The shard's metrics, by name, with the online-players gauge bound to a callable."""

    def __init__(self, players_online, connections_open=lambda: 0) -> None:
        r = self.registry = Registry()
        r.add(Gauge("worldsmith_players_online", "Players online on this shard.", players_online))
        r.add(Gauge("worldsmith_connections_open", "WebSocket connections open, with or without hello.",
                    connections_open))
        self.tick_seconds = r.add(Histogram("worldsmith_tick_seconds", "Time to compute and send one tick.", _LATENCY))
        self.messages_in = r.add(Counter("worldsmith_messages_in_total", "Messages received, by type.", ("type",)))
        self.bytes_in = r.add(Counter("worldsmith_bytes_in_total", "Bytes received, by message type.", ("type",)))
        self.messages_out = r.add(Counter("worldsmith_messages_out_total", "Messages sent, by type.", ("type",)))
        self.bytes_out = r.add(Counter("worldsmith_bytes_out_total", "Bytes sent, by message type.", ("type",)))
        self.errors = r.add(Counter("worldsmith_errors_total", "Error replies sent, by code.", ("code",)))
        self.closes = r.add(Counter("worldsmith_closes_total", "Connections closed by the shard, by close code.", ("code",)))
        self.db_seconds = r.add(Histogram("worldsmith_db_write_seconds", "Latency of acknowledged database writes.", _LATENCY))
        self.send_drops = r.add(Counter("worldsmith_send_buffer_drops_total",
                                        "State frames skipped because a client's send buffer was over the limit."))
        self.stuck_drops = r.add(Counter("worldsmith_stuck_clients_dropped_total",
                                         "Clients dropped for staying over the send-buffer limit."))

    def render(self) -> str:
        """Prometheus text for /metrics."""
        return self.registry.render()
