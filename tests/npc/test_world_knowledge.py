"""Personas, world facts, relevance, prompt layout and memory bookkeeping (pure, no model)."""
from __future__ import annotations

import pytest

from npc.knowledge import compass, relevant, world_facts
from npc.memory import Memory, fallback_summary, remember, summary_request, with_summary
from npc.persona import parse_personas
from npc.prompt import PromptBudget, Recollection, Situation, Turn, build_prompt, fixed_part
from worldstate.config import WorldConfig, default_world
from worldstate.errors import ConfigError


def _count_words(messages) -> int:
    return sum(len(m["content"].split()) + 4 for m in messages)


def test_default_village_has_three_npcs_and_a_guide():
    """The bundled world declares at least three NPCs, one of them the guide."""
    personas = parse_personas(default_world())
    assert len(personas) >= 3
    assert sum(p.is_guide for p in personas) == 1
    assert all(p.id.startswith("n:") for p in personas)


def test_persona_errors_name_the_key():
    """A bad NPC table is refused with the offending key named."""
    cfg = WorldConfig(npcs=({"id": "x", "name": "X", "persona": "p", "reply_tokens": 9999},))
    with pytest.raises(ConfigError, match=r"npcs\[0\]\.reply_tokens"):
        parse_personas(cfg)
    cfg = WorldConfig(npcs=({"id": "x", "name": "X", "persona": "p", "colour": 1},))
    with pytest.raises(ConfigError, match=r"npcs\[0\]\.colour"):
        parse_personas(cfg)


def test_compass_follows_x_east_z_south():
    """Directions use x = east and z = south (north is -z)."""
    assert compass(10, 0) == "east"
    assert compass(0, -10) == "north"
    assert compass(-10, 10) == "south-west"


def test_guide_knows_every_place_and_npc_from_the_world_itself():
    """The guide's facts are derived from the world: every named place and every other NPC."""
    world = default_world()
    personas = parse_personas(world)
    guide = next(p for p in personas if p.is_guide)
    facts = world_facts(guide, world, personas)
    text = "\n".join(facts)
    for place in world.places:
        assert place.name in text
    for other in personas:
        if other is not guide:
            assert other.name in text


def test_relevant_picks_the_fact_that_shares_words():
    """The fact about the inn is chosen for a question about the inn; nothing for small talk."""
    facts = ["The Crooked Kettle is the inn, south-west of here.", "The mill is north-east."]
    assert relevant("Where is the inn?", facts, k=1) == [facts[0]]
    assert relevant("hello there", facts) == []


def test_prompt_starts_with_the_same_fixed_part_for_every_player():
    """Two players' prompts to one NPC share the fixed messages exactly (the prefix cache's basis)."""
    world = default_world()
    personas = parse_personas(world)
    guide = personas[0]
    fixed = fixed_part(guide, world_facts(guide, world, personas))
    budget = PromptBudget(context_tokens=2048, answer_tokens=80)
    a = build_prompt(guide, fixed, Situation("alice"), Recollection(), "hi", [],
                     budget=budget, count=_count_words)
    b = build_prompt(guide, fixed, Situation("bob", place="Old Well"), Recollection(summary="x"),
                     "where is the mill?", ["The mill is north-east."], budget=budget, count=_count_words)
    n = len(fixed)
    assert a.messages[:n] == b.messages[:n] == fixed
    assert b.messages[-1]["content"].endswith("The mill is north-east.")
    assert a.messages[-1] == {"role": "user", "content": "hi"}
    assert b.messages[-2] == {"role": "user", "content": "where is the mill?"}


def test_prompt_drops_oldest_turns_first_and_never_the_persona():
    """Over budget, the oldest turns go first, then the summary; the persona and the line stay."""
    personas = parse_personas(default_world())
    guide = personas[0]
    fixed = fixed_part(guide, [])
    turns = tuple(Turn(f"line {i} " + "word " * 20, f"answer {i} " + "word " * 20) for i in range(10))
    mem = Recollection(summary="They talked about pears. " * 5, turns=turns)
    size = _count_words(fixed) + 150
    p = build_prompt(guide, fixed, Situation("alice"), mem, "and now?", [],
                     budget=PromptBudget(context_tokens=size + 10, answer_tokens=10), count=_count_words)
    contents = [m["content"] for m in p.messages]
    assert p.messages[: len(fixed)] == fixed
    assert contents[-1] == "and now?"
    assert p.dropped_turns > 0
    kept = [c for c in contents if c.startswith("line ")]
    assert kept == [t.line for t in turns[p.dropped_turns:]]
    assert _count_words(p.messages) <= size


def test_memory_folds_oldest_turns_beyond_budget():
    """Remembering past the verbatim budget hands back the oldest turns for the summary."""
    m = Memory("n:guide", "alice", "Alice")
    count = lambda s: len(s.split())  # noqa: E731
    for i in range(5):
        m, folded = remember(m, Turn(f"q{i} a b c", f"a{i} d e f"), keep_tokens=20, count=count, now_ms=i)
    assert [t.line for t in m.turns] == ["q3 a b c", "q4 a b c"]
    assert folded == (Turn("q2 a b c", "a2 d e f"),)
    msgs = summary_request("Wren", "Alice", "", folded)
    assert "Alice" in msgs[-1]["content"] and "q2 a b c" in msgs[-1]["content"]
    assert "q2" in fallback_summary(m, folded).summary
    assert len(with_summary(m, "Sentence one. " * 100, max_chars=50).summary) <= 50


def test_situation_puts_what_players_share_before_who_is_speaking():
    """Two players at one NPC get the same situation up to who is speaking: place, time and
    the company (met players by name, strangers only as a crowd), so the second one's prompt
    reuses the first one's KV past the fixed part. An unmet speaker is not named."""
    world = default_world()
    personas = parse_personas(world)
    guide = personas[0]
    fixed = fixed_part(guide, [])
    budget = PromptBudget(context_tokens=2048, answer_tokens=80)
    common = dict(place="Old Well", time_of_day="evening", nearby=("Ada", "Bo"), strangers=12)
    met = Recollection(turns=(Turn("hi", "hello"),))
    a = build_prompt(guide, fixed, Situation("Ada", **common), met, "hi", [], budget=budget, count=_count_words)
    c = build_prompt(guide, fixed, Situation("Cy", **common), Recollection(), "hi", [], budget=budget,
                     count=_count_words)
    sa, sc = a.messages[len(fixed)]["content"], c.messages[len(fixed)]["content"]
    shared = "You are at Old Well. It is evening. Near you: Ada, Bo and many other travellers. "
    assert sa.startswith(shared) and sc.startswith(shared)
    assert sa[len(shared):].startswith("You are talking with Ada.")
    assert sc[len(shared):] == "You are talking with a traveller you have not met before."
    few = build_prompt(guide, fixed, Situation("Cy", strangers=9), Recollection(), "hi", [], budget=budget,
                       count=_count_words)
    assert "Near you" not in few.messages[len(fixed)]["content"]  # a few passers-by are not news
