"""KV block bookkeeping and prefix caching, without torch."""
from __future__ import annotations

import sys

import pytest

from npc.engine.blocks import BlockManager
from npc.engine.sequence import SamplingParams, Sequence

PARAMS = SamplingParams(temperature=0, max_tokens=4)


def seq(tokens: list[int]) -> Sequence:
    return Sequence(tokens, PARAMS)


def computed(bm: BlockManager, s: Sequence) -> None:
    """Pretend the runner computed every token, and register full blocks."""
    s.num_computed = len(s.tokens)
    bm.commit(s)


def test_module_does_not_import_torch() -> None:
    """The block manager and scheduler are importable without pulling in torch."""
    import subprocess

    code = ("import sys; import npc.engine.blocks, npc.engine.scheduler; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_allocate_takes_whole_prompt_and_free_returns_all() -> None:
    """A sequence gets ceil(len / block_size) blocks and gives all back on free."""
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq(list(range(10)))
    assert bm.allocate(s) == 0
    assert len(s.block_table) == 3 and bm.num_used == 3
    bm.free(s)
    assert bm.num_used == 0 and bm.num_available == 8 and s.block_table == []


def test_prefix_hit_shares_blocks_and_counts_hits() -> None:
    """A second prompt with the same first blocks reuses them by reference."""
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(10)))
    bm.allocate(a)
    computed(bm, a)
    b = seq(list(range(8)) + [99, 98, 97])
    assert bm.allocate(b) == 8
    assert b.block_table[:2] == a.block_table[:2]
    assert b.block_table[2] != a.block_table[2]
    assert bm.blocks[a.block_table[0]].ref_count == 2
    assert bm.hit_tokens == 8 and 0 < bm.hit_rate < 1


def test_prefix_never_covers_the_last_token() -> None:
    """An identical prompt still leaves its last token to compute (its logits are needed)."""
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(8)))
    bm.allocate(a)
    computed(bm, a)
    b = seq(list(range(8)))
    assert bm.allocate(b) == 4
    assert b.num_computed == 4


def test_uncomputed_blocks_are_not_shared() -> None:
    """Blocks are registered only after commit, so a prompt still in prefill is not matched."""
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(9)))
    bm.allocate(a)
    a.num_computed = 4
    bm.commit(a)
    b = seq(list(range(9)))
    assert bm.allocate(b) == 4


def test_freed_cached_blocks_stay_reusable_until_evicted_lru() -> None:
    """Unreferenced cached blocks serve later hits, and are recycled oldest first."""
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq([1, 2, 3, 4, 5])
    bm.allocate(a)
    computed(bm, a)
    bm.free(a)
    assert bm.num_available == 4
    b = seq([1, 2, 3, 4, 9])
    assert bm.allocate(b) == 4  # both full blocks came back from the LRU list
    bm.free(b)
    # Needing every block evicts the cached ones; the prefix is then gone.
    c = seq(list(range(100, 108)))
    bm.allocate(c)
    bm.free(c)
    d = seq([1, 2, 3, 4, 9])
    assert bm.allocate(d) == 0


def test_eviction_prefers_tail_blocks_of_a_prefix() -> None:
    """Freeing releases tail blocks first, so under pressure a prefix's head survives longest."""
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq([1, 2, 3, 4, 5, 6, 7])
    bm.allocate(a)
    computed(bm, a)
    bm.free(a)
    # Two fresh blocks: the never-hashed partial block goes first, then the LRU tail.
    b = seq([50, 51, 52])
    bm.allocate(b)
    bm.free(b)
    c = seq([1, 2, 3, 4, 5, 6, 9])
    assert bm.allocate(c) == 4  # blocks 1-2 survived, block 3 was recycled


def test_can_allocate_respects_capacity() -> None:
    """A prompt that needs more blocks than are available is refused without side effects."""
    bm = BlockManager(num_blocks=2, block_size=4)
    a = seq(list(range(5)))
    assert bm.can_allocate(a)
    bm.allocate(a)
    b = seq(list(range(20, 25)))
    assert not bm.can_allocate(b)
    with pytest.raises(RuntimeError):
        bm.allocate(b)
    assert b.block_table == [] and bm.num_used == 2


def test_append_grows_by_blocks() -> None:
    """Growing past a block boundary takes exactly one more block."""
    bm = BlockManager(num_blocks=4, block_size=4)
    a = seq([1, 2, 3, 4])
    bm.allocate(a)
    assert len(a.block_table) == 1
    bm.append(a, 4)
    assert len(a.block_table) == 1
    bm.append(a, 5)
    assert len(a.block_table) == 2


def test_double_free_detected() -> None:
    """Freeing blocks twice is a bookkeeping bug and raises instead of corrupting counts."""
    bm = BlockManager(num_blocks=2, block_size=4)
    a = seq([1, 2, 3])
    bm.allocate(a)
    table = list(a.block_table)
    bm.free(a)
    a.block_table = table
    with pytest.raises(RuntimeError):
        bm.free(a)


def test_hash_collision_is_not_a_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if two different blocks hash alike, their tokens are compared before sharing."""
    import npc.engine.blocks as blocks

    monkeypatch.setattr(blocks, "chain_hash", lambda prev, tokens: 42)
    bm = BlockManager(num_blocks=8, block_size=2)
    a = seq([1, 2, 3])
    bm.allocate(a)
    computed(bm, a)
    b = seq([7, 8, 9])
    assert bm.allocate(b) == 0
