"""Weight-only int8 for CPU decode: the engine's `dtype="int8"`.

Decode on a CPU is bound by reading the weights once per step. Each projection (q/k/v and
gate/up fused, see `fuse_projections`) and the output head are stored as int8 with one
scale per output row: a quarter of fp32's bytes. The rest of the model (embeddings, norms,
rotary, attention, the KV cache) stays fp32.

Every step computes y = bf16(bf16(x) @ q.T) * scale, rounded to bf16: the matmul on the
integer weights first, the row scales after. Two kernels give that same value:
- up to `max_kernel_rows` rows (tokens) in the step, `torch.ops.aten._weight_int8pack_mm`
  (bf16 activations, int8 weights, unit scales): a GEMV at heart, reading 1 byte a weight;
- more rows, a GEMM on the same integers held wider: bf16 (exact for -127..127) where the
  CPU multiplies bf16 natively (AVX512-BF16/AMX, about twice fp32's GEMM speed), else fp32,
  in one of three layouts, whichever this CPU runs faster (`set_layout`): transposed (K, N)
  for `x @ w`, (N, K) for `F.linear`, or prepacked once for oneDNN's matmul ("packed",
  `torch.ops.mkldnn._linear_pointwise`), which saves repacking the weights on every call.
  Measured with torch 2.13's CPU build: `F.linear` took 3-5x longer than `x @ w` for 4-48
  rows on an Ice Lake Xeon, gate/up at 16 rows 1.42 ms against 0.29 ms; on an AVX2-only
  EPYC it was 15-40% faster for gate/up and the head; on a Xeon with AMX the packed bf16
  weights took 25-35% less time than either for 4-96 rows (3072x576 at 48 rows: 0.24 ms
  against 0.33-0.37), where packed fp32 gained nothing.
The engine measures both choices, the layout and the row count where the int8 kernel
stops winning, for each weight shape when it loads: see npc/engine/crossover.py.
Both accumulate in fp32 and round once to bf16 before the scale, so they agree bit for bit
on 99.99% of outputs (the rest one bf16 step apart; measured on 3072x576 weights from 1
to 128 rows): a sequence's greedy tokens do not depend on which kernel its batch used.

Parity against fp32 weights (default model, every position of a chat prompt): the mean
|logit - fp32 logit| and top-1 agreement measured are in docs/benchmarks.md; the bound
asserted (mean <= 0.6, top-1 >= 85%) is in tests/npc/test_model_quant.py.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from npc.engine.model import Transformer, fuse_projections

# Steps of up to this many rows (tokens) use the int8 kernel; more use the wide GEMM. The
# engine measures each shape's crossover for its CPU (npc/engine/crossover.py); this is the
# default of a layer built by hand.
MAX_KERNEL_ROWS = 8


# The wide GEMM's weight layouts (see the module doc and `Int8Linear.set_layout`).
LAYOUTS = ("kn", "nk", "packed")
# The row count oneDNN is told to expect when it packs weights; measured on the AMX Xeon,
# 1 to 128 gave the same times from 4 to 48 rows and 64 was 10-15% faster at 96.
PACK_ROWS_HINT = 64


@functools.cache
def packed_available() -> bool:
    """Whether this torch build can prepack linear weights for oneDNN (the "packed" layout);
    probed once per process (the tuner asks for every weight shape)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        w = torch.ones(2, 2)
        torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), torch.ops.mkldnn._reorder_linear_weight(w, 1),
                                           None, "none", [], "")
        return True
    except (AttributeError, RuntimeError):
        return False


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX; then the wide kernel
    is bf16, else fp32).

    oneDNN's own "bf16 supported" is true on any AVX-512 CPU because it can emulate bf16 there,
    but emulated it is the slowest choice: on an Ice Lake Xeon (AVX-512 without BF16) a 64-row
    bf16 GEMM of 1536x576 took 1.8 ms against 0.55 ms in fp32. So ask for the instructions.
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


