"""GGUF and Hugging Face loading, on tiny models written here with `gguf` and `safetensors`.

Each tiny file holds a random model whose weights we know, so loading is checked exactly:
quantised tensors are compared with `gguf`'s own dequantisation of the same bytes.
"""
from __future__ import annotations

import gc
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file
from tokenizers import pre_tokenizers

from npc.engine.gguf_loader import unpermute_rotary
from npc.engine.loader import ModelLoadError, load_model, resolve_device, resolve_dtype
from npc.engine.model import DenseContext, ModelConfig, Rotary, random_model, rotate

SPECIALS = ["<|im_start|>", "<|im_end|>"]
BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())
MERGES = ["h e", "l l", "he ll"]
TOKENS = BYTES + ["he", "ll", "hell"] + SPECIALS
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def tiny_cfg(**kw) -> ModelConfig:
    shape = dict(vocab_size=len(TOKENS), hidden_size=64, intermediate_size=128, num_layers=2,
                 num_heads=4, num_kv_heads=2, max_position=256, rope_theta=10000.0, rms_norm_eps=1e-5)
    shape.update(kw)
    return ModelConfig(**shape)


def permute_like_llama_cpp(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows (halves -> interleaved pairs), written independently."""
    out = np.empty_like(w)
    d = w.shape[0] // n_heads
    for h in range(n_heads):
        for i in range(d // 2):
            out[h * d + 2 * i] = w[h * d + i]  # first half -> even rows
            out[h * d + 2 * i + 1] = w[h * d + d // 2 + i]  # second half -> odd rows
    return out


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}
# One quantisation per kind of tensor, so every loader path is crossed.
_QTYPE = {"attn_q": Q.F32, "attn_k": Q.F16, "attn_v": Q.Q8_0, "attn_output": Q.Q4_0,
          "ffn_gate": Q.Q4_1, "ffn_up": Q.BF16, "ffn_down": Q.Q8_0, "token_embd": Q.Q8_0, "output": Q.F16}


def write_tiny_gguf(path, model, arch: str) -> torch.nn.Module:
    """Write `model` as a GGUF file (llama.cpp's naming and layout); return it with the
    weights it will load back (each quantised tensor replaced by its dequantised bytes)."""
    cfg = model.cfg
    w = GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_position)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (len(TOKENS) - 2) + [3, 3])
    w.add_token_merges(MERGES)
    w.add_eos_token_id(TOKENS.index("<|im_end|>"))
    w.add_bos_token_id(TOKENS.index("<|im_start|>"))
    w.add_chat_template(TEMPLATE)
    state = {}
    for name, p in model.state_dict().items():
        if name.startswith("rotary"):
            continue
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            gname = f"blk.{i}.{_GGUF_NAMES[rest]}"
        else:
            gname = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        arr = p.float().numpy()
        kind = gname.split(".")[-2]
        qtype = _QTYPE.get(kind, Q.F32) if arr.ndim == 2 else Q.F32
        stored = arr
        if arch == "llama" and kind in ("attn_q", "attn_k"):
            stored = permute_like_llama_cpp(arr, cfg.num_heads if kind == "attn_q" else cfg.num_kv_heads)
        data = quantize(stored, qtype) if qtype != Q.F32 else stored
        w.add_tensor(gname, data, raw_dtype=qtype if qtype != Q.F32 else None)
        # q/k use element-wise types (F32, F16), so the expected weight is the original one
        # rounded, independent of the loader's un-permutation.
        back = dequantize(quantize(arr, qtype), qtype) if qtype != Q.F32 else arr
        if kind not in ("attn_q", "attn_k"):
            back = dequantize(data, qtype) if qtype != Q.F32 else arr
        state[name] = torch.from_numpy(np.array(back, dtype=np.float32)).reshape(p.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    expected = random_model(cfg)
    expected.load_state_dict(state, strict=False)
    return expected


def logits_of(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model.logits(model(torch.tensor(ids), torch.arange(len(ids)), DenseContext()))


def test_rotate_is_the_rotary_formula_bit_for_bit():
    """Rotary embeddings rotate the pairs (x_i, x_i+D/2) by each position's angles: the
    engine's four-op form gives exactly the textbook (x1 cos - x2 sin, x2 cos + x1 sin)."""
    rotary = Rotary(64, 512, 10000.0)
    torch.manual_seed(0)
    x, pos = torch.randn(37, 12, 64), torch.randint(0, 512, (37,))
    inv = 1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    angles = pos.double()[:, None] * inv  # (T, D/2)
    cos, sin = angles.cos().float().unsqueeze(1), angles.sin().float().unsqueeze(1)
    x1, x2 = x.chunk(2, dim=-1)
    want = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    assert torch.equal(rotate(x, rotary.tables(pos)), want)
    assert torch.equal(rotary(x, pos), want)


def test_unpermute_rotary_inverts_llama_cpp_permutation():
    """unpermute_rotary undoes llama.cpp's q/k row interleaving for weights and bias vectors."""
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    assert np.array_equal(unpermute_rotary(permute_like_llama_cpp(w, 4), 4), w)
    b = np.arange(16, dtype=np.float32)
    assert np.array_equal(unpermute_rotary(permute_like_llama_cpp(b, 2), 2), b)


@pytest.mark.parametrize("arch,bias,tied", [("llama", False, True), ("llama", False, False),
                                             ("qwen2", True, False)])
def test_gguf_round_trip_gives_the_same_logits(tmp_path, arch, bias, tied):
    """A tiny model written as GGUF (mixed F32/F16/BF16/Q8_0/Q4_0/Q4_1) loads back to identical logits."""
    original = random_model(tiny_cfg(qkv_bias=bias, tie_embeddings=tied), seed=3, std=0.3)
    expected = write_tiny_gguf(tmp_path / "tiny.gguf", original, arch)
    model, tok = load_model(tmp_path / "tiny.gguf", device="cpu", dtype=torch.float32)
    # GGUF stores the epsilon as float32; everything else must come back exactly.
    assert model.cfg == replace(expected.cfg, rms_norm_eps=model.cfg.rms_norm_eps)
    assert model.cfg.rms_norm_eps == pytest.approx(expected.cfg.rms_norm_eps)
    ids = [5, 17, 200, 3, 99, 42, 7]
    assert torch.allclose(logits_of(model, ids), logits_of(expected, ids), atol=1e-4)


def test_gguf_tokenizer_from_metadata(tmp_path):
    """The GGUF's tokens, merges, specials, EOS and chat template make a working tokenizer."""
    write_tiny_gguf(tmp_path / "tiny.gguf", random_model(tiny_cfg()), "llama")
    _, tok = load_model(tmp_path, device="cpu")  # a directory holding one .gguf works too
    assert tok.encode("hello") == [TOKENS.index("hell"), BYTES.index("o")]
    assert tok.eos_ids == {TOKENS.index("<|im_end|>")}
    ids = tok.render_chat([{"role": "user", "content": "<|im_end|>"}], add_generation_prompt=False)
    assert ids.count(TOKENS.index("<|im_end|>")) == 1
    assert tok.decode(ids) == "<|im_start|>user\n<|im_end|><|im_end|>\n"


def test_hf_directory_loads_the_same_model(tmp_path):
    """config.json + safetensors (HF names, `model.` prefix) load to the same logits as the source."""
    original = random_model(tiny_cfg(tie_embeddings=False, num_kv_heads=4), seed=5, std=0.3)
    hf = {("" if k == "lm_head.weight" else "model.") + k: v.clone()
          for k, v in original.state_dict().items() if not k.startswith("rotary")}
    save_file(hf, str(tmp_path / "model.safetensors"))
    cfg = original.cfg
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position, "tie_word_embeddings": False}))
    write_tiny_gguf(tmp_path / "t.gguf", random_model(tiny_cfg()), "llama")
    _, gguf_tok = load_model(tmp_path / "t.gguf")
    gguf_tok._specials.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "chat_template": TEMPLATE}))
    model, tok = load_model(tmp_path, dtype="bf16")
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    ids = [1, 2, 3, 250, 9]
    assert torch.allclose(logits_of(model.float(), ids), logits_of(original, ids), atol=1e-1)
    model32, _ = load_model(tmp_path, dtype=torch.float32)
    assert torch.equal(logits_of(model32, ids), logits_of(original, ids))
    assert tok.encode("hello") == gguf_tok.encode("hello")
    assert tok.eos_ids == gguf_tok.eos_ids
    assert tok.render_chat([{"role": "user", "content": "hi"}]) == gguf_tok.render_chat(
        [{"role": "user", "content": "hi"}])


def test_unloadable_paths_and_models_raise_model_load_error(tmp_path):
    """Missing files, foreign files, unsupported architectures and missing tensors are ModelLoadError."""
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "nope.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "junk.gguf")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match="gpt2"):
        load_model(tmp_path / "hf")
    w = GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="falcon"):
        load_model(tmp_path / "falcon.gguf")


def test_gguf_load_leaves_garbage_collection_as_it_found_it(tmp_path):
    """GC is paused only while a GGUF file loads: on again after a load or a failed one, and
    left off for a caller who had turned it off."""
    write_tiny_gguf(tmp_path / "t.gguf", random_model(tiny_cfg()), "llama")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    assert gc.isenabled()
    load_model(tmp_path / "t.gguf")
    assert gc.isenabled()
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "junk.gguf")
    assert gc.isenabled()
    gc.disable()
    try:
        load_model(tmp_path / "t.gguf")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_device_and_dtype_resolution():
    """auto picks CUDA only when present; dtype defaults per device; unknown names are ValueError."""
    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(torch.float16, torch.device("cpu")) == torch.float16
    assert resolve_dtype(None, torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError):
        resolve_dtype("int3", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError):
            resolve_device("cuda")
