"""Prompt assembly for an NPC's answer, laid out for the engine's prefix cache.

Order, from most shared to least:
1. the NPC's fixed part (persona, lore, world facts, few-shot lines): the same tokens for
   every player, so the engine computes its KV once and reuses it;
2. the situation: first what every player at this NPC shares at the moment (place, time
   of day, who stands near), then what is this player's (who they are to the NPC, what they
   built near), so players talking to one NPC share its KV past the fixed part;
3. memory of this player (a running summary, then recent turns verbatim);
4. the player's line, then the one or two facts relevant to it, right before the answer.

The whole prompt fits `context_tokens` minus the answer's budget. What doesn't fit is dropped
oldest first: old turns, then the summary, then the situation's details; never the persona
or the line.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from npc.persona import Persona

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange remembered verbatim."""

    line: str
    answer: str


@dataclass(frozen=True, slots=True)
class Situation:
    """Where and when the line is said, from the NPC's point of view."""

    player_name: str
    place: str | None = None
    time_of_day: str | None = None
    nearby: tuple[str, ...] = ()        # names of those near the NPC whom it has met
    strangers: int = 0                  # how many others near it it has not met
    built_nearby: tuple[str, ...] = ()  # what the player built near, in words


@dataclass(frozen=True, slots=True)
class Recollection:
    """What the NPC remembers of this player."""

    summary: str = ""
    turns: tuple[Turn, ...] = ()

    @property
    def met_before(self) -> bool:
        return bool(self.summary or self.turns)


@dataclass(frozen=True, slots=True)
class PromptBudget:
    """Token budget of a whole prompt: the context, less what the answer may use."""

    context_tokens: int = 2048
    answer_tokens: int = 80

    def __post_init__(self) -> None:
        if self.answer_tokens <= 0 or self.context_tokens <= self.answer_tokens:
            raise ValueError("PromptBudget: need 0 < answer_tokens < context_tokens")

    @property
    def prompt_tokens(self) -> int:
        return self.context_tokens - self.answer_tokens


def fixed_part(persona: Persona, facts: Sequence[str]) -> list[Message]:
    """The messages every player's prompt to this NPC starts with (the shared prefix)."""
    lines = [f"You are {persona.name}. {persona.persona}"]
    known = list(persona.lore) + list(facts)
    if known:
        lines.append("Things you know:")
        lines.extend(f"- {fact}" for fact in known)
    # Measured (bench/npc_quality.py): a word limit, where "keep answers short" was, took
    # the default model's answers from 27.6 to 20.6 tokens and right facts from 10 to 12 of 14.
    lines.append(f"Stay in character as {persona.name}. Speak only for yourself, never for "
                 "the player. Answer in one short sentence of at most fifteen words.")
    messages = [{"role": "system", "content": "\n".join(lines)}]
    for line, answer in persona.examples:
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": answer})
    return messages


def _situation_text(persona: Persona, s: Situation, memory: Recollection | None,
                    detail: bool) -> str:
    # The shared sentences come first and read the same for every speaker, so one player's
    # prompt computes them for the next. The NPC knows a player's name only once it has met
    # them: names are learnt in conversation and remembered, which is what makes
    # remembering them mean something (strangers near it show only as a crowd).
    met = memory is not None and memory.met_before
    parts = []
    if s.place:
        parts.append(f"You are at {s.place}.")
    if s.time_of_day:
        parts.append(f"It is {s.time_of_day}.")
    if detail and (company := _company(s.nearby, s.strangers)):
        parts.append(f"Near you: {company}.")
    who = s.player_name if met else "a traveller"
    parts.append(f"You are talking with {who}" + ("." if met else " you have not met before."))
    if detail and s.built_nearby:
        parts.append(f"The traveller has built nearby: " + "; ".join(s.built_nearby) + ".")
    if met:
        parts.append(f"You have met {s.player_name} before.")
        if memory.summary:
            parts.append(f"What you remember of them: {memory.summary}")
    return " ".join(parts)


# Strangers near an NPC are mentioned once there are this many. Measured in bench/npc_world.py
# (200 bots walking through the village): at 5 the mention came and went between one
# player's lines at the market and cost them their cached turns.
CROWD = 10


def _company(names: Sequence[str], strangers: int) -> str:
    """"Ada, Bo and many other travellers" / "Ada" / "many travellers" / "" (nobody of note).

    Passers-by come and go all the time: naming or counting them would make the shared
    part differ from one line to the next, so strangers are mentioned only as a crowd.
    """
    words = list(names)
    if strangers >= CROWD:
        words.append("many other travellers" if names else "many travellers")
    if len(words) < 2:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _facts_text(facts: Sequence[str]) -> str:
    # Measured (bench/npc_quality.py): with the default model this last system message,
    # after the player's line and holding only the facts, beats both a closing "reply as"
    # cue and the facts folded into the situation message.
    return "Useful for this answer: " + " ".join(facts)


@dataclass
class Prompt:
    """A prompt ready for the engine, and what had to be left out to fit."""

    messages: list[Message]
    dropped_turns: int = 0
    dropped: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # the relevant facts it carries


def build_prompt(persona: Persona, fixed: list[Message], situation: Situation,
                 memory: Recollection, line: str, facts: Sequence[str], *,
                 budget: PromptBudget, count: Callable[[list[Message]], int]) -> Prompt:
    """Assemble the messages for one answer within the budget.

    `count(messages)` returns the token count of the rendered prompt. Drops, in order:
    the oldest verbatim turns, the summary, the situation's details, the relevant facts.
    The fixed part and the line always stay (the line is shortened only if it alone would
    not fit, which the shard's chat length limit makes unlikely).
    """
    turns = list(memory.turns)
    mem = memory
    detail = True
    use_facts = list(facts)
    dropped: list[str] = []
    dropped_turns = 0
    while True:
        msgs = list(fixed)
        msgs.append({"role": "system", "content": _situation_text(persona, situation, mem, detail)})
        for t in turns:
            msgs.append({"role": "user", "content": t.line})
            msgs.append({"role": "assistant", "content": t.answer})
        msgs.append({"role": "user", "content": line})
        if use_facts:
            msgs.append({"role": "system", "content": _facts_text(use_facts)})
        if count(msgs) <= budget.prompt_tokens:
            return Prompt(msgs, dropped_turns, dropped, use_facts)
        if turns:
            turns.pop(0)
            dropped_turns += 1
        elif mem.summary:
            mem = Recollection(summary="", turns=mem.turns)
            dropped.append("summary")
        elif detail:
            detail = False
            dropped.append("situation")
        elif use_facts:
            use_facts = []
            dropped.append("facts")
        elif len(line) > 16:
            line = line[: len(line) // 2]
            dropped.append("line-tail")
        else:
            return Prompt(msgs, dropped_turns, dropped, use_facts)


def time_of_day(hour: int) -> str:
    """Words for an hour of the day (0-23)."""
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    if 17 <= hour < 21:
        return "evening"
    return "night"
