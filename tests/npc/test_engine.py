"""The asyncio Engine with the tiny model: streaming, cancel, Busy, deadlines, stops, masks."""
from __future__ import annotations

import asyncio
import time

import pytest
import torch

from npc.engine import crossover
from npc.engine.engine import Engine, EngineCore, EngineSettings, Result
from npc.engine.errors import Busy, EngineClosed
from npc.engine.quant import Int8Linear
from npc.engine.sequence import Priority, SamplingParams
from npc.engine.tiny import tiny_model, tiny_tokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def settings(**overrides: object) -> EngineSettings:
    # Fixed int8 crossovers: batched and lone outputs are compared token for token here.
    base = dict(threads=1, kv_budget_mb=2, block_size=8, token_budget=64, max_running=4, max_waiting=4,
                int8_max_rows=6, int8_head_rows=16)
    base.update(overrides)
    return EngineSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def engine():
    async with Engine(tiny_model(), tiny_tokenizer(), settings()) as eng:
        yield eng


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are the smith."}, {"role": "user", "content": text}]


async def collect(stream) -> tuple[list[str], Result]:
    pieces = [p async for p in stream]
    return pieces, await asyncio.wait_for(stream.result(), 10)


async def test_stream_pieces_concatenate_to_result(engine: Engine) -> None:
    """Streamed pieces are non-empty, valid text and join to exactly the final text and decoded tokens."""
    pieces, result = await collect(engine.submit(ask("Hello?"), GREEDY))
    assert result.finish_reason == "length" and result.completion_tokens == 24
    assert all(pieces) and "".join(pieces) == result.text
    assert result.text == engine.tokenizer.decode(list(result.token_ids), skip_special=True)
    assert result.prompt_tokens == len(engine.tokenizer.render_chat(ask("Hello?")))
    assert result.timings.ttft_s is not None and 0 < result.timings.ttft_s <= result.timings.total_s


async def test_concurrent_streams_match_sequential(engine: Engine) -> None:
    """Answers produced concurrently equal the answers produced one at a time."""
    questions = [f"Question number {i}?" for i in range(4)]
    together = await asyncio.gather(*(collect(engine.submit(ask(q), GREEDY)) for q in questions))
    for q, (_, r) in zip(questions, together):
        _, alone = await collect(engine.submit(ask(q), GREEDY))
        assert r.token_ids == alone.token_ids


@pytest.mark.parametrize("weights", [dict(dtype="float32"), dict(dtype="int8", int8_max_rows=2)])
async def test_batched_greedy_matches_one_at_a_time_per_dtype(weights: dict) -> None:
    """fp32 weights, and int8 weights whose kernel switches with the batch size (the int8
    kernel for steps of 1-2 tokens, fp32 GEMM beyond), give the same greedy tokens
    together as alone."""
    questions = [f"Tell me about item {i}." for i in range(4)]
    async with Engine(tiny_model(), tiny_tokenizer(), settings(**weights)) as eng:
        together = await asyncio.gather(*(collect(eng.submit(ask(q), GREEDY)) for q in questions))
        for q, (_, r) in zip(questions, together):
            _, alone = await collect(eng.submit(ask(q), GREEDY))
            assert r.token_ids == alone.token_ids


async def test_cancel_frees_kv_blocks(engine: Engine) -> None:
    """Cancelling mid-answer ends the stream as cancelled and returns every KV block."""
    stream = engine.submit(ask("Tell me a long story."), SamplingParams(temperature=0, max_tokens=500, ignore_eos=True))
    it = aiter(stream)
    await asyncio.wait_for(anext(it), 10)
    stream.cancel()
    result = await asyncio.wait_for(stream.result(), 10)
    assert result.finish_reason == "cancelled" and result.completion_tokens < 500
    assert engine.core.blocks.num_used == 0
    assert engine.in_flight == 0


async def test_busy_at_capacity() -> None:
    """Past max_running + max_waiting in flight, submit raises Busy at once; later it admits again."""
    async with Engine(tiny_model(), tiny_tokenizer(), settings(max_running=2, max_waiting=1)) as eng:
        long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
        streams = [eng.submit(ask(f"q{i}"), long) for i in range(3)]
        with pytest.raises(Busy):
            eng.submit(ask("one too many"), long)
        assert eng.metrics.snapshot()["rejected_busy"] == 1
        streams[0].cancel()
        await asyncio.wait_for(streams[0].result(), 10)
        extra = eng.submit(ask("now it fits"), GREEDY)
        for s in streams[1:]:
            s.cancel()
        assert (await collect(extra))[1].finish_reason == "length"


