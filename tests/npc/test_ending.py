"""Where an answer ends early (`npc.ending`): only at a sentence end, by budget share or by fact."""
from __future__ import annotations

from npc.ending import Ending, fact_words


def feed_all(ending: Ending, pieces: list[str]) -> int:
    """How many pieces were taken before the ending said stop (all of them if never)."""
    for i, piece in enumerate(pieces, 1):
        if ending.feed(piece):
            return i
    return len(pieces)


def test_fact_words_are_what_only_the_facts_bring():
    """The line's own words, the NPC's name and generic words never count as the fact."""
    words = fact_words(["The Crooked Kettle is south-west of here, about 40 m."], "Where is the kettle?", "Wren")
    assert {"crooked", "south", "west"} <= words
    assert not words & {"kettle", "here", "wren", "40", "m"}


def test_fact_end_stops_after_the_sentence_that_carries_the_fact():
    """An answer that names the fact ends at that sentence's end, before the soft share."""
    ending = Ending(soft_after=50, facts=frozenset({"pear"}))
    pieces = ["The", " reward", " is", " pear", "s.", " And", " more", "."]
    assert feed_all(ending, pieces) == 5 and ending.reason == "fact"


def test_no_end_mid_sentence_and_no_fact_means_the_soft_share():
    """Without the fact, a sentence end before the soft share goes on; after it, the answer ends."""
    ending = Ending(soft_after=4, facts=frozenset({"pear"}))
    pieces = ["Hello", " there.", " I", " sell", " rope", " and", " maps.", " Also"]
    assert feed_all(ending, pieces) == 7 and ending.reason == "soft"


def test_never_ends_without_a_sentence_end():
    """However long, an answer without a sentence end runs to its budget (the engine's length)."""
    ending = Ending(soft_after=1, facts=frozenset({"pear"}))
    assert feed_all(ending, ["pear", " pear", " pear,"]) == 3 and ending.reason is None


def test_npc_settings_refuse_a_negative_switch_interval():
    """The in-process engine's thread switch interval is a named, checked setting."""
    import pytest

    from npc.service import NpcSettings

    assert NpcSettings().switch_interval_ms == 0.0  # Python's own unless asked
    with pytest.raises(ValueError, match="switch_interval_ms"):
        NpcSettings(switch_interval_ms=-1)
