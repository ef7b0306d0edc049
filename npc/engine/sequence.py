"""One request as the scheduler sees it: sampling settings, token ids and progress.

Plain Python, no torch: the scheduler and block manager work on these, the runner reads
them to build tensors.
"""
from __future__ import annotations

import enum
import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Union

# A hook that narrows the next token: given the completion ids so far, return the ids
# allowed next (or None for "no restriction"). JSON-constrained output plugs in here.
AllowedFn = Callable[[list[int]], Union[Iterable[int], None]]


class Priority(enum.IntEnum):
    """Lower value is served first; LOW is for background work such as memory summaries."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops.

    temperature 0 means greedy. top_k 0 and top_p 1.0 disable those filters.
    `allowed` restricts every next token: a set of ids, or a callable (see `AllowedFn`).
    """

    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    allowed: frozenset[int] | AllowedFn | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError("temperature must be a finite number >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 disables it)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError("repetition_penalty must be > 0")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        if self.allowed is not None and not callable(self.allowed):
            allowed = frozenset(int(t) for t in self.allowed)
            if not allowed:
                raise ValueError("allowed must not be empty")
            object.__setattr__(self, "allowed", allowed)

    @property
    def greedy(self) -> bool:
        """True when the next token is simply the argmax."""
        return self.temperature == 0 or self.top_k == 1


_ids = itertools.count(1)


class Sequence:
    """A request's tokens and progress through prefill and decode.

    `tokens` holds the prompt then the completion. `num_computed` counts the tokens whose
    KV is in the cache; the next forward pass computes tokens from there. `block_table`
    lists the KV blocks holding positions 0.. in order (owned by the block manager).
    """

    __slots__ = ("seq_id", "tokens", "num_prompt", "params", "priority", "deadline",
                 "arrival", "status", "num_computed", "num_cached", "block_table",
                 "block_hashes", "finish_reason", "tag")

    def __init__(self, prompt: list[int], params: SamplingParams, *,
                 priority: Priority = Priority.NORMAL, deadline: float | None = None,
                 arrival: float | None = None, tag: object = None) -> None:
        if not prompt:
            raise ValueError("a prompt needs at least one token")
        self.seq_id = next(_ids)
        self.tokens = list(prompt)
        self.num_prompt = len(prompt)
        self.params = params
        self.priority = Priority(priority)
        self.deadline = deadline
        self.arrival = time.monotonic() if arrival is None else arrival
        self.status = Status.WAITING
        self.num_computed = 0
        self.num_cached = 0  # prompt tokens found in the prefix cache at admission
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # chain hashes of the full blocks registered so far
        self.finish_reason: str | None = None
        self.tag = tag  # the owner's handle (the engine keeps its stream here)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, len={len(self.tokens)}, computed={self.num_computed}, "
                f"status={self.status.value})")

    @property
    def completion(self) -> list[int]:
        """The generated token ids."""
        return self.tokens[self.num_prompt:]

    @property
    def num_completion(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def in_prefill(self) -> bool:
        """True while more than the last token still lacks KV (prompt or recompute after preemption)."""
        return len(self.tokens) - self.num_computed > 1

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
