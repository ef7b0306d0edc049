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
def transformers_module():
    """The `transformers` package, quiet (a dev dependency: `scripts/test.sh` installs it)."""
    import accelerate  # noqa: F401  (transformers needs it to read GGUF files; a dev dependency)
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@pytest.fixture(scope="session")
def reference_tokenizer(transformers_module, default_model_path):
    """`transformers`' tokenizer read from the default model's GGUF file (the parity reference)."""
    return transformers_module.AutoTokenizer.from_pretrained(
        str(default_model_path.parent), gguf_file=default_model_path.name)


@pytest.fixture(scope="session")
def reference_model(transformers_module, default_model_path):
    """`transformers`' own LlamaForCausalLM read from the same GGUF file, fp32, eval mode."""
    model = transformers_module.AutoModelForCausalLM.from_pretrained(
        str(default_model_path.parent), gguf_file=default_model_path.name)
    return model.eval()
