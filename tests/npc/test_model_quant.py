"""Weight-only int8 (npc.engine.quant): exact kernel semantics on a tiny model, the two
kernels agreeing, fused projections, and a stated parity bound on the default model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from npc.engine.model import DenseContext, ModelConfig, Transformer, fuse_projections, random_model
from npc.engine.quant import Int8Linear, native_bf16, packed_available, quantize_int8

# Bound for the default model, fp32 vs int8 weights (bf16 activations into the int8
# projections, fp32 elsewhere), over every position of a chat prompt. Measured: mean
# |dlogit| 0.28, top-1 agreement 100% (docs/benchmarks.md).
MEAN_ABS_BOUND = 0.6
TOP1_AGREEMENT_MIN = 0.85


def test_int8_linear_equals_its_dequantised_weights():
    """Int8Linear computes x @ (q * scale).T + b: the same as F.linear on the rounded weights."""
    torch.manual_seed(0)
    w, b = torch.randn(48, 64), torch.randn(48)
    lin = Int8Linear(w, b)
    x = torch.randn(5, 64)
    step = w.abs().amax(1) / 127  # (48,) one quantisation step per row
    deq = lin.qweight.float() * lin.scale.float()[:, None]
    # Half a step from rounding, plus up to a quarter step from the scale's bf16 rounding.
    assert ((deq - w).abs().amax(1) <= 0.75 * step).all()
    want = F.linear(x.bfloat16().float(), deq) + b
    assert lin(x).dtype == torch.float32
    assert torch.allclose(lin(x), want, atol=0.05, rtol=0.02)
    assert lin(x.reshape(5, 1, 64)).shape == (5, 1, 48)


def test_quantized_tiny_model_keeps_the_api_and_close_logits():
    """quantize_int8 keeps forward/logits signatures and shapes and stays near the float model."""
    cfg = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position=128, qkv_bias=True, tie_embeddings=False)
    ref = random_model(cfg, seed=1, std=0.1)
    q = quantize_int8(ref)
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
    q = quantize_int8(model)
    ids = tok.render_chat([{"role": "system", "content": "You are Bram, the village blacksmith."},
                           {"role": "user", "content": "Hello! What do you sell, and what does it cost?"}])
    x, pos = torch.tensor(ids), torch.arange(len(ids))
    with torch.inference_mode():
        a = model.logits(model(x, pos, DenseContext()))
        b = q.logits(q(x, pos, DenseContext()))
    mean = (a - b).abs().mean().item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    print(f"int8 vs fp32: mean |dlogit| {mean:.3f}, top-1 agreement {agree:.3f}")
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


def tiny_cfg() -> ModelConfig:
    return ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2, max_position=128, qkv_bias=True, tie_embeddings=False)


@pytest.mark.parametrize("wide_bf16", [True, False], ids=["bf16-gemm", "fp32-gemm"])
def test_int8_kernel_and_wide_gemm_agree_bit_for_bit_nearly_everywhere(wide_bf16: bool):
    """Below and above max_kernel_rows the same int8 layer gives the same bf16-rounded outputs
    (99%+ identical, the rest one bf16 step apart), whichever wide GEMM the CPU gets, so
    batch size does not steer tokens."""
    torch.manual_seed(0)
    w = torch.randn(256, 128) * 0.05
    small = Int8Linear(w, None, max_kernel_rows=64, wide_bf16=wide_bf16)
    large = Int8Linear(w, None, max_kernel_rows=0, wide_bf16=wide_bf16)
    x = torch.randn(32, 128)
    with torch.inference_mode():
        a, b = small(x), large(x)
    same = (a == b).float().mean().item()
    step = a.abs().clamp(min=1e-30) * 2.0 ** -7  # one bf16 step at each value
    assert same >= 0.99, same
    assert ((a - b).abs() <= step + 1e-12).all()


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_native_bf16_means_the_instructions_not_onednns_emulation():
    """The wide GEMM is bf16 only where the CPU has AVX512-BF16 or AMX: oneDNN calls bf16
    "supported" on any AVX-512 CPU, where it is emulated and ~3x slower than fp32."""
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo (not Linux)")
    assert native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_the_fp32_wide_gemm_holds_its_weights_in_either_layout_with_the_same_values():
    """Without native bf16 the wide weights start as (K, N) fp32 for x @ w; set_layout("nk")
    holds them (N, K) for F.linear (faster on some CPUs). Same integers, and the same
    bf16-rounded products on 99%+ of outputs (the rest one bf16 step apart)."""
    torch.manual_seed(1)
    w = torch.randn(48, 32) * 0.05
    lin = Int8Linear(w, None, max_kernel_rows=0, wide_bf16=False)
    assert lin.layout == "kn"
    assert lin.wide.shape == (32, 48) and lin.wide.is_contiguous() and lin.wide.dtype == torch.float32
    assert torch.equal(lin.wide, lin.qweight.float().t())
    x = torch.randn(16, 32)
    with torch.inference_mode():
        kn = lin(x)
        lin.set_layout("nk")
        assert lin.layout == "nk" and lin.wide.shape == (48, 32) and lin.wide.is_contiguous()
        assert torch.equal(lin.wide, lin.qweight.float())
        nk = lin(x)
    assert (kn == nk).float().mean().item() >= 0.99
    assert ((kn - nk).abs() <= kn.abs() * 2.0 ** -7 + 1e-12).all()
    with pytest.raises(ValueError):
        lin.set_layout("t")


@pytest.mark.parametrize("wide_bf16", [False, True])
def test_the_packed_layout_gives_the_products_of_the_plain_one(wide_bf16):
    """Weights prepacked for oneDNN ("packed") hold the same integers: the bf16-rounded
    products match the plain layout's on 99%+ of outputs (the rest one bf16 step apart),
    and switching back restores the plain weights exactly."""
    if not packed_available():
        pytest.skip("this torch build has no oneDNN linear packing")  # the CPU wheel has it
    torch.manual_seed(2)
    lin = Int8Linear(torch.randn(48, 32) * 0.05, None, max_kernel_rows=0, wide_bf16=wide_bf16)
    plain = lin.layout
    x = torch.randn(16, 32)
    with torch.inference_mode():
        before = lin(x)
        lin.set_layout("packed")
        assert lin.layout == "packed"
        packed = lin(x)
        lin.set_layout(plain)
        assert torch.equal(lin(x), before)
    assert (packed == before).float().mean().item() >= 0.99
    assert ((packed - before).abs() <= before.abs() * 2.0 ** -7 + 1e-12).all()


def test_fused_projections_give_the_same_logits_and_leave_the_model_alone():
    """fuse_projections computes q/k/v and gate/up in one matmul each with the same logits
    (float noise only), sharing the other weights and leaving the original unfused."""
    ref = random_model(tiny_cfg(), seed=3, std=0.1)
    fused = fuse_projections(ref)
    assert fused.layers[0].self_attn.qkv_proj is not None and ref.layers[0].self_attn.qkv_proj is None
    assert hasattr(ref.layers[0].self_attn, "q_proj") and not hasattr(fused.layers[0].self_attn, "q_proj")
    assert fused.embed_tokens.weight is ref.embed_tokens.weight
    ids, pos = torch.tensor([1, 5, 9, 200, 7]), torch.arange(5)
    with torch.inference_mode():
        a = ref.logits(ref(ids, pos, DenseContext()))
        b = fused.logits(fused(ids, pos, DenseContext()))
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_quantize_leaves_the_float_model_unchanged():
    """quantize_int8 returns a new model; the fp32 one keeps its weights and logits."""
    ref = random_model(tiny_cfg(), seed=4, std=0.1)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    quantize_int8(ref)
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    assert isinstance(ref.layers[0].self_attn.q_proj, torch.nn.Linear)


def test_fused_rms_norm_is_bit_for_bit_the_formula():
    """RMSNorm's fused fp32 path gives exactly x * rsqrt(mean(x^2) + eps) * weight."""
    from npc.engine.model import RMSNorm

    torch.manual_seed(5)
    norm = RMSNorm(96, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96))
    x = torch.randn(33, 96) * 4
    with torch.inference_mode():
        want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
        assert torch.equal(norm(x), want)
