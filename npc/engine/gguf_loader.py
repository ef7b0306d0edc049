"""Load a Llama-family model from a GGUF file (llama.cpp's format) with the `gguf` package.

Supported architectures: `llama` (and `mistral`, the same graph) and `qwen2` (q/k/v biases).
Every tensor type that `gguf.quants.dequantize` knows is accepted (F32, F16, BF16, Q8_0,
Q4_0, Q4_1, Q5_x and the K-quants); weights are dequantised to fp32 and then cast to the
requested dtype.

llama.cpp's converter permutes the rows of the q and k projections of `llama` models so
that rotary pairs are interleaved (GPT-J layout); our model rotates the two halves of each
head (the Hugging Face layout), so those rows are permuted back here.
"""
from __future__ import annotations

import contextlib
import gc
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from npc.engine.loader import ModelLoadError
from npc.engine.model import ModelConfig, Rotary, Transformer
from npc.engine.tokenizer import Tokenizer

# Architectures whose q/k rows llama.cpp permuted on conversion (see module docstring).
_PERMUTED_QK = frozenset({"llama", "mistral"})
_SUPPORTED = _PERMUTED_QK | {"qwen2"}

_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(.+)")


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """Every key-value field of the file as plain Python values (lists for arrays)."""
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    return meta


def config_from_metadata(meta: dict[str, Any], *, n_vocab_rows: int, has_output: bool,
                         has_bias: bool) -> ModelConfig:
    """A `ModelConfig` from `{arch}.*` metadata. Raises `ModelLoadError` on what we can't run."""
    arch = meta.get("general.architecture")
    if arch not in _SUPPORTED:
        raise ModelLoadError(f"GGUF architecture {arch!r} is not supported (supported: {sorted(_SUPPORTED)})")
    if meta.get(f"{arch}.rope.scaling.type", "none") not in ("none", None):
        raise ModelLoadError("rope scaling is not supported")

    def need(key: str) -> Any:
        try:
            return meta[f"{arch}.{key}"]
        except KeyError:
            raise ModelLoadError(f"GGUF metadata lacks {arch}.{key}") from None

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rope_dims = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ModelLoadError("partial rotary embeddings are not supported")
    try:
        return ModelConfig(
            vocab_size=int(meta.get(f"{arch}.vocab_size", n_vocab_rows)),
            hidden_size=hidden,
            intermediate_size=int(need("feed_forward_length")),
            num_layers=int(need("block_count")),
            num_heads=heads,
            num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
            head_dim=head_dim,
            rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            rms_norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            max_position=int(meta.get(f"{arch}.context_length", 2048)),
            tie_embeddings=not has_output,
            qkv_bias=has_bias,
        )
    except ValueError as e:
        raise ModelLoadError(f"GGUF metadata describes an invalid model: {e}") from e


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, interleaved pairs -> two halves.

    w is (n_heads * D, ...) (a weight matrix or bias vector); returns the same shape.
    """
    rest = w.shape[1:]
    d = w.shape[0] // n_heads
    # The converter did reshape(H, 2, D/2).swapaxes(1, 2); the inverse swaps them back.
    return w.reshape(n_heads, d // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _our_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"
    return None


def load_gguf(path: Path | str, *, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> tuple[Transformer, Tokenizer]:
    """Read a GGUF file into our `Transformer` (eval mode) and its `Tokenizer`.

    Raises `ModelLoadError` for unsupported architectures, unknown tensors or shape mismatches.
    """
    with _gc_paused():
        return _load_gguf(path, dtype=dtype, device=device)


@contextlib.contextmanager
def _gc_paused():
    """Cyclic garbage collection off for the block (reference counting still frees).

    Why: `GGUFReader` builds ~500k small Python objects for the default model (a numpy
    memmap per metadata part: every tokenizer token and merge), all alive until the load
    ends. While they pile up, full collections come every second or two, each walking all
    of them with the GIL held: 0.3-0.8 s during which a shard loading its model in a
    background thread serves no player. The reader holds no reference cycles: it is freed
    by reference counting as `_load_gguf` returns, before collection resumes.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_gguf(path: Path | str, *, dtype: torch.dtype, device: torch.device | str,
               ) -> tuple[Transformer, Tokenizer]:
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read GGUF file {path}: {e}") from e
    meta = read_metadata(reader)
    names = {t.name for t in reader.tensors}
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise ModelLoadError(f"{path} has no token_embd.weight tensor")
    cfg = config_from_metadata(meta, n_vocab_rows=int(embd.shape[-1]), has_output="output.weight" in names,
                               has_bias="blk.0.attn_q.bias" in names)
    tokenizer = Tokenizer.from_gguf_metadata(meta)
    permute = meta["general.architecture"] in _PERMUTED_QK

    with torch.device("meta"):
        model = Transformer(cfg)  # no memory until the real weights arrive
    expected = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        ours = _our_name(t.name)
        if ours is None:
            raise ModelLoadError(f"{path}: tensor {t.name} has no place in our model")
        w = dequantize(t.data, t.tensor_type)  # fp32, rows = output features
        if permute and ours.endswith(("q_proj.weight", "q_proj.bias")):
            w = unpermute_rotary(w, cfg.num_heads)
        elif permute and ours.endswith(("k_proj.weight", "k_proj.bias")):
            w = unpermute_rotary(w, cfg.num_kv_heads)
        if ours not in expected or tuple(w.shape) != tuple(expected[ours].shape):
            raise ModelLoadError(f"{path}: tensor {t.name} has shape {tuple(w.shape)}, "
                                 f"expected {tuple(expected[ours].shape) if ours in expected else 'none'}")
        # F32 tensors come back as read-only views of the mapped file: copy those.
        state[ours] = torch.from_numpy(np.require(w, requirements=["C", "W"])).to(device=device, dtype=dtype)
    missing = set(expected) - set(state)
    if missing:
        raise ModelLoadError(f"{path} lacks tensors for {sorted(missing)[:5]}")
    model.load_state_dict(state, assign=True)
    # Buffers (rotary tables) were created on the meta device: rebuild them for real.
    model.rotary = Rotary(cfg.head_dim, cfg.max_position, cfg.rope_theta).to(device)
    return model.eval(), tokenizer
