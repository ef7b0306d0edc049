"""`load_model(path)`: a GGUF file or a Hugging Face directory -> (Transformer, Tokenizer).

Device and dtype: `device="auto"` takes CUDA when present, else the CPU. With `dtype=None`
each device gets what measured fastest for serving: bf16 on CUDA; fp32 on CPU. On the
2-core reference CPU (AVX-512 with bf16 dot products, no AMX) a decode step of the default
model at batch 32 took 130 ms in fp32 and 227 ms in bf16; bf16 wins only for a lone
stream (37 vs 53 ms) and moves the logits (docs/benchmarks.md, "NPC model side").
"""
from __future__ import annotations

from pathlib import Path

import torch

from npc.engine.errors import EngineError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class ModelLoadError(EngineError):
    """A model file or directory is missing, unreadable, or describes a model we can't run."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else is taken as given.

    Raises `ValueError` when CUDA is asked for but not available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The weight dtype: as given (a torch dtype or a name like 'bf16'), else the device default."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None


def load_model(path: Path | str, *, device: str | torch.device = "auto",
               dtype: str | torch.dtype | None = None):
    """Load a model and its tokenizer from a `.gguf` file or a Hugging Face directory.

    Returns `(Transformer, Tokenizer)` with the model in eval mode on `device` in `dtype`
    (None: the device's default, see the module docstring). Raises `ModelLoadError`.
    """
    # Imported here: both loaders import ModelLoadError from this module.
    from npc.engine.gguf_loader import load_gguf
    from npc.engine.hf_loader import load_hf_dir

    p = Path(path).expanduser()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf(p, dtype=dt, device=dev)
    if p.is_dir() and (p / "config.json").is_file():
        return load_hf_dir(p, dtype=dt, device=dev)
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return load_gguf(ggufs[0], dtype=dt, device=dev)
    raise ModelLoadError(f"{p} is neither a .gguf file nor a directory with config.json")
