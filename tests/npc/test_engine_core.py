"""The synchronous engine core with the tiny model: batching, prefix cache, chunking, preemption."""
from __future__ import annotations

import os

import pytest

from npc.engine.engine import EngineCore, EngineSettings, Result
from npc.engine.errors import RequestTooLong
from npc.engine.runner import Runner
from npc.engine.sequence import SamplingParams, Sequence
from npc.engine.tiny import tiny_model, tiny_tokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
TOK = tiny_tokenizer()
MODEL = tiny_model()


def make_core(**settings: object) -> EngineCore:
    # Fixed int8 crossovers (not measured at load): these tests compare outputs across batch
    # shapes bit for bit, so which kernel each pass takes must not vary from run to run.
    base = dict(threads=1, kv_budget_mb=2, block_size=8, token_budget=64, max_running=8, max_waiting=16,
                int8_max_rows=6, int8_head_rows=16)
    base.update(settings)
    return EngineCore(MODEL, TOK, EngineSettings(**base))  # type: ignore[arg-type]


def step(core: EngineCore, results: dict[int, Result]) -> None:
    """One engine step, keeping the results of requests that finish in it."""
    for ev in core.step():
        if ev.result is not None:
            results[ev.seq.seq_id] = ev.result


def drain(core: EngineCore, seqs: list[Sequence], results: dict[int, Result] | None = None) -> list[Result]:
    """Step until the engine is idle; results of the given sequences in the same order."""
    results = {} if results is None else results
    for _ in range(10_000):
        if not core.has_work():
            break
        step(core, results)
    return [results[s.seq_id] for s in seqs]


def prompts(n: int) -> list[list[int]]:
    return [TOK.encode(f"Villager {i} asks the smith about the {'old ' * i}sword.") for i in range(n)]


def alone(tokens: list[int], params: SamplingParams = GREEDY) -> Result:
    core = make_core()
    return drain(core, [core.add(Sequence(tokens, params))])[0]


def test_batched_greedy_equals_one_at_a_time() -> None:
    """Six prompts run together produce exactly the tokens each produces alone."""
    ps = prompts(6)
    core = make_core()
    together = drain(core, [core.add(Sequence(p, GREEDY)) for p in ps])
    for p, r in zip(ps, together):
        assert r.token_ids == alone(p).token_ids
        assert r.finish_reason == "length" and r.completion_tokens == 24


def test_join_and_leave_mid_batch() -> None:
    """Requests that join while others decode, and leave early, do not disturb anyone's tokens."""
    ps = prompts(4)
    core = make_core()
    short = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    first = [core.add(Sequence(ps[0], GREEDY)), core.add(Sequence(ps[1], short))]
    results: dict[int, Result] = {}
    for _ in range(8):
        step(core, results)
    assert first[1].finished and not first[0].finished
    late = [core.add(Sequence(ps[2], GREEDY)), core.add(Sequence(ps[3], short))]
    results = drain(core, first + late, results)
    assert results[0].token_ids == alone(ps[0]).token_ids
    assert results[1].token_ids == alone(ps[1], short).token_ids
    assert results[2].token_ids == alone(ps[2]).token_ids
    assert results[3].token_ids == alone(ps[3], short).token_ids


