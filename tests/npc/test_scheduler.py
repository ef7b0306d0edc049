"""The continuous-batching scheduler on its own: plain Python, fake sampled tokens, no torch."""
from __future__ import annotations

import pytest

from npc.engine.blocks import BlockManager
from npc.engine.scheduler import Scheduler, SchedulerConfig
from npc.engine.sequence import Priority, SamplingParams, Sequence, Status

EOS = frozenset({0})


def make(num_blocks: int = 64, block_size: int = 4, **config: int) -> Scheduler:
    base = dict(max_running=4, max_waiting=8, token_budget=16, max_model_len=256)
    base.update(config)
    return Scheduler(SchedulerConfig(**base), BlockManager(num_blocks, block_size))


def seq(n: int, max_tokens: int = 8, priority: Priority = Priority.NORMAL, start: int = 1) -> Sequence:
    return Sequence(list(range(start, start + n)), SamplingParams(temperature=0, max_tokens=max_tokens),
                    priority=priority)


def run_step(s: Scheduler, token: int = 7) -> list:
    """Schedule, pretend to run (every sampling piece yields `token`), postprocess."""
    work = s.schedule()
    s.postprocess(work, {w.seq.seq_id: token for w in work if w.samples}, EOS)
    return work


def test_prefill_is_chunked_by_the_token_budget() -> None:
    """A 40-token prompt with a budget of 16 is computed 16, 16, 8 and only then samples."""
    s = make()
    a = seq(40)
    s.add(a)
    counts = [w.count for w in (run_step(s)[0], run_step(s)[0], run_step(s)[0])]
    assert counts == [16, 16, 8]
    assert a.num_completion == 1 and a.num_computed == 40


def test_decodes_come_first_and_prefill_gets_the_rest() -> None:
    """Running decodes take one token each; a new prompt fills only what remains of the budget."""
    s = make()
    a, b = seq(3), seq(3, start=50)
    s.add(a)
    s.add(b)
    run_step(s)
    c = seq(40, start=100)
    s.add(c)
    work = run_step(s)
    assert [(w.seq, w.count) for w in work] == [(a, 1), (b, 1), (c, 14)]


def test_running_bound_holds_and_finished_make_room() -> None:
    """No more than max_running run at once; a finished sequence's slot goes to the next waiting one."""
    s = make(max_running=2)
    seqs = [seq(2, max_tokens=2, start=10 * i + 1) for i in range(3)]
    for x in seqs:
        s.add(x)
    run_step(s)
    assert s.running == seqs[:2] and s.waiting == [seqs[2]]
    run_step(s)
    assert seqs[0].finished and seqs[0].finish_reason == "length"
    run_step(s)
    assert seqs[2].status is Status.RUNNING


def test_priority_then_arrival_orders_admission() -> None:
    """Waiting sequences are admitted HIGH before NORMAL before LOW, then oldest first."""
    s = make(max_running=1)
    low, normal, high = seq(2, priority=Priority.LOW), seq(2), seq(2, priority=Priority.HIGH)
    for x in (low, normal, high):
        s.add(x)
    run_step(s)
    assert s.running == [high]


def test_eos_finishes_and_frees_blocks() -> None:
    """Sampling an EOS finishes the sequence with reason stop and frees its blocks."""
    s = make()
    a = seq(5)
    s.add(a)
    run_step(s, token=0)
    assert a.finished and a.finish_reason == "stop"
    assert s.blocks.num_used == 0 and not s.has_work()


def test_out_of_blocks_preempts_lowest_priority_youngest() -> None:
    """When a decode needs a block and none is free, the least important newest sequence is preempted."""
    s = make(num_blocks=4, block_size=2, max_running=4, token_budget=8)
    old = seq(3, max_tokens=20)
    young_low = seq(3, max_tokens=20, priority=Priority.LOW, start=50)
    s.add(old)
    s.add(young_low)
    run_step(s)  # both prefilled: 2 blocks each, all 4 used; both now length 4
    run_step(s)  # position 3 still fits their second blocks; now length 5
    assert s.preemptions == 0
    run_step(s)  # position 4 needs a third block each -> the LOW one gives way
    assert s.preemptions >= 1
    assert young_low.status is Status.WAITING and young_low.block_table == []
    assert old.status is Status.RUNNING


def test_abort_waiting_and_running() -> None:
    """Aborting removes a sequence from either queue and frees anything it held."""
    s = make(max_running=1)
    a, b = seq(4), seq(4, start=9)
    s.add(a)
    s.add(b)
    run_step(s)
    s.abort(b, "cancelled")
    s.abort(a, "cancelled")
    assert a.finish_reason == b.finish_reason == "cancelled"
    assert not s.has_work() and s.blocks.num_used == 0
    s.abort(a, "cancelled")  # idempotent


