"""Weight-only int8 for CPU decode: the engine's `dtype="int8"`.

Decode on a CPU is bound by reading the weights once per step. Each projection (q/k/v and
gate/up fused, see `fuse_projections`) and the output head are stored as int8 with one
scale per output row: a quarter of fp32's bytes. The rest of the model (embeddings, norms,
rotary, attention, the KV cache) stays fp32.

The int8 kernel (`torch.ops.aten._weight_int8pack_mm`, bf16 activations) is a GEMV at
heart: on this AVX2 CPU it is 2-3x faster than fp32 for a handful of rows and slower
than fp32's GEMM from a batch of ~16 up. So each layer also keeps its dequantised
weights in fp32 and picks the kernel by the number of rows in the step: int8 for up to
`max_kernel_rows`, fp32 beyond. Both compute bf16(x) @ (q * scale).T rounded to bf16,
so they agree bit for bit on 99.98% of outputs (the rest by one bf16 step): a sequence's
greedy tokens do not depend on which kernel its batch happened to use.

Parity against fp32 weights (default model, every position of a chat prompt): mean
|logit - fp32 logit| 0.28, top-1 agreement 100% measured; the bound asserted (mean <= 0.6,
top-1 >= 85%) is in tests/npc/test_model_quant.py, the figures in docs/benchmarks.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npc.engine.model import Transformer, fuse_projections

# Steps of up to this many rows (tokens) use the int8 kernel; more use fp32 GEMM.
# Measured crossover on the 2-core AVX2 VM: int8 wins 2-3x at 1-4 rows, ties near 16.
MAX_KERNEL_ROWS = 8


class Int8Linear(nn.Module):
    """y = bf16(x) @ (q * scale).T (+ bias), rounded to bf16, returned in x's dtype.

    q (N, K) int8 and scale (N,) bf16, one scale per output row. `dequant` (N, K) holds
    q * scale in fp32 for steps of more than `max_kernel_rows` rows.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *,
                 max_kernel_rows: int = MAX_KERNEL_ROWS) -> None:
        super().__init__()
        if max_kernel_rows < 0:
            raise ValueError("max_kernel_rows must be >= 0")
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(torch.bfloat16)  # (N,)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("dequant", q.float() * scale.float()[:, None])
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.max_kernel_rows = max_kernel_rows
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (..., K)
        xb = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # (M, K)
        if xb.shape[0] <= self.max_kernel_rows:
            y = torch.ops.aten._weight_int8pack_mm(xb, self.qweight, self.scale)  # (M, N) bf16
        else:
            y = F.linear(xb.float(), self.dequant).to(torch.bfloat16)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def quantize_int8(model: Transformer, *, max_kernel_rows: int = MAX_KERNEL_ROWS) -> Transformer:
    """A copy of fp32 `model` with int8 projections and output head (see the module doc).

    `model` is left unchanged; the copy shares its embeddings and norms. Raises ValueError
    for a model that is not fp32 on the CPU (the int8 kernel choice is CPU-only).
    """
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise ValueError("int8 weight-only quantisation is implemented for fp32 models on the CPU only")
    q = fuse_projections(model)
    for block in q.layers:
        attn, mlp = block.self_attn, block.mlp
        for parent, name in ((attn, "qkv_proj"), (attn, "o_proj"), (mlp, "gate_up_proj"), (mlp, "down_proj")):
            lin = getattr(parent, name)
            setattr(parent, name, Int8Linear(lin.weight, lin.bias, max_kernel_rows=max_kernel_rows))
    head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    q.head_int8 = Int8Linear(head, None, max_kernel_rows=max_kernel_rows)
    q.logits = _int8_logits.__get__(q)  # same signature as Transformer.logits
    return q


def _int8_logits(self: Transformer, hidden: torch.Tensor) -> torch.Tensor:
    """hidden (N, C) -> logits (N, V) fp32, through the int8 head."""
    return self.head_int8(hidden).float()
