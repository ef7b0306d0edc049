"""Where the int8 kernel stops paying, measured on this CPU when the engine loads.

An int8 layer (`npc/engine/quant.py`) has two kernels giving the same values: the int8
kernel, which reads a quarter of fp32's bytes but computes like a GEMV, and a GEMM on the
same integers held wider. Which one is faster for a pass of M tokens depends on the CPU far
more than on the model. Measured on the kinds of 2-core host this project has run on
(projections / 49152-row head, the largest M at which the int8 kernel still won):

- AMD EPYC with AVX512-BF16 (bf16 GEMM): 4 / 4;
- Intel Ice Lake, AVX-512 without BF16 (fp32 GEMM): 6 / 16;
- AMD EPYC with AVX2 only (fp32 GEMM): 8 to 64, mostly 16-32, varying by shape and by
  load, and there `F.linear` on (N, K) weights beat `x @ w` on (K, N) by 15-40% for
  gate/up and the head, where Ice Lake was 3-5x the other way;
- Intel Xeon with AMX (bf16 GEMM): 8 / 4, 16-32 for the 576x576 output projection.

No rule on CPU flags predicts all of that, so the engine measures it: for each distinct
weight shape, a few layers time both kernels at growing M until the int8 kernel loses, and
every layer of that shape takes the answer (the head only up to `max_running` rows: it
sees one row a sampling sequence). The wide GEMM's fastest weight layout is measured
first: (K, N), (N, K), or prepacked for oneDNN, which on a Xeon with AMX ran the bf16 GEMM
25-35% faster than the others. Each timed call starts with cold caches, as in a forward
pass (see Timer). This costs one to a few seconds at load (a slow CPU that keeps the int8
kernel longest pays the most) and changes no output beyond the kernels' rounding, which is
the same either way (see quant.py).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from npc.engine.quant import Int8Linear, packed_available

log = logging.getLogger(__name__)

# Row counts tried, in order; a step never holds more than the engine's token budget.
ROWS = (1, 2, 4, 8, 16, 32, 64, 128)
# Row counts at which the wide layouts are compared (where the wide GEMM runs). Few rows
# matter as much as many: on Ice Lake `x @ w` won 3-5x from 4 to 48 rows and tied from 64
# on, so the choice is by the product of the ratios, not by the summed times.
LAYOUT_ROWS = (8, 32, 128)
ROUNDS = 2  # each time is the best of this many
SAMPLE_LAYERS = 2  # layers of one shape timed together
FLUSH_BYTES = 64 << 20  # read before each timed call, to start it with cold caches


@dataclass(frozen=True, slots=True)
class Crossover:
    """What was measured for one weight shape, and the choice made from it."""

    shape: tuple[int, int]  # (N, K): outputs, inputs
    layers: int  # how many layers of the model have this shape
    max_kernel_rows: int  # passes of up to this many tokens take the int8 kernel
    layout: str  # the wide GEMM's weights: "nk" (F.linear), "kn" (x @ w) or "packed" (oneDNN)
    int8_ms: tuple[float, ...]  # per row count tried, in ROWS order
    wide_ms: tuple[float, ...]

    def describe(self) -> str:
        n, k = self.shape
        return f"{n}x{k} (x{self.layers}) int8 up to {self.max_kernel_rows} rows, then {self.layout}"


def crossover(rows: Sequence[int], int8_ms: Sequence[float], wide_ms: Sequence[float]) -> int:
    """The largest row count up to which the int8 kernel measured no slower than the wide
    GEMM at every row count tried (0: it lost at the first)."""
    best = 0
    for m, a, b in zip(rows, int8_ms, wide_ms):
        if a > b:
            break
        best = m
    return best


def layout_choice(times: dict[str, Sequence[float]]) -> str:
    """The layout whose times, multiplied over the row counts tried, are the least: the
    product of its time ratios to any other is below 1. `times` maps each layout tried to
    its times, in order of preference: a tie keeps the earlier (the one a layer starts with)."""
    return min(times, key=lambda layout: math.prod(times[layout]))


class Timer:
    """Times kernels as a forward pass meets them: with cold caches. In a pass every layer's
    weights were last read a whole pass ago, so they come from memory; a layer timed over
    and over alone would be served from the CPU's cache (a 3072x576 fp32 GEMM measured ~3x
    faster that way here). So each timed call is preceded by reading a buffer as large as
    the model's int8 weights (at most FLUSH_BYTES, more than any L3 this project met; a
    small model's weights stay cached in real passes too), and a call runs the kernel over
    a few layers of the shape."""

    def __init__(self, rounds: int = ROUNDS, flush_bytes: int = FLUSH_BYTES) -> None:
        self.rounds = rounds
        self._flush = torch.ones(max(flush_bytes // 4, 1), dtype=torch.float32)

    def best_ms(self, fn: Callable[[], object]) -> float:
        """Best wall time of `rounds` calls of `fn`, each after a cache flush, in ms (the
        first call also warms the allocator and thread pool up)."""
        best = float("inf")
        for _ in range(self.rounds):
            self._flush.sum()
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best * 1e3


def flush_bytes_for(layers: Iterable[Int8Linear]) -> int:
    """What one pass reads of `layers`' int8 weights, at most FLUSH_BYTES."""
    return min(FLUSH_BYTES, sum(layer.qweight.nbytes for layer in layers))


