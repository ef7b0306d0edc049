"""KV block bookkeeping with prefix caching. Plain Python: no tensors here.

The KV cache is `num_blocks` fixed-size blocks of `block_size` token slots each; the
runner owns the memory, this module decides which block holds which positions.

Prefix caching: once a block is full and its KV computed, it is registered under a chain
hash of (hash of the previous block, its token ids), so the hash names the whole prefix
up to and including that block. A new request whose prompt starts with the same tokens
takes those blocks by reference instead of recomputing them (persona and lore shared by
every player talking to one NPC). Blocks nobody references keep their KV and sit in an
LRU list; they are reused as-is on a hit, and recycled least-recently-used first when a
fresh block is needed.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from npc.engine.sequence import Sequence

_ROOT_HASH = 0x5EED


def chain_hash(prev: int, tokens: tuple[int, ...]) -> int:
    """Hash of a full block given the previous block's chain hash."""
    return hash((prev, tokens))


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set while registered in the prefix cache
    tokens: tuple[int, ...] = ()  # kept to rule out hash collisions on a hit


class BlockManager:
    """Allocates KV blocks to sequences and keeps the prefix cache.

    Call `allocate` when admitting a sequence (takes its whole current length), `append`
    before each step that grows it, `commit` after a forward pass so newly full blocks
    become shareable, and `free` when it finishes, is cancelled or preempted.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # never hashed; pop() from the end
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest first
        self._by_hash: dict[int, int] = {}
        self.hit_tokens = 0  # prompt tokens served from the cache
        self.query_tokens = 0  # prompt tokens looked up

    # -- capacity -----------------------------------------------------------------------
    @property
    def num_available(self) -> int:
        """Blocks that can be handed out now (free plus evictable)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.num_blocks - self.num_available

    def blocks_for(self, num_tokens: int) -> int:
        """How many blocks hold `num_tokens` positions."""
        return -(-num_tokens // self.block_size)

    # -- prefix lookup --------------------------------------------------------------------
    def prefix_hashes(self, tokens: list[int]) -> list[int]:
        """Chain hashes of the full blocks of `tokens` that could ever come from the cache.

        The last token is left out: it must be computed to get logits, so it is never matched.
        """
        bs = self.block_size
        hashes: list[int] = []
        prev = _ROOT_HASH
        for i in range((len(tokens) - 1) // bs):
            prev = chain_hash(prev, tuple(tokens[i * bs:(i + 1) * bs]))
            hashes.append(prev)
        return hashes

    def _match(self, tokens: list[int]) -> list[int]:
        """Block ids of the longest cached prefix, leaving at least one token to compute."""
        bs = self.block_size
        matched: list[int] = []
        prev = _ROOT_HASH
        for i in range((len(tokens) - 1) // bs):
            chunk = tuple(tokens[i * bs:(i + 1) * bs])
            h = chain_hash(prev, chunk)
            bid = self._by_hash.get(h)
            if bid is None or self.blocks[bid].tokens != chunk:
                break
            matched.append(bid)
            prev = h
        return matched

    def cached_blocks(self, tokens: list[int]) -> int:
        """How many leading full blocks of `tokens` the cache holds now."""
        return len(self._match(tokens))

    def can_allocate(self, seq: Sequence) -> bool:
        """True if `allocate(seq)` would succeed now."""
        matched = self._match(seq.tokens)
        # Matched blocks sitting in the LRU list stop being available once taken.
        taken_from_lru = sum(1 for b in matched if self.blocks[b].ref_count == 0)
        need = self.blocks_for(len(seq.tokens)) - len(matched)
        return need <= self.num_available - taken_from_lru

    def allocate(self, seq: Sequence) -> int:
        """Give `seq` blocks for all its tokens, reusing cached prefix blocks.

        Sets seq.num_computed to the cached token count and returns it. Raises
        RuntimeError if there is not enough room (check `can_allocate` first).
        """
        if seq.block_table:
            raise RuntimeError(f"{seq!r} already holds blocks")
        if not self.can_allocate(seq):
            raise RuntimeError("not enough free KV blocks")
        matched = self._match(seq.tokens)
        prev = _ROOT_HASH
        for bid in matched:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self._evictable[bid]
            block.ref_count += 1
            seq.block_table.append(bid)
            prev = chain_hash(prev, block.tokens)
            seq.block_hashes.append(prev)
        for _ in range(self.blocks_for(len(seq.tokens)) - len(matched)):
            seq.block_table.append(self._take_fresh())
        cached = len(matched) * self.block_size
        self.query_tokens += len(seq.tokens)
        self.hit_tokens += cached
        seq.num_computed = cached
        seq.num_cached = cached
        return cached

    def _take_fresh(self) -> int:
        if self._free:
            bid = self._free.pop()
        elif self._evictable:
            bid, _ = self._evictable.popitem(last=False)  # least recently used
            block = self.blocks[bid]
            if block.hash is not None and self._by_hash.get(block.hash) == bid:
                del self._by_hash[block.hash]
            block.hash, block.tokens = None, ()
        else:
            raise RuntimeError("no free KV blocks")
        self.blocks[bid].ref_count = 1
        return bid

    # -- growth ---------------------------------------------------------------------------
    def can_append(self, seq: Sequence, num_tokens: int) -> bool:
        """True if `seq` can grow to `num_tokens` positions now."""
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.num_available

    def append(self, seq: Sequence, num_tokens: int) -> None:
        """Make sure `seq` has blocks for `num_tokens` positions (its length before the next step)."""
        need = self.blocks_for(num_tokens) - len(seq.block_table)
        if need > self.num_available:
            raise RuntimeError("not enough free KV blocks")
        for _ in range(need):
            seq.block_table.append(self._take_fresh())

    def commit(self, seq: Sequence) -> None:
        """Register the sequence's newly full, computed blocks in the prefix cache."""
        bs = self.block_size
        full = seq.num_computed // bs
        prev = seq.block_hashes[-1] if seq.block_hashes else _ROOT_HASH
        for i in range(len(seq.block_hashes), full):
            chunk = tuple(seq.tokens[i * bs:(i + 1) * bs])
            prev = chain_hash(prev, chunk)
            seq.block_hashes.append(prev)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and prev not in self._by_hash:
                # If another block already holds this prefix, ours stays private.
                block.hash, block.tokens = prev, chunk
                self._by_hash[prev] = block.block_id

    # -- release --------------------------------------------------------------------------
    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; unreferenced cached blocks stay reusable (LRU)."""
        # Tail blocks first, so a prefix's head outlives its tail in the LRU order.
        for bid in reversed(seq.block_table):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count < 0:
                raise RuntimeError(f"block {bid} freed twice")
            if block.ref_count == 0:
                if block.hash is not None:
                    self._evictable[bid] = None
                else:
                    self._free.append(bid)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_computed = 0

    @property
    def hit_rate(self) -> float:
        """Share of looked-up prompt tokens that came from the prefix cache."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0
