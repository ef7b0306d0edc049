"""Our Transformer, loaded by our GGUF loader, against `transformers` reading the same file.

Tolerance: logits are fp32 on both sides and may differ only by summation order; we allow
a max absolute difference of 1e-3 (logits here span about +-40; we measured ~7e-5).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from npc.engine.model import DenseContext

LOGIT_ATOL = 1e-3

CHATS = [
    [{"role": "system", "content": "You are Bram, the village blacksmith. Answer briefly."},
     {"role": "user", "content": "Hello! What do you sell?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are Mira, a herbalist who speaks in riddles."},
     {"role": "user", "content": "Which plant cures a cough? 🌿"},
     {"role": "assistant", "content": "Green of leaf and sweet of smell..."},
     {"role": "user", "content": "Just tell me its name, please."}],
]


class GrowingContext:
    """A test-only KV cache for one sequence: each call attends new tokens over all so far."""

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def attend(self, layer, q, k, v):
        if layer in self.k:
            k, v = torch.cat([self.k[layer], k]), torch.cat([self.v[layer], v])
        self.k[layer], self.v[layer] = k, v
        t, s = q.shape[0], k.shape[0]
        mask = torch.ones(t, s, dtype=torch.bool).tril(s - t)  # new token i sees keys <= s-t+i
        q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask, enable_gqa=True)
        return out.squeeze(0).transpose(0, 1)


def greedy(model, prompt: list[int], max_new: int, eos: frozenset[int]) -> list[int]:
    """Greedy decoding over a GrowingContext (checked against full recompute below)."""
    ctx, out = GrowingContext(), []
    with torch.inference_mode():
        hidden = model(torch.tensor(prompt), torch.arange(len(prompt)), ctx)
        for pos in range(len(prompt), len(prompt) + max_new):
            nxt = int(model.logits(hidden[-1:]).argmax(-1))
            out.append(nxt)
            if nxt in eos:
                break
            hidden = model(torch.tensor([nxt]), torch.tensor([pos]), ctx)
    return out


def test_logits_match_transformers_on_chat_prompts(default_model, reference_model):
    """Every position's logits equal the reference's within 1e-3 for several chat prompts."""
    model, tok = default_model
    ref = reference_model
    for chat in CHATS[:2]:
        ids = tok.render_chat(chat)
        with torch.inference_mode():
            ours = model.logits(model(torch.tensor(ids), torch.arange(len(ids)), DenseContext()))
            theirs = ref(torch.tensor([ids])).logits[0].float()
        assert ours.shape == theirs.shape == (len(ids), model.cfg.vocab_size)
        diff = (ours - theirs).abs().max().item()
        assert diff <= LOGIT_ATOL, f"max |logit diff| {diff} over {LOGIT_ATOL}"


def test_greedy_answers_match_transformers_token_for_token(default_model, reference_model):
    """Greedy continuations of three chat prompts are identical to transformers' generate()."""
    model, tok = default_model
    ref = reference_model
    for chat in CHATS:
        prompt = tok.render_chat(chat)
        ours = greedy(model, prompt, 12, tok.eos_ids)
        with torch.inference_mode():
            out = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=12, do_sample=False, eos_token_id=sorted(tok.eos_ids),
                               pad_token_id=2)
        theirs = out[0, len(prompt):].tolist()
        assert ours == theirs, f"{tok.decode(ours)!r} != {tok.decode(theirs)!r}"


def test_cached_decode_matches_full_recompute(default_model):
    """Decoding token by token over a KV cache gives the logits of a full recompute (model is position-correct)."""
    model, tok = default_model
    ids = tok.render_chat(CHATS[0]) + tok.encode("I sell horseshoes")
    ctx = GrowingContext()
    with torch.inference_mode():
        full = model.logits(model(torch.tensor(ids), torch.arange(len(ids)), DenseContext()))
        n = len(ids) - 4
        steps = [model.logits(model(torch.tensor(ids[:n]), torch.arange(n), ctx))[-1:]]
        for i in range(n, len(ids)):
            steps.append(model.logits(model(torch.tensor([ids[i]]), torch.tensor([i]), ctx)))
    stepped = torch.cat(steps)  # logits for positions n-1 .. len-1
    assert torch.allclose(stepped, full[n - 1:], atol=1e-3)


def test_persona_prompt_yields_an_answer_that_ends_by_itself(default_model):
    """A short NPC persona prompt gets a non-empty greedy answer that stops on EOS before 64 tokens."""
    model, tok = default_model
    prompt = tok.render_chat([
        {"role": "system", "content": "You are Bram, the blacksmith of Oakvale. Reply in one short sentence."},
        {"role": "user", "content": "Good morning, Bram!"},
    ])
    answer = greedy(model, prompt, 64, tok.eos_ids)
    assert answer[-1] in tok.eos_ids, f"no EOS within 64 tokens: {tok.decode(answer)!r}"
    answer = answer[:-1]
    assert tok.decode(answer).strip(), "the answer is empty"
