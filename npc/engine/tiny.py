"""A tiny random-weight model and a byte-level tokenizer, for tests of the engine.

The tokenizer maps every byte to its own token (no merges), so any multi-byte UTF-8
character is split across tokens, plus three ChatML special tokens. The model is a
two-layer Llama-family Transformer with reproducible random weights: its output is
gibberish, but deterministic, which is all the scheduler tests need.
"""
from __future__ import annotations

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from npc.engine.model import ModelConfig, Transformer, random_model
from npc.engine.tokenizer import Tokenizer

SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
TINY_VOCAB = 256 + len(SPECIALS)
IM_END = 257


def _byte_alphabet() -> list[str]:
    """The printable stand-in character for each byte value, in byte order (GPT-2's scheme)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)  # bytes without a printable form move past 255
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_tokenizer() -> Tokenizer:
    """A byte-level tokenizer: ids 0-255 are bytes, 256-258 are the ChatML specials."""
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    backend = Backend(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return Tokenizer(backend, eos_ids=[IM_END, IM_END + 1])


def tiny_config(**overrides: object) -> ModelConfig:
    """A small Llama-family shape: 2 layers, 4 query heads over 2 KV heads, head_dim 16."""
    shape = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_layers=2,
                 num_heads=4, num_kv_heads=2, max_position=1024)
    shape.update(overrides)
    return ModelConfig(**shape)  # type: ignore[arg-type]


def tiny_model(seed: int = 0, **overrides: object) -> Transformer:
    """The tiny model with reproducible random weights (large enough that argmax has clear winners)."""
    return random_model(tiny_config(**overrides), seed=seed, std=0.5)
