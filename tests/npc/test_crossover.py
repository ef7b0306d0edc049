"""The int8 kernel's crossover, measured at load (npc.engine.crossover): the choice rule,
and tuning a model leaves its outputs as they were."""
from __future__ import annotations

import torch

from npc.engine import crossover
from npc.engine.model import DenseContext
from npc.engine.quant import Int8Linear, packed_available, quantize_int8
from npc.engine.tiny import tiny_model


def test_crossover_is_the_last_row_count_before_the_int8_kernel_first_loses():
    rows = (1, 2, 4, 8, 16)
    assert crossover.crossover(rows, [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]) == 16
    assert crossover.crossover(rows, [1, 1, 3, 1, 1], [2, 2, 2, 2, 2]) == 2  # no skipping a loss
    assert crossover.crossover(rows, [3, 1], [2, 2]) == 0
    assert crossover.crossover(rows, [2, 2, 5], [2, 2, 4]) == 2  # a tie keeps the int8 kernel
    assert crossover.crossover(rows, [], []) == 0


def test_layout_is_chosen_by_the_ratios_so_few_rows_count_as_much_as_many():
    # Ice Lake's shape: x @ w (kn) 4x faster at 8 and 32 rows, a little slower at 128.
    assert crossover.layout_choice({"kn": [0.3, 0.6, 5.0], "nk": [1.2, 2.4, 4.8]}) == "kn"
    # The AVX2 EPYC's gate/up: F.linear (nk) faster everywhere.
    assert crossover.layout_choice({"kn": [1.7, 3.8, 5.7], "nk": [0.8, 2.8, 4.9]}) == "nk"
    # The AMX Xeon's bf16 gate/up: packed weights a third faster at every row count.
    assert crossover.layout_choice({"nk": [0.29, 0.33, 0.43], "packed": [0.19, 0.24, 0.30]}) == "packed"
    # Of three, the least product wins, and a tie keeps the first (the layer's own).
    assert crossover.layout_choice({"kn": [1.0, 4.0], "nk": [2.0, 1.9], "packed": [3.0, 1.0]}) == "packed"
    assert crossover.layout_choice({"kn": [1.0], "nk": [1.0]}) == "kn"


def test_candidate_layouts_start_with_the_layers_own_and_offer_packed_where_torch_can():
    fp32 = Int8Linear(torch.randn(8, 16), None, wide_bf16=False)
    bf16 = Int8Linear(torch.randn(8, 16), None, wide_bf16=True)
    packed = ("packed",) if packed_available() else ()
    assert crossover.candidate_layouts(fp32) == ("kn", "nk", *packed)
    assert crossover.candidate_layouts(bf16) == ("nk", *packed)


def test_measure_stops_at_the_first_loss_and_reports_what_it_timed():
    torch.manual_seed(0)
    layer = Int8Linear(torch.randn(64, 32), None, max_kernel_rows=0, wide_bf16=False)
    limit, int8_ms, wide_ms = crossover.measure([layer], crossover.Timer(rounds=1, flush_bytes=1 << 20), rows=(1, 2, 4))
    assert len(int8_ms) == len(wide_ms) >= 1 and all(t > 0 for t in int8_ms + wide_ms)
    assert limit == crossover.crossover((1, 2, 4), int8_ms, wide_ms)
    lost = [a > b for a, b in zip(int8_ms, wide_ms)]
    assert lost.count(True) <= 1 and (not any(lost) or lost[-1])  # nothing timed past a loss
    assert layer.max_kernel_rows == 0  # measuring sets nothing


class ScriptedTimer:
    """Runs each timed call once and returns the next scripted time, counting the calls."""

    def __init__(self, times: list[float]) -> None:
        self.times = list(times)
        self.calls = 0

    def best_ms(self, fn) -> float:
        fn()
        self.calls += 1
        return self.times.pop(0)


def test_a_loss_is_timed_again_before_it_ends_the_scan():
    layer = Int8Linear(torch.randn(64, 32), None, max_kernel_rows=0, wide_bf16=False)
    # 1 row: int8 1.0 vs wide 2.0. 2 rows: a slow int8 call (3.0 vs 2.0), but the second
    # look says 1.5 vs 2.5: each keeps its better time, so the scan goes on. 4 rows: int8
    # loses twice (3.0 vs 2.0, then 2.8 vs 2.2) and the scan ends there.
    timer = ScriptedTimer([1.0, 2.0, 3.0, 2.0, 1.5, 2.5, 3.0, 2.0, 2.8, 2.2])
    limit, int8_ms, wide_ms = crossover.measure([layer], timer, rows=(1, 2, 4, 8))
    assert (limit, int8_ms, wide_ms) == (2, (1.0, 1.5, 2.8), (2.0, 2.0, 2.0))
    assert timer.calls == 10 and not timer.times  # nothing timed at 8 rows
    # A win is not timed again.
    timer = ScriptedTimer([1.0, 2.0, 1.0, 2.0])
    assert crossover.measure([layer], timer, rows=(1, 2))[0] == 2 and timer.calls == 4


def test_tune_sets_every_layer_of_a_shape_alike_and_keeps_the_logits():
    """Every int8 layer of one shape gets the same limit and layout; the head is measured
    as its own shape; max_rows caps the row counts tried; the logits stay the same up to
    the kernels' shared rounding."""
    model = quantize_int8(tiny_model(seed=3), max_kernel_rows=0, head_kernel_rows=0)
    ids = torch.arange(40) % model.cfg.vocab_size
    pos = torch.arange(40)
    with torch.inference_mode():
        before = model.logits(model(ids, pos, DenseContext()))
    found = crossover.tune_model(model, max_rows=16)
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    shapes = {(m.out_features, m.in_features) for m in layers}
    assert {c.shape for c in found} == shapes
    assert sum(c.layers for c in found) == len(layers)
    for c in found:
        group = [m for m in layers if (m.out_features, m.in_features) == c.shape]
        assert {(m.max_kernel_rows, m.layout) for m in group} == {(c.max_kernel_rows, c.layout)}
        assert c.max_kernel_rows <= 16 and c.layout in crossover.candidate_layouts(group[0])
        if c.layout != "packed":  # oneDNN's packed weights have a shape of its own
            assert all(w.shape == ((m.out_features, m.in_features) if c.layout == "nk"
                                   else (m.in_features, m.out_features)) for m in group for w in [m.wide])
    with torch.inference_mode():
        after = model.logits(model(ids, pos, DenseContext()))
    assert (before.argmax(-1) == after.argmax(-1)).all()
    assert (before - after).abs().max().item() < 0.05


def test_tune_model_can_leave_the_projections_or_the_head_alone():
    model = quantize_int8(tiny_model(seed=4), max_kernel_rows=5, head_kernel_rows=7)
    found = crossover.tune_model(model, projections=False, head=True, max_rows=4)
    assert [c.layers for c in found] == [1]
    assert all(m.max_kernel_rows == 5 for m in model.modules()
               if isinstance(m, Int8Linear) and m is not model.head_int8)
    assert model.head_int8.max_kernel_rows in (0, 1, 2, 4)
    assert crossover.tune_model(model, projections=False, head=False) == []
    # The head's rows have their own cap (one a sampling sequence).
    [head] = crossover.tune_model(model, projections=False, max_rows=64, head_rows=2)
    assert head.max_kernel_rows in (0, 1, 2) and len(head.int8_ms) <= 2
