"""Where an NPC's answer ends before its token budget: at a sentence end, piece by piece.

The default model rarely stops by itself; left alone it states the fact it was given and
then invents more ("...about 3 miles, more precisely 6 km, west"). Two early ends, both at
a sentence end, so an answer never stops mid-sentence:
- the *soft* end: past a share of the reply budget (`NpcSettings.soft_stop`);
- the *fact* end: the answer so far carries a content word of the facts retrieved for this
  line (one the line itself did not say), so the sentence that gives the fact is the last.
Measured with `bench/npc_quality.py` (see docs/benchmarks.md, "NPC answers: right facts").
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from npc.knowledge import keywords

SENTENCE_END = re.compile(r"[.!?…][\"')\]]*\s*$")
MIN_FACT_WORD = 3  # shorter content words ("m", "10") say too little to count as the fact
# Words the world's facts share that carry no fact of their own ("... from here", "near the").
GENERIC = frozenset("here near right found along over after village place people traveller".split())


def fact_words(facts: Sequence[str], line: str, npc_name: str) -> frozenset[str]:
    """Content words that only the retrieved facts bring: not in the line, not the NPC's name."""
    said = keywords(line) | keywords(npc_name) | GENERIC
    return frozenset(w for w in keywords(" ".join(facts)) - said if len(w) >= MIN_FACT_WORD and not w.isdigit())


class Ending:
    """Feed an answer's pieces in order; `feed` says when the answer should end here."""

    def __init__(self, *, soft_after: int, facts: frozenset[str] = frozenset()) -> None:
        self.soft_after = max(1, soft_after)
        self.facts = facts
        self.pieces = 0
        self.reason: str | None = None  # "soft" | "fact" once ended
        self._text: list[str] = []

    def feed(self, piece: str) -> bool:
        """Take the next piece; True when the answer should end after it."""
        self.pieces += 1
        self._text.append(piece)
        if self.reason is not None or not SENTENCE_END.search(piece):
            return self.reason is not None
        if self.pieces >= self.soft_after:
            self.reason = "soft"
        elif self.facts and self.facts & keywords("".join(self._text)):
            self.reason = "fact"
        return self.reason is not None
