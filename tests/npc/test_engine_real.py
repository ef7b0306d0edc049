"""The engine with the real default model (SmolLM2-135M-Instruct): batching and prefix sharing keep answers exact."""
from __future__ import annotations

import asyncio

import pytest

from npc.engine.engine import Engine, EngineSettings
from npc.engine.sequence import SamplingParams

PERSONA = ("You are Brann, the blacksmith of Oakvale. You are gruff but kind, you love iron and fire, "
           "and you know every family in the village. Answer in one or two short sentences.")
LINES = ("Any news from the mines?", "Can you mend my sword?", "Who is the mayor?")


@pytest.fixture(scope="module")
def model_and_tokenizer(default_model):
    return default_model


async def test_concurrent_answers_equal_sequential_with_shared_persona(model_and_tokenizer) -> None:
    """Three players asking one NPC at once (persona prefix shared and cached) get exactly their solo greedy answers."""
    model, tok = model_and_tokenizer
    params = SamplingParams(temperature=0, max_tokens=12)
    settings = EngineSettings(threads=1, max_running=4, max_waiting=4, kv_budget_mb=64, max_model_len=512,
                              device="cpu", dtype="float32", share_prefix_attention=True)
    async with Engine(model, tok, settings) as engine:
        chats = [[{"role": "system", "content": PERSONA}, {"role": "user", "content": line}] for line in LINES]
        solo = [await engine.submit(chat, params).result() for chat in chats]
        together = await asyncio.gather(*(engine.submit(chat, params).result() for chat in chats))
        assert engine.metrics.snapshot()["prefix_hit_rate"] > 0.5
        assert engine.core.runner.shared_decodes > 0
    for a, b in zip(solo, together):
        assert b.token_ids == a.token_ids and b.text == a.text
        assert a.text.strip()


async def test_persona_answer_ends_by_itself(model_and_tokenizer) -> None:
    """A persona prompt yields a non-empty answer that ends with EOS (reason stop), not by the token limit."""
    model, tok = model_and_tokenizer
    settings = EngineSettings(threads=1, max_running=1, max_waiting=0, kv_budget_mb=32, max_model_len=512,
                              device="cpu", dtype="float32")
    async with Engine(model, tok, settings) as engine:
        result = await engine.submit([{"role": "system", "content": PERSONA},
                                      {"role": "user", "content": "Hello, smith! Who are you?"}],
                                     SamplingParams(temperature=0, max_tokens=160)).result()
    assert result.finish_reason == "stop" and result.text.strip()
    assert "<|im_end|>" not in result.text
