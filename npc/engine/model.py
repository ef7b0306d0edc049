"""A compact Llama-family decoder-only Transformer.

RMSNorm, rotary position embeddings (the "rotate half" layout that Hugging Face uses),
grouped-query attention, SwiGLU MLP, tied or untied embeddings and optional q/k/v biases
(so Qwen2-style checkpoints load too).

The model never owns a KV cache. Every attention layer hands its projected, rotated
q/k/v to an *attention context* supplied by the caller (`AttentionContext.attend`); the
runner's context writes k/v into its cache and attends over what is cached. That keeps
cache layout and batching out of the model. `DenseContext` is the plain one: a single
sequence attending causally to itself, no cache (used for parity checks).

Tokens are packed: a forward pass takes T tokens from any number of sequences as one
flat batch (T,) with their positions (T,).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama-family model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position: int = 2048
    tie_embeddings: bool = True
    qkv_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "max_position"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise ValueError("hidden_size must be a multiple of num_heads")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.head_dim % 2:
            raise ValueError("head_dim must be even for rotary embeddings")


class AttentionContext(Protocol):
    """Where attention happens: the runner's cache-backed context, or `DenseContext`."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend q (T, Hq, D) over k/v (T, Hkv, D) of this step plus whatever is cached.

        Returns (T, Hq, D). Called once per layer per forward pass, layers in order.
        """
        ...


class DenseContext:
    """One sequence, starting at position 0, attending causally to itself; no cache."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # (T, H, D) -> (1, H, T, D)
        q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, enable_gqa=True)
        return out.squeeze(0).transpose(0, 1)  # (T, Hq, D)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # One fused op; bit for bit the same as the lines below for fp32 (tested).
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalise in fp32 for stability, return in the input dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


class Rotary(nn.Module):
    """Rotary embeddings, precomputed for every position up to max_position."""

    def __init__(self, head_dim: int, max_position: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_position, dtype=torch.float64), inv_freq)  # (P, D/2)
        cos, sin = angles.cos().float(), angles.sin().float()  # (P, D/2)
        # Full width, sin signed for the rotated half: see `rotate`.
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)  # (P, D)
        self.register_buffer("sin", torch.cat((-sin, sin), dim=-1), persistent=False)  # (P, D)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) -> cos, signed sin (T, 1, D): looked up once per forward, used by every layer."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (T, H, D) rotated to `positions` (T,)."""
        return rotate(x, self.tables(positions))


def rotate(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x (T, H, D) rotated by `Rotary.tables` (T, 1, D): the two halves of D form the rotated
    pairs, (x1 cos - x2 sin, x2 cos + x1 sin), computed as x * [cos, cos] + [x2, x1] * [-sin, sin]
    in four ops instead of eight; bit for bit the same (negating is exact, a + -b is a - b)."""
    cos, sin = tables
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)  # (T, H, D/2) each
    out = xf * cos + torch.cat((x2, x1), dim=-1) * sin
    return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        c = cfg.hidden_size
        self.q_proj = nn.Linear(c, self.nh * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(c, self.nkv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(c, self.nkv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, c, bias=False)
        # Set by `fuse_projections`: q, k and v in one matmul (q_proj/k_proj/v_proj then unused).
        self.qkv_proj: nn.Module | None = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                ctx: AttentionContext, layer: int) -> torch.Tensor:
        t = x.shape[0]
        nq, nkv = self.nh * self.hd, self.nkv * self.hd
        if self.qkv_proj is not None:
            qkv = self.qkv_proj(x)  # (T, (Hq + 2 Hkv) D)
            # q and k are adjacent: one rotation call for both.
            qk = rotate(qkv[:, :nq + nkv].view(t, self.nh + self.nkv, self.hd), rope)  # (T, Hq + Hkv, D)
            q, k = qk[:, :self.nh], qk[:, self.nh:]
            v = qkv[:, nq + nkv:].view(t, self.nkv, self.hd)
        else:
            q = rotate(self.q_proj(x).view(t, self.nh, self.hd), rope)  # (T, Hq, D)
            k = rotate(self.k_proj(x).view(t, self.nkv, self.hd), rope)  # (T, Hkv, D)
            v = self.v_proj(x).view(t, self.nkv, self.hd)  # (T, Hkv, D)
        out = ctx.attend(layer, q, k, v)  # (T, Hq, D)
        return self.o_proj(out.reshape(t, nq))  # (T, C)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        # Set by `fuse_projections`: gate and up in one matmul (gate_proj/up_proj then unused).
        self.gate_up_proj: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (T, I) each
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                ctx: AttentionContext, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, ctx, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """The decoder. Parameter names follow Hugging Face's Llama (without the `model.` prefix)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.max_position, cfg.rope_theta)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                ctx: AttentionContext) -> torch.Tensor:
        """input_ids (T,), positions (T,) -> final hidden states (T, C), normalised."""
        x = self.embed_tokens(input_ids)  # (T, C)
        rope = self.rotary.tables(positions)  # (T, 1, D/2) twice
        for i, block in enumerate(self.layers):
            x = block(x, rope, ctx, i)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, C) -> logits (N, V) in fp32."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()


def fuse_projections(model: Transformer) -> Transformer:
    """A copy of `model` computing q/k/v, and gate/up, each in one matmul (same outputs).

    The copy shares every other tensor with `model`, which is left unchanged; only the
    fused weights are new memory. Fewer, wider matmuls cost less per step than many
    narrow ones, which matters most when a step is one token.
    """
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    fused = copy.deepcopy(model, memo=shared)
    for block in fused.layers:
        attn, mlp = block.self_attn, block.mlp
        if attn.qkv_proj is None:
            attn.qkv_proj = _concat_linears(attn.q_proj, attn.k_proj, attn.v_proj)
            del attn.q_proj, attn.k_proj, attn.v_proj
        if mlp.gate_up_proj is None:
            mlp.gate_up_proj = _concat_linears(mlp.gate_proj, mlp.up_proj)
            del mlp.gate_proj, mlp.up_proj
    return fused


def _concat_linears(*parts: nn.Linear) -> nn.Linear:
    """One Linear whose output is the parts' outputs side by side."""
    w = parts[0].weight
    out = nn.Linear(w.shape[1], sum(p.out_features for p in parts), bias=parts[0].bias is not None,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([p.weight for p in parts]))
        if out.bias is not None:
            out.bias.copy_(torch.cat([p.bias for p in parts]))
    return out.requires_grad_(False)


def random_model(cfg: ModelConfig, seed: int = 0, std: float = 0.02) -> Transformer:
    """A model with reproducible random weights (for tests and benchmarks of the engine)."""
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()