def test_prefix_cache_hits_give_same_tokens_as_misses() -> None:
    """A persona prefix computed once is reused by later requests with identical output."""
    persona = TOK.encode("You are Brann, the village smith. You speak plainly and briefly. " * 3)
    lines = [TOK.encode(f"<player {i}> Any news?") for i in range(3)]
    core = make_core(share_prefix_attention=True)
    drain(core, [core.add(Sequence(persona + lines[0], GREEDY))])
    hits_before = core.blocks.hit_tokens
    warm = drain(core, [core.add(Sequence(persona + line, GREEDY)) for line in lines[1:]])
    assert core.blocks.hit_tokens - hits_before >= 2 * (len(persona) // 8) * 8
    assert core.metrics.snapshot()["prefix_hit_rate"] > 0
    assert core.runner.shared_decodes > 0  # the warm pair decoded over their shared prefix together
    for line, r in zip(lines[1:], warm):
        assert r.token_ids == alone(persona + line).token_ids


def test_long_prompt_is_chunked_and_decodes_keep_going() -> None:
    """A prompt longer than the step budget is prefilled over several steps while others decode each step."""
    core = make_core(token_budget=32, max_running=4)
    talker = core.add(Sequence(prompts(1)[0], GREEDY))
    core.step()  # the talker's prefill (and first token)
    long_prompt = TOK.encode("the long lore of the old kingdom " * 6)  # ~200 tokens
    reader = core.add(Sequence(long_prompt, GREEDY))
    prefill_steps = 0
    while reader.num_computed < len(long_prompt) - 1:
        before = len(talker.tokens)
        core.step()
        prefill_steps += 1
        assert len(talker.tokens) == before + 1, "the decode stalled behind a prefill"
    assert prefill_steps >= len(long_prompt) // 32
    results = drain(core, [talker, reader])
    assert results[1].token_ids == alone(long_prompt).token_ids


def test_preemption_under_kv_pressure_keeps_outputs() -> None:
    """With too few KV blocks for everyone, sequences are preempted and recomputed with unchanged tokens."""
    ps = prompts(4)
    greedy = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    seeded = SamplingParams(temperature=0.8, seed=5, max_tokens=40, ignore_eos=True)
    params = [greedy, seeded, greedy, seeded]
    core = make_core(kv_budget_mb=0.1, block_size=4, max_running=3)  # 51 blocks of 4 tokens
    seqs = [core.add(Sequence(p, sp)) for p, sp in zip(ps, params)]
    results = drain(core, seqs)
    assert core.scheduler.preemptions > 0
    for p, sp, r in zip(ps, params, results):
        assert r.token_ids == alone(p, sp).token_ids
    assert core.blocks.num_used == 0


def test_abort_frees_blocks_immediately() -> None:
    """Aborting a running request returns all its KV blocks before the next step."""
    core = make_core()
    s = core.add(Sequence(prompts(3)[2], GREEDY))
    core.step()
    assert core.blocks.num_used > 0
    ev = core.abort(s)
    assert ev is not None and ev.result.finish_reason == "cancelled"
    assert core.blocks.num_used == 0 and not core.has_work()


def test_request_too_long_is_refused() -> None:
    """A prompt beyond the context window is refused up front rather than queued forever."""
    core = make_core(max_model_len=64)
    with pytest.raises(RequestTooLong):
        core.add(Sequence(list(range(100)), GREEDY))


def test_seeded_sampling_is_independent_of_batch() -> None:
    """A seeded sampled request yields the same tokens alone and beside others."""
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    ps = prompts(3)
    core = make_core()
    other = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    together = drain(core, [core.add(Sequence(ps[0], params)), core.add(Sequence(ps[1], other)),
                            core.add(Sequence(ps[2], other))])
    assert together[0].token_ids == alone(ps[0], params).token_ids


def test_preempted_request_keeps_its_seeded_stream_when_its_row_is_taken() -> None:
    """A preempted seeded request whose KV row goes to a HIGH priority newcomer still samples as if alone."""
    from npc.engine.sequence import Priority

    ps = prompts(3)
    seeded = SamplingParams(temperature=0.8, seed=5, max_tokens=40, ignore_eos=True)
    core = make_core(kv_budget_mb=0.06, block_size=4, max_running=2)  # 30 blocks of 4 tokens
    results: dict[int, Result] = {}
    seqs = [core.add(Sequence(p, seeded)) for p in ps[:2]]
    while core.scheduler.preemptions == 0:
        step(core, results)
    seqs.append(core.add(Sequence(ps[2], GREEDY, priority=Priority.HIGH)))
    out = drain(core, seqs, results)
    for p, sp, r in zip(ps, [seeded, seeded, GREEDY], out):
        assert r.token_ids == alone(p, sp).token_ids


def test_shared_prefix_attention_matches_plain_attention() -> None:
    """Decoding a group over its shared cached prefix gives the same logits as attending row by row."""
    persona = TOK.encode("You are Brann, the village smith. You speak plainly and briefly. " * 3)
    core = make_core(share_prefix_attention=True)
    drain(core, [core.add(Sequence(persona + TOK.encode("first"), GREEDY))])
    for i in range(4):
        core.add(Sequence(persona + TOK.encode(f"<player {i}> news?" + "!" * i), GREEDY))
    for _ in range(3):
        core.step()
    work = core.scheduler.schedule()
    assert all(w.count == 1 for w in work) and len(work) == 4
    seen: list = []
    sampler = core.runner.sampler

    def capture(logits, seqs):
        seen.append(logits.clone())
        return sampler(logits, seqs)

    core.runner.sampler = capture
    before = core.runner.shared_decodes
    shared_tokens = core.runner.run(work)
    assert core.runner.shared_decodes == before + 4
    core.runner.min_shared_prefix = None  # the same work again, every decode on its own row
    plain_tokens = core.runner.run(work)
    assert core.runner.shared_decodes == before + 4
    assert shared_tokens == plain_tokens
    assert (seen[0] - seen[1]).abs().max() < 1e-3


def test_a_long_prompt_mid_conversation_changes_no_tokens() -> None:
    """A long prompt arriving while another conversation decodes leaves both their tokens as alone."""
    short = prompts(2)[1]
    long_prompt = TOK.encode("the long lore of the old kingdom and its many kings " * 8)  # ~420 tokens
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    core = make_core(max_model_len=1024)
    results: dict[int, Result] = {}
    first = core.add(Sequence(short, params))
    for _ in range(5):
        step(core, results)
    second = core.add(Sequence(long_prompt, params))
    out = drain(core, [first, second], results)
    assert core.runner.k_rows.shape[3] == 1024  # rows span the whole context from the start
    assert out[0].token_ids == alone(short, params).token_ids
    assert out[1].token_ids == alone(long_prompt, params).token_ids


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_kv_rows_are_reserved_not_committed() -> None:
    """Rows for the whole context are address space: RAM is taken only where K/V is written."""
    before = _resident_bytes()
    runner = Runner(MODEL, num_blocks=4, block_size=8, max_running=64, row_len=32_768)
    reserved = runner.k_rows.numel() * runner.k_rows.element_size() * 2
    grown = _resident_bytes() - before
    assert reserved >= 2**30
    assert grown < reserved // 16, (grown, reserved)
    assert runner.k_rows[:, 63, :, -1].abs().sum().item() == 0  # reads as zeros
    # A token written to every layer and head of every row commits pages, not huge pages
    # (2 MiB each, which numpy's allocator would have asked for: 512 MiB here).
    before = _resident_bytes()
    runner.k_rows[:, :, :, 0] = 1.0
    runner.v_rows[:, :, :, 0] = 1.0
    assert _resident_bytes() - before < 32 * 2**20




def test_slot_runs_merge_adjacent_blocks_and_split_at_gaps() -> None:
    """A prefix is copied from the pages as runs of adjacent slots, which must cover exactly its positions."""
    runner = Runner(MODEL, num_blocks=16, block_size=4, max_running=2, row_len=64)
    table = [3, 4, 9]  # blocks 3 and 4 are adjacent in the pages, 9 is not
    runs = runner._slot_runs(table, 2, 11)
    assert runs == [(2, 14, 6), (8, 36, 3)]
    flat = [slot + i for _, slot, n in runs for i in range(n)]
    assert flat == runner._slots(table, 2, 11)
    assert runner._slot_runs(table, 5, 5) == []