def _activations(m: int, layer: Int8Linear) -> torch.Tensor:
    """(m, K) bf16: what the layer's forward hands either kernel."""
    return torch.randn(m, layer.in_features).to(torch.bfloat16)


def candidate_layouts(layer: Int8Linear) -> tuple[str, ...]:
    """The wide layouts worth timing for `layer`, the one it starts with first: bf16 weights
    (a native bf16 CPU) as (N, K) or packed; fp32 also as (K, N)."""
    packed = ("packed",) if packed_available() else ()
    if layer.wide_bf16:
        return ("nk", *packed)
    return ("kn", "nk", *packed)


def pick_layout(layers: Sequence[Int8Linear], timer: Timer, rows: Iterable[int] = LAYOUT_ROWS) -> str:
    """Set (and return) the fastest wide layout for `layers` (one shape), by the product of
    the time ratios over `rows`."""
    candidates = candidate_layouts(layers[0])
    if len(candidates) == 1:
        return candidates[0]
    xs = [_activations(m, layers[0]) for m in rows]
    times: dict[str, list[float]] = {}
    for layout in candidates:
        for layer in layers:
            layer.set_layout(layout)
        times[layout] = [timer.best_ms(lambda: [layer.wide_mm(x) for layer in layers]) for x in xs]
    chosen = layout_choice(times)
    for layer in layers:
        layer.set_layout(chosen)
    return chosen


def measure(layers: Sequence[Int8Linear], timer: Timer, rows: Sequence[int] = ROWS
            ) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Time both kernels over `layers` (one shape) at growing row counts until the int8
    kernel loses; returns the crossover and the times measured.

    A loss is timed again before it ends the scan (each kernel keeps its better time): one
    slow call of the int8 kernel at few rows would otherwise send every pass of this shape
    to the wide GEMM. On a noisy host (the AMX Xeon, six loads in one process) the limit of
    one shape came out 4, 16, 8, 0, 16 and 16 rows without this second look."""
    int8_ms: list[float] = []
    wide_ms: list[float] = []
    for m in rows:
        xb = _activations(m, layers[0])

        def both() -> tuple[float, float]:
            return (timer.best_ms(lambda: [layer.int8_mm(xb) for layer in layers]),
                    timer.best_ms(lambda: [layer.wide_mm(xb) for layer in layers]))

        a, b = both()
        if a > b:
            a2, b2 = both()
            a, b = min(a, a2), min(b, b2)
        int8_ms.append(a)
        wide_ms.append(b)
        if a > b:
            break
    return crossover(rows, int8_ms, wide_ms), tuple(int8_ms), tuple(wide_ms)


def tune(layers: Sequence[Int8Linear], *, max_rows: int = ROWS[-1], timer: Timer | None = None
         ) -> list[Crossover]:
    """Measure each distinct shape among `layers` once (over up to SAMPLE_LAYERS of them)
    and set every layer of that shape: the wide layout, then the int8 kernel's row limit.
    Row counts above `max_rows` (the largest pass the engine makes) are not tried. `timer`
    defaults to one flushing what a pass reads of `layers`' weights."""
    timer = timer or Timer(ROUNDS, flush_bytes_for(layers))
    rows = tuple(m for m in ROWS if m <= max_rows) or (1,)
    groups: dict[tuple[int, int], list[Int8Linear]] = {}
    for layer in layers:
        groups.setdefault((layer.out_features, layer.in_features), []).append(layer)
    found = []
    with torch.inference_mode():
        for shape, group in groups.items():
            sample = group[:SAMPLE_LAYERS]
            layout = pick_layout(sample, timer, tuple(m for m in LAYOUT_ROWS if m <= max_rows) or (1,))
            limit, int8_ms, wide_ms = measure(sample, timer, rows)
            for layer in group:
                layer.set_layout(layout)
                layer.max_kernel_rows = limit
            found.append(Crossover(shape, len(group), limit, layout, int8_ms, wide_ms))
    return found


def tune_model(model: torch.nn.Module, *, projections: bool = True, head: bool = True,
               max_rows: int = ROWS[-1], head_rows: int | None = None) -> list[Crossover]:
    """`tune` the int8 projections (passes of up to `max_rows` tokens) and/or the output
    head (up to `head_rows` rows, default `max_rows`: the head only sees the rows that
    sample, one a sequence) of a `quantize_int8` model, logging what it chose and how
    long measuring took."""
    head_layer = getattr(model, "head_int8", None)
    every = [m for m in model.modules() if isinstance(m, Int8Linear)]
    jobs = []
    if projections:
        jobs.append(([m for m in every if m is not head_layer], max_rows))
    if head and head_layer is not None:
        jobs.append(([head_layer], max_rows if head_rows is None else head_rows))
    jobs = [(layers, rows) for layers, rows in jobs if layers]
    if not jobs:
        return []
    t = time.perf_counter()
    timer = Timer(ROUNDS, flush_bytes_for(every))  # a pass reads every layer, tuned or not
    found = [c for layers, rows in jobs for c in tune(layers, max_rows=rows, timer=timer)]
    log.info("int8 kernel crossovers measured in %.1f s: %s", time.perf_counter() - t,
             "; ".join(c.describe() for c in found))
    return found
