"""Hugging Face directories written by `transformers` itself load into our model and tokenizer.

Tiny random Llama and Qwen2 models are saved with `save_pretrained` (real config.json and
safetensors as transformers writes them); our logits must match transformers' forward.
"""
from __future__ import annotations

import pytest
import torch

from npc.engine.loader import load_model
from npc.engine.model import DenseContext
from npc.engine.tokenizer import Tokenizer

TEXTS = ["Hello, world!", "Grüße 😀 — 你好", "  spaces\n\nand 1234 digits"]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_transformers_saved_model_gives_the_same_logits(tmp_path, transformers_module, kind):
    """A tiny transformers Llama/Qwen2 (GQA, qwen2 with q/k/v biases) saved to disk loads to its logits."""
    tf = transformers_module
    shape = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                 rms_norm_eps=1e-6, tie_word_embeddings=(kind == "llama"))
    torch.manual_seed(0)
    if kind == "llama":
        ref = tf.LlamaForCausalLM(tf.LlamaConfig(rope_theta=50000.0, **shape))
    else:
        ref = tf.Qwen2ForCausalLM(tf.Qwen2Config(rope_theta=50000.0, **shape))
    with torch.no_grad():  # default init is tiny; larger weights make a mismatch visible
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ref.eval().save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(_byte_tokenizer_json())
    model, _ = load_model(tmp_path, device="cpu", dtype=torch.float32)
    assert model.cfg.qkv_bias == (kind == "qwen2") and model.cfg.rope_theta == 50000.0
    ids = [3, 99, 250, 7, 7, 41, 300]
    with torch.inference_mode():
        ours = model.logits(model(torch.tensor(ids), torch.arange(len(ids)), DenseContext()))
        theirs = ref(torch.tensor([ids])).logits[0]
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_tokenizer_saved_by_transformers_matches_the_gguf_one(tmp_path, default_model, reference_tokenizer):
    """The default model's tokenizer saved as tokenizer.json (+ template) behaves like ours from GGUF."""
    _, gguf_tok = default_model
    reference_tokenizer.save_pretrained(tmp_path)
    tok = Tokenizer.from_hf_dir(tmp_path)
    for text in TEXTS + ["<|im_start|>user"]:
        assert tok.encode(text) == gguf_tok.encode(text), text
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_end|>"}]
    assert tok.render_chat(chat) == gguf_tok.render_chat(chat)
    assert gguf_tok.token_to_id("<|im_end|>") in tok.eos_ids


def _byte_tokenizer_json() -> str:
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|im_end|>"] = len(vocab)
    backend = Backend(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|im_end|>"])
    return backend.to_str()