class Int8Linear(nn.Module):
    """y = bf16(bf16(x) @ q.T) * scale (+ bias), rounded to bf16, returned in x's dtype.

    q (N, K) int8 and scale (N,) bf16, one scale per output row. `wide` holds q for steps
    of more than `max_kernel_rows` rows, in bf16 or fp32 (`wide_bf16`) and in the layout
    `layout` (see `set_layout`).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *,
                 max_kernel_rows: int = MAX_KERNEL_ROWS, wide_bf16: bool | None = None) -> None:
        super().__init__()
        if max_kernel_rows < 0:
            raise ValueError("max_kernel_rows must be >= 0")
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(torch.bfloat16)  # (N,)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        self.wide_bf16 = native_bf16() if wide_bf16 is None else wide_bf16
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("unit", torch.ones_like(scale))  # the int8 kernel's scales: 1
        # Until set_layout measures otherwise: bf16 (N, K) for F.linear; fp32 (K, N) for x @ wide.
        self.layout = "nk" if self.wide_bf16 else "kn"
        self.register_buffer("wide", self._wide(self.layout))
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.max_kernel_rows = max_kernel_rows
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (..., K)
        flat = x.dim() == 2
        xb = (x if flat else x.reshape(-1, shape[-1])).to(torch.bfloat16)  # (M, K)
        y = self.int8_mm(xb) if xb.shape[0] <= self.max_kernel_rows else self.wide_mm(xb)
        # The bf16 product, rounded once, written straight in x's dtype (one pass, not two).
        y = torch.mul(y, self.scale, out=torch.empty(y.shape, dtype=x.dtype, device=y.device))
        if self.bias is not None:
            y = y + self.bias
        return y if flat else y.reshape(*shape[:-1], self.out_features)

    def int8_mm(self, xb: torch.Tensor) -> torch.Tensor:
        """bf16(xb @ q.T) through the int8 kernel: xb (M, K) bf16 -> (M, N) bf16."""
        return torch.ops.aten._weight_int8pack_mm(xb, self.qweight, self.unit)

    def wide_mm(self, x: torch.Tensor) -> torch.Tensor:
        """The same product through the wide GEMM: x (M, K) bf16-valued -> (M, N) bf16."""
        x = x.to(torch.bfloat16 if self.wide_bf16 else torch.float32)
        if self.layout == "nk":
            y = F.linear(x, self.wide)
        elif self.layout == "kn":
            y = torch.mm(x, self.wide)
        else:
            y = torch.ops.mkldnn._linear_pointwise(x, self.wide, None, "none", [], "")
        return y.to(torch.bfloat16)

    def set_layout(self, layout: str) -> None:
        """Hold the wide weights as (K, N) ("kn", for x @ w), (N, K) ("nk", for F.linear) or
        prepacked for oneDNN ("packed", where `packed_available()`); the same values each way."""
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        if layout != self.layout:
            self.wide = self._wide(layout)
            self.layout = layout

    def _wide(self, layout: str) -> torch.Tensor:
        """q held wider in `layout`."""
        w = self.qweight.to(torch.bfloat16 if self.wide_bf16 else torch.float32)  # (N, K)
        if layout == "kn":
            return w.t().contiguous()
        if layout == "packed":
            return torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS_HINT)
        return w


def quantize_int8(model: Transformer, *, max_kernel_rows: int = MAX_KERNEL_ROWS,
                  head_kernel_rows: int | None = None) -> Transformer:
    """A copy of fp32 `model` with int8 projections and output head (see the module doc);
    the head's kernel takes up to `head_kernel_rows` rows (default: `max_kernel_rows`).

    `model` is left unchanged; the copy shares its embeddings and norms. Raises ValueError
    for a model that is not fp32 on the CPU (the int8 kernel choice is CPU-only).
    """
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise ValueError("int8 weight-only quantisation is implemented for fp32 models on the CPU only")
    q = fuse_projections(model)
    wide_bf16 = native_bf16()
    for block in q.layers:
        attn, mlp = block.self_attn, block.mlp
        for parent, name in ((attn, "qkv_proj"), (attn, "o_proj"), (mlp, "gate_up_proj"), (mlp, "down_proj")):
            lin = getattr(parent, name)
            setattr(parent, name, Int8Linear(lin.weight, lin.bias, max_kernel_rows=max_kernel_rows,
                                             wide_bf16=wide_bf16))
    head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    head_rows = max_kernel_rows if head_kernel_rows is None else head_kernel_rows
    q.head_int8 = Int8Linear(head, None, max_kernel_rows=head_rows, wide_bf16=wide_bf16)
    q.logits = _int8_logits.__get__(q)  # same signature as Transformer.logits
    return q


def _int8_logits(self: Transformer, hidden: torch.Tensor) -> torch.Tensor:
    """hidden (N, C) -> logits (N, V) fp32, through the int8 head."""
    return self.head_int8(hidden).float()
