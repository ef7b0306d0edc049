"""Load a Llama-family model from a Hugging Face directory: config.json + *.safetensors.

Accepted `model_type`s: llama, mistral, qwen2 (q/k/v biases). Parameter names are Hugging
Face's with the `model.` prefix dropped, which is how our `Transformer` names them, so no
permutation is needed (HF checkpoints already use the rotate-half rotary layout).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from npc.engine.loader import ModelLoadError
from npc.engine.model import ModelConfig, Rotary, Transformer
from npc.engine.tokenizer import Tokenizer

_SUPPORTED = frozenset({"llama", "mistral", "qwen2"})


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    """A `ModelConfig` from a parsed config.json. Raises `ModelLoadError` on what we can't run."""
    kind = cfg.get("model_type")
    if kind not in _SUPPORTED:
        raise ModelLoadError(f"model_type {kind!r} is not supported (supported: {sorted(_SUPPORTED)})")
    scaling = cfg.get("rope_scaling") or (cfg.get("rope_parameters") or {})
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise ModelLoadError("rope scaling is not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"activation {cfg.get('hidden_act')!r} is not supported (only silu)")
    theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    heads = int(cfg["num_attention_heads"])
    try:
        return ModelConfig(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or 0),
            rope_theta=float(theta),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position=int(cfg.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", kind != "mistral")),
            qkv_bias=bool(cfg.get("attention_bias", kind == "qwen2")),
        )
    except (KeyError, ValueError) as e:
        raise ModelLoadError(f"config.json describes an invalid model: {e}") from e


def _our_name(hf_name: str) -> str:
    return hf_name[len("model."):] if hf_name.startswith("model.") else hf_name


def load_hf_dir(path: Path | str, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> tuple[Transformer, Tokenizer]:
    """Read a Hugging Face model directory into our `Transformer` (eval mode) and `Tokenizer`.

    Raises `ModelLoadError` on a missing file, an unsupported model or a tensor mismatch.
    """
    root = Path(path)
    try:
        hf_cfg = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {root / 'config.json'}: {e}") from e
    cfg = config_from_hf(hf_cfg)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{root} has no *.safetensors files")
    with torch.device("meta"):
        model = Transformer(cfg)  # no memory until the real weights arrive
    expected = {k: v.shape for k, v in model.named_parameters()}
    state: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for name in sf.keys():
                ours = _our_name(name)
                if ours == "lm_head.weight" and cfg.tie_embeddings:
                    continue  # some tied checkpoints store the shared matrix twice
                if ours not in expected:
                    if "rotary_emb" in ours:
                        continue  # precomputed tables in old checkpoints; we compute our own
                    raise ModelLoadError(f"{f.name}: tensor {name} has no place in our model")
                t = sf.get_tensor(name)
                if t.shape != expected[ours]:
                    raise ModelLoadError(f"{f.name}: {name} has shape {tuple(t.shape)}, "
                                         f"expected {tuple(expected[ours])}")
                state[ours] = t.to(device=device, dtype=dtype)
    missing = set(expected) - set(state)
    if missing:
        raise ModelLoadError(f"{root} lacks tensors for {sorted(missing)[:5]}")
    model.load_state_dict(state, assign=True)
    model.rotary = Rotary(cfg.head_dim, cfg.max_position, cfg.rope_theta).to(device)
    return model.eval(), Tokenizer.from_hf_dir(root)
