"""What an NPC remembers of each player: recent turns verbatim, older ones folded into a summary.

Pure bookkeeping: the shard loads and saves `Memory` through the store, and the NPC service
asks the engine (at low priority, on idle capacity) to write the summaries that `fold`
calls for.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from npc.prompt import Message, Recollection, Turn


@dataclass(frozen=True, slots=True)
class Memory:
    """One NPC's memory of one player (keyed by the player's lower-cased name)."""

    npc_id: str
    player_key: str
    player_name: str
    summary: str = ""
    turns: tuple[Turn, ...] = ()
    updated_ms: int = 0

    def recollection(self) -> Recollection:
        return Recollection(summary=self.summary, turns=self.turns)


def remember(memory: Memory, turn: Turn, *, keep_tokens: int, count: Callable[[str], int],
             now_ms: int) -> tuple[Memory, tuple[Turn, ...]]:
    """Add a turn; return the new memory and the oldest turns that no longer fit verbatim.

    The returned turns are gone from the verbatim list; the caller folds them into the
    summary (`summary_request`) and then `with_summary`. At least the newest turn stays.
    """
    turns = list(memory.turns) + [turn]
    folded: list[Turn] = []
    while len(turns) > 1 and sum(count(t.line) + count(t.answer) for t in turns) > keep_tokens:
        folded.append(turns.pop(0))
    return replace(memory, turns=tuple(turns), updated_ms=now_ms), tuple(folded)


def summary_request(npc_name: str, player_name: str, summary: str,
                    folded: Sequence[Turn]) -> list[Message]:
    """Messages asking the model for a short updated summary of what was said."""
    said = "\n".join(f"{player_name}: {t.line}\n{npc_name}: {t.answer}" for t in folded)
    before = f"Earlier summary: {summary}\n" if summary else ""
    return [
        {"role": "system", "content": "You write very short notes. One or two sentences. "
                                      "Keep names and facts, nothing else."},
        {"role": "user", "content": f"{before}Conversation:\n{said}\n\nWrite a note about "
                                    f"{player_name} and what they talked about with {npc_name}."},
    ]


def with_summary(memory: Memory, summary: str, max_chars: int = 600) -> Memory:
    """The memory with a new summary, trimmed to a bound at a sentence end where possible."""
    text = " ".join(summary.split())
    if len(text) > max_chars:
        cut = text[:max_chars]
        end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        text = cut[: end + 1] if end > 0 else cut
    return replace(memory, summary=text)


def fallback_summary(memory: Memory, folded: Sequence[Turn], max_chars: int = 600) -> Memory:
    """A summary without the model (when it is busy or fails): the player's own lines, kept short."""
    said = "; ".join(t.line.strip() for t in folded if t.line.strip())
    text = f"{memory.summary} {memory.player_name} said: {said}." if said else memory.summary
    return with_summary(memory, text.strip(), max_chars)
