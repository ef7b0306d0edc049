"""Weight-only int8 (npc.engine.quant): exact kernel semantics on a tiny model, a stated
parity bound on the default model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from npc.engine.model import DenseContext, ModelConfig, Transformer, random_model
from npc.engine.quant import Int8Linear, quantize_int8

# Bound for the default model, fp32 vs int8 weights with bf16 activations, over every
# position of a chat prompt. Measured: mean 0.30, top-1 agreement 94%.
MEAN_ABS_BOUND = 0.6
TOP1_AGREEMENT_MIN = 0.85


def test_int8_linear_equals_its_dequantised_weights():
    """Int8Linear computes x @ (q * scale).T + b: the same as F.linear on the rounded weights."""
    torch.manual_seed(0)
    w, b = torch.randn(48, 64), torch.randn(48)
    lin = Int8Linear(w, b, torch.bfloat16)
    x = torch.randn(5, 64)
    step = w.abs().amax(1) / 127  # (48,) one quantisation step per row
    deq = lin.qweight.float() * lin.scale.float()[:, None]
    # Half a step from rounding, plus up to a quarter step from the scale's bf16 rounding.
    assert ((deq - w).abs().amax(1) <= 0.75 * step).all()
    want = F.linear(x.bfloat16().float(), deq) + b.bfloat16().float()
    assert torch.allclose(lin(x).float(), want, atol=0.05, rtol=0.02)
    assert lin(x.reshape(5, 1, 64)).shape == (5, 1, 48)


def test_quantized_tiny_model_keeps_the_api_and_close_logits():
    """quantize_int8 keeps forward/logits signatures and shapes and stays near the float model."""
    cfg = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position=128, qkv_bias=True, tie_embeddings=False)
    ref = random_model(cfg, seed=1, std=0.1)
    q = quantize_int8(copy.deepcopy(ref))
    ids, pos = torch.tensor([1, 5, 9, 200]), torch.arange(4)
    with torch.inference_mode():
        a = ref.logits(ref(ids, pos, DenseContext()))
        b = q.logits(q(ids, pos, DenseContext()))
    assert b.shape == a.shape and b.dtype == torch.float32
    assert q.rotary.cos.dtype == torch.float32
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def test_int8_default_model_stays_within_the_stated_bound(default_model):
    """On the default model int8 logits stay within the documented mean/top-1 bound of fp32."""
    model, tok = default_model
    q = quantize_int8(copy.deepcopy(model))
    ids = tok.render_chat([{"role": "system", "content": "You are Bram, the village blacksmith."},
                           {"role": "user", "content": "Hello! What do you sell, and what does it cost?"}])
    x, pos = torch.tensor(ids), torch.arange(len(ids))
    with torch.inference_mode():
        a = model.logits(model(x, pos, DenseContext()))
        b = q.logits(q(x, pos, DenseContext()))
    mean = (a - b).abs().mean().item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert mean <= MEAN_ABS_BOUND, mean
    assert agree >= TOP1_AGREEMENT_MIN, agree


def test_quantizing_off_cpu_is_refused():
    """A model not on the CPU is refused with ValueError (the int8 kernel choice is CPU-only)."""
    cfg = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=2, num_kv_heads=2, max_position=16)
    with torch.device("meta"):
        model = Transformer(cfg)
    with pytest.raises(ValueError, match="CPU"):
        quantize_int8(model)
