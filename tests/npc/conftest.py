"""Session fixtures for tests that need the real default model (fetched once, loaded once)."""
from __future__ import annotations

from pathlib import Path

import pytest

from npc.models import default_model_path as _default_model_path


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The default model's GGUF file, fetched into the cache (`python -m npc.models fetch`) if missing."""
    return _default_model_path()


@pytest.fixture(scope="session")
def default_model(default_model_path):
    """(Transformer, Tokenizer) of the default model, fp32 on CPU, loaded once per session."""
    import torch

    from npc.engine.loader import load_model

    return load_model(default_model_path, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def reference(default_model_path):
    """`transformers`' own model and tokenizer read from the same GGUF file (the parity reference).

    Skips when the dev dependencies (transformers, accelerate) are not installed.
    """
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    where, name = str(default_model_path.parent), default_model_path.name
    tok = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(where, gguf_file=name)
    return model.eval(), tok