def test_config_validation() -> None:
    """A token budget smaller than the running bound is refused (decodes could not all fit a step)."""
    with pytest.raises(ValueError):
        SchedulerConfig(max_running=8, token_budget=4)


def test_same_prompt_waits_for_the_running_prefill_then_hits_the_cache() -> None:
    """A prompt whose prefix another request is prefilling waits for it and then reuses its blocks."""
    s = make(token_budget=16)
    first, second = seq(40), seq(40)  # identical prompts: two players greeting one NPC at once
    s.add(first)
    s.add(second)
    run_step(s)
    assert s.running == [first] and s.waiting == [second]
    while first.in_prefill:
        run_step(s)
    assert s.deferrals >= 1  # offered a spare budget, it still waited for the shared blocks
    run_step(s)
    assert second.status is Status.RUNNING
    assert second.num_cached == 36  # every full block but the one holding the last token
    assert second.block_table[:9] == first.block_table[:9]


def test_unrelated_prompt_is_not_held_back_by_a_deferred_one() -> None:
    """While one request waits for a shared prefix, a later unrelated request is admitted past it."""
    s = make(token_budget=16)
    first, twin, other = seq(40), seq(40), seq(6, start=500)
    for x in (first, twin, other):
        s.add(x)
    work = run_step(s)
    assert [w.seq for w in work] == [first]  # the budget went to the first prefill
    run_step(s)
    run_step(s)
    assert other.status is Status.RUNNING and twin.status is Status.WAITING


def test_waiting_player_preempts_running_background_work() -> None:
    """With the batch full of LOW work, a NORMAL request takes a slot at once; the LOW one waits."""
    s = make(max_running=2)
    low_a, low_b = seq(3, max_tokens=50, priority=Priority.LOW), seq(3, max_tokens=50, priority=Priority.LOW, start=20)
    s.add(low_a)
    s.add(low_b)
    run_step(s)
    player = seq(3, start=40)
    s.add(player)
    run_step(s)
    assert player.status is Status.RUNNING
    assert low_b.status is Status.WAITING and low_a.status is Status.RUNNING  # the younger LOW gave way
    assert s.preemptions == 1
    other = seq(3, start=60)  # a second player: the last LOW one gives way too
    s.add(other)
    run_step(s)
    assert other.status is Status.RUNNING and low_a.status is Status.WAITING and s.preemptions == 2
    third = seq(3, start=80)  # equal priorities never preempt each other
    s.add(third)
    run_step(s)
    assert third.status is Status.WAITING and s.preemptions == 2


def test_prefills_per_step_are_bounded_and_decodes_are_not() -> None:
    """With max_prefills=2 a burst of four prompts is admitted two per step; running decodes all go on."""
    s = make(max_running=8, token_budget=32, max_prefills=2)
    burst = [seq(3, start=10 * i + 1) for i in range(4)]
    for q in burst:
        s.add(q)
    first = run_step(s)
    assert [w.seq for w in first] == burst[:2]
    second = run_step(s)
    assert [(w.seq, w.count) for w in second] == [(burst[0], 1), (burst[1], 1), (burst[2], 3), (burst[3], 3)]
    unlimited = make(max_running=8, token_budget=32)
    for q in (seq(3, start=10 * i + 1) for i in range(4)):
        unlimited.add(q)
    assert len(run_step(unlimited)) == 4
    with pytest.raises(ValueError):
        SchedulerConfig(max_prefills=-1)


def test_prompt_tokens_are_capped_while_answers_decode() -> None:
    """With prefill_with_decodes=8, a prompt arriving alone gets the whole budget; one arriving
    while another answer decodes gets at most 8 tokens a step, and the decode goes on each step."""
    s = make(max_running=4, token_budget=32, prefill_with_decodes=8)
    a = seq(20)
    s.add(a)
    assert [w.count for w in run_step(s)] == [20]  # alone: all of it in one step
    b = seq(20, start=100)
    s.add(b)
    steps = [[(w.seq, w.count) for w in run_step(s)] for _ in range(3)]
    assert steps == [[(a, 1), (b, 8)], [(a, 1), (b, 8)], [(a, 1), (b, 4)]]
    assert b.num_completion == 1
    uncapped = make(max_running=4, token_budget=32)
    c = seq(20)
    uncapped.add(c)
    run_step(uncapped)
    d = seq(20, start=100)
    uncapped.add(d)
    assert [(w.seq, w.count) for w in run_step(uncapped)] == [(c, 1), (d, 20)]
    with pytest.raises(ValueError):
        SchedulerConfig(prefill_with_decodes=-1)