async def test_deadline_cancels_request(engine: Engine) -> None:
    """A request past its deadline ends as cancelled with detail 'deadline'."""
    stream = engine.submit(ask("slow"), SamplingParams(temperature=0, max_tokens=1000, ignore_eos=True),
                           timeout=0.05)
    _, result = await collect(stream)
    assert result.finish_reason == "cancelled" and result.detail == "deadline"
    assert result.timings.total_s >= 0.05
    expired = engine.submit(ask("too late"), GREEDY, deadline=time.monotonic() - 1)
    _, result = await collect(expired)
    assert result.finish_reason == "cancelled" and result.completion_tokens == 0


async def test_stop_string_ends_answer_and_never_leaks(engine: Engine) -> None:
    """A stop string taken from the middle of the greedy answer cuts the text just before it."""
    _, full = await collect(engine.submit(ask("Hi"), GREEDY))
    text = full.text
    stop = next(text[i:i + 3] for i in range(4, len(text) - 3) if "\ufffd" not in text[i:i + 3])
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=(stop,))
    pieces, result = await collect(engine.submit(ask("Hi"), params))
    assert result.finish_reason == "stop"
    assert result.text == text[:text.index(stop)]
    assert "".join(pieces) == result.text and stop not in "".join(pieces)


async def test_allowed_tokens_are_honoured(engine: Engine) -> None:
    """With an allowed-token set or hook, every sampled token comes from it."""
    digits = frozenset(engine.tokenizer.encode("0123456789"))
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=20, ignore_eos=True, allowed=digits)
    _, result = await collect(engine.submit(ask("Pick numbers"), params))
    assert set(result.token_ids) <= digits and result.text.isdigit()

    # A hook: alternate 'a' and 'b' whatever the model prefers.
    a, b = engine.tokenizer.encode("a")[0], engine.tokenizer.encode("b")[0]
    hook = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                          allowed=lambda done: [a] if len(done) % 2 == 0 else [b])
    _, result = await collect(engine.submit(ask("x"), hook))
    assert result.text == "ababab"


async def test_priority_orders_admission() -> None:
    """When only one request can run, a HIGH priority request is admitted before earlier LOW ones."""
    async with Engine(tiny_model(), tiny_tokenizer(), settings(max_running=1, max_waiting=4)) as eng:
        params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        first = eng.submit(ask("running"), params)
        low = eng.submit(ask("summary"), params, priority=Priority.LOW)
        high = eng.submit(ask("player"), params, priority=Priority.HIGH)
        done: list[str] = []

        async def watch(name: str, s) -> None:
            await s.result()
            done.append(name)

        await asyncio.gather(watch("first", first), watch("low", low), watch("high", high))
        assert done.index("high") < done.index("low")


async def test_close_cancels_in_flight_and_refuses_new() -> None:
    """Closing the engine ends open streams as cancelled and later submits raise EngineClosed."""
    eng = Engine(tiny_model(), tiny_tokenizer(), settings())
    eng.start()
    stream = eng.submit(ask("never finishes"), SamplingParams(temperature=0, max_tokens=1000, ignore_eos=True))
    await asyncio.wait_for(anext(aiter(stream)), 10)
    await eng.aclose()
    result = await asyncio.wait_for(stream.result(), 10)
    assert result.finish_reason == "cancelled"
    with pytest.raises(EngineClosed):
        eng.submit(ask("late"), GREEDY)


async def test_metrics_snapshot_and_prometheus(engine: Engine) -> None:
    """After traffic, the snapshot reports tokens, latencies and finishes, and Prometheus text has them."""
    await asyncio.gather(*(collect(engine.submit(ask("same persona"), GREEDY)) for _ in range(3)))
    snap = engine.metrics.snapshot()
    assert snap["completion_tokens"] == 72 and snap["finished_length"] == 3
    assert snap["ttft_p50_s"] > 0 and snap["itl_p99_s"] > 0
    assert snap["queue_depth"] == 0 and snap["running"] == 0
    text = engine.metrics.prometheus()
    assert "npc_engine_completion_tokens_total 72" in text
    assert 'npc_engine_ttft_seconds_bucket{le="+Inf"} 3' in text
    assert 'npc_engine_finished_total{reason="length"} 3' in text


