"""Continuous batching: which sequences run in the next forward pass, and how many tokens each.

Plain Python, no torch. Each step every running sequence that is decoding gets one token;
sequences still in prefill share what is left of a per-step token budget, so a long
prompt is computed in chunks across steps and never stalls the others' decodes. Waiting
sequences are admitted (by priority, then arrival) while the running bound, the token
budget and the KV blocks allow. When decodes run out of KV blocks the least important,
youngest running sequence is preempted: its blocks are freed and it waits to be
recomputed (usually from the prefix cache).
"""
from __future__ import annotations

from dataclasses import dataclass

from npc.engine.blocks import BlockManager
from npc.engine.sequence import Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    """Bounds of one scheduler."""

    max_running: int = 32  # sequences in the running batch
    max_waiting: int = 64  # sequences queued for admission (beyond that: Busy)
    token_budget: int = 256  # tokens per forward pass (decodes + prefill chunks)
    max_model_len: int = 2048  # positions per sequence
    # Sequences computing prompt tokens in one step (0: no limit). Each brings fixed costs
    # beside its tokens (its own attention call per layer, copying its cached prefix into
    # its row), and every decode in that step waits for them: a burst of arrivals is
    # admitted a few per step instead of all at once.
    max_prefills: int = 0
    # Prompt tokens per step while any sequence decodes (0: what the token budget leaves).
    # A step's time grows with its prompt tokens and every decode in it waits the whole
    # step, so this bounds the gap between two tokens of a running answer; a prompt that
    # arrives alone still gets the full budget.
    prefill_with_decodes: int = 0

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError("max_running must be >= 1")
        if self.max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        if self.token_budget < self.max_running:
            raise ValueError("token_budget must be >= max_running so every decode fits a step")
        if self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        if self.max_prefills < 0 or self.prefill_with_decodes < 0:
            raise ValueError("max_prefills and prefill_with_decodes must be >= 0")


@dataclass(frozen=True, slots=True)
class Work:
    """One sequence's share of a step: compute tokens [start, start + count)."""

    seq: Sequence
    start: int
    count: int

    @property
    def samples(self) -> bool:
        """True when this piece reaches the sequence's last token, so a new token is sampled."""
        return self.start + self.count == len(self.seq.tokens)


class Scheduler:
    """Owns the waiting queue and the running batch. Not thread-safe: one thread drives it."""

    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.deferrals = 0  # admissions postponed to reuse a prefix being computed

    # -- membership -----------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a sequence for admission."""
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, seq: Sequence, reason: str) -> None:
        """Finish a sequence now (cancel, deadline, stop string) and free its KV blocks."""
        if seq.status is Status.FINISHED:
            return
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self.blocks.free(seq)
        else:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = reason

    # -- schedule -------------------------------------------------------------------------
    def schedule(self) -> list[Work]:
        """Pick this step's work and reserve KV blocks for it."""
        work: list[Work] = []
        budget = self.config.token_budget
        # Decodes first: each running sequence past prefill needs one slot and maybe a block.
        for seq in list(self.running):
            if seq.in_prefill or seq.status is not Status.RUNNING:
                continue
            while not self.blocks.can_append(seq, len(seq.tokens)):
                victim = self._victim()
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                self.blocks.append(seq, len(seq.tokens))
                work.append(Work(seq, seq.num_computed, 1))
                budget -= 1
        # Work already queued for preempted sequences is dropped above via status checks.
        work = [w for w in work if w.seq.status is Status.RUNNING]
        if work and self.config.prefill_with_decodes:
            budget = min(budget, self.config.prefill_with_decodes)
        # Unfinished prefills continue in admission order.
        prefills = 0
        room = self.config.max_prefills or self.config.max_running
        for seq in self.running:
            if budget <= 0 or prefills >= room:
                break
            if seq.in_prefill:
                count = min(budget, len(seq.tokens) - seq.num_computed)
                work.append(Work(seq, seq.num_computed, count))
                budget -= count
                prefills += 1
        # Admit new sequences while there is room.
        self.waiting.sort(key=lambda s: (s.priority, s.arrival, s.seq_id))
        self._make_room_for_priority()
        pending = self._pending_blocks()
        i = 0
        while (i < len(self.waiting) and budget > 0 and prefills < room
               and len(self.running) < self.config.max_running):
            seq = self.waiting[i]
            hashes = self.blocks.prefix_hashes(seq.tokens)
            cached = self.blocks.cached_blocks(seq.tokens)
            if cached < len(hashes) and hashes[cached] in pending:
                # A running prefill is computing this prompt's next block right now (players
                # greeting one NPC at once): wait for it instead of computing it twice.
                self.deferrals += 1
                i += 1
                continue
            if not self.blocks.can_allocate(seq):
                break
            self.waiting.pop(i)
            self.blocks.allocate(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            pending.update(hashes[len(seq.block_hashes):])
            count = min(budget, len(seq.tokens) - seq.num_computed)
            work.append(Work(seq, seq.num_computed, count))
            budget -= count
            prefills += 1
        return work

    def _make_room_for_priority(self) -> None:
        """With the batch full, a waiting request preempts a running one of lower priority.

        Background work (memory summaries, LOW) must never keep a player's answer waiting.
        """
        if not self.waiting or len(self.running) < self.config.max_running:
            return
        victim = self._victim()
        if victim.priority > self.waiting[0].priority:
            self._preempt(victim)
            self.waiting.sort(key=lambda s: (s.priority, s.arrival, s.seq_id))

    def _pending_blocks(self) -> set[int]:
        """Chain hashes of prompt blocks that running prefills have yet to compute and register."""
        pending: set[int] = set()
        for seq in self.running:
            if seq.in_prefill:
                pending.update(self.blocks.prefix_hashes(seq.tokens)[len(seq.block_hashes):])
        return pending

    def _victim(self) -> Sequence:
        # The least important, then the most recently arrived, gives way first.
        return max(self.running, key=lambda s: (s.priority, s.arrival, s.seq_id))

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = Status.WAITING
        self.waiting.append(seq)
        self.preemptions += 1

    # -- postprocess ----------------------------------------------------------------------
    def postprocess(self, work: list[Work], sampled: dict[int, int],
                    eos_ids: frozenset[int]) -> list[Sequence]:
        """Record computed tokens and sampled ones; finish on EOS or max_tokens.

        `sampled` maps seq_id to the new token for each piece of work that samples.
        Returns the sequences that received a token, finished or not.
        """
        grown: list[Sequence] = []
        for w in work:
            seq = w.seq
            if seq.status is not Status.RUNNING:
                continue  # cancelled while the forward pass ran
            seq.num_computed = w.start + w.count
            self.blocks.commit(seq)
            token = sampled.get(seq.seq_id)
            if token is None:
                continue
            seq.tokens.append(token)
            grown.append(seq)
            params = seq.params
            if not params.ignore_eos and token in eos_ids:
                self._finish(seq, "stop")
            elif seq.num_completion >= params.max_tokens:
                self._finish(seq, "length")
            elif len(seq.tokens) >= self.config.max_model_len:
                self._finish(seq, "length")
        return grown

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = reason