async def test_failing_hook_fails_only_its_request(engine: Engine) -> None:
    """A request whose allowed-token hook raises ends with error; a request beside it is unaffected."""
    def hook(done: list[int]) -> list[int]:
        if len(done) == 3:
            raise RuntimeError("grammar broke")
        return [engine.tokenizer.encode("z")[0]]

    bad = engine.submit(ask("bad"), SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, allowed=hook))
    good = engine.submit(ask("good"), GREEDY)
    (_, bad_result), (_, good_result) = await asyncio.gather(collect(bad), collect(good))
    assert bad_result.finish_reason == "error" and "grammar broke" in bad_result.detail
    assert bad_result.text == "zzz"
    assert good_result.finish_reason == "length" and good_result.completion_tokens == 24


def test_settings_validate_and_derive_the_token_budget() -> None:
    """Bad settings raise ValueError; token_budget 0 becomes max(128, 2 * max_running)."""
    assert EngineSettings(max_running=32).token_budget == 128
    assert EngineSettings(max_running=100, max_waiting=10).token_budget == 200
    for bad in (dict(max_running=0), dict(max_running=64, token_budget=32), dict(kv_budget_mb=0),
                dict(dtype="int3"), dict(device="tpu"), dict(threads=-1), dict(block_size=0),
                dict(int8_max_rows=-2), dict(int8_head_rows=-2), dict(prefill_with_decodes=-1)):
        with pytest.raises(ValueError):
            EngineSettings(**bad)  # type: ignore[arg-type]


def test_int8_kernel_rows_default_to_measuring_and_explicit_rows_are_kept(caplog) -> None:
    """-1 (the default) means measured when the engine loads: the running model's int8
    layers carry the measured limits and the log says what was chosen; explicit rows stay."""
    assert EngineSettings().int8_max_rows == EngineSettings().int8_head_rows == -1
    assert EngineSettings(int8_max_rows=8, int8_head_rows=3).int8_head_rows == 3
    with caplog.at_level("INFO", logger="npc.engine.crossover"):
        core = EngineCore(tiny_model(), tiny_tokenizer(), EngineSettings(dtype="int8", kv_budget_mb=4))
    assert "int8 kernel crossovers measured" in caplog.text
    limits = {m.max_kernel_rows for m in core.runner.model.modules() if isinstance(m, Int8Linear)}
    assert limits <= {0, *crossover.ROWS}
    fixed = EngineCore(tiny_model(), tiny_tokenizer(),
                       EngineSettings(dtype="int8", kv_budget_mb=4, int8_max_rows=5, int8_head_rows=3))
    assert fixed.runner.model.head_int8.max_kernel_rows == 3
    assert {m.max_kernel_rows for m in fixed.runner.model.modules()
            if isinstance(m, Int8Linear) and m is not fixed.runner.model.head_int8} == {5}


def test_dtype_auto_is_int8_weights_on_cpu_and_int8_is_cpu_only() -> None:
    """auto means int8 weights with fp32 activations on a CPU; int8 elsewhere is refused."""
    auto = EngineSettings(device="cpu")
    assert auto.int8_weights() and auto.resolved_dtype() == torch.float32
    assert not EngineSettings(device="cpu", dtype="float32").int8_weights()
    with pytest.raises(ValueError, match="CPU"):
        EngineSettings(device="cuda", dtype="int8").int8_weights()


def test_openmp_threads_of_the_loading_thread_are_released_and_made_again() -> None:
    """The engine lets go of the starting thread's OpenMP pool (it slows the engine thread's
    parallel ops 3-4x while it exists); torch keeps working on that thread afterwards."""
    import torch

    from npc.engine.engine import release_openmp_threads

    a = torch.randn(256, 256)
    before = a @ a
    assert release_openmp_threads() is True
    assert torch.equal(a @ a, before)
