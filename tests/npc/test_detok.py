"""Incremental detokenisation: UTF-8 safe pieces and stop strings, with the byte-level tiny tokenizer."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from npc.engine.detok import Detokenizer
from npc.engine.tiny import IM_END, tiny_tokenizer

TOK = tiny_tokenizer()


def stream(text: str, stop: tuple[str, ...] = (), extra: list[int] = ()) -> tuple[list[str], Detokenizer]:
    """Feed the text's byte tokens one at a time; return the non-empty pieces and the detokenizer."""
    d = Detokenizer(TOK, stop, skip_ids=frozenset({IM_END}))
    pieces = [d.push(t) for t in TOK.encode(text) + list(extra)]
    pieces.append(d.flush())
    return [p for p in pieces if p], d


def test_multibyte_characters_split_across_tokens_come_out_whole() -> None:
    """Each 2-4 byte character arrives as one byte per token, yet no piece holds a broken character."""
    text = "héllo ✓ smith 🔨 done"
    pieces, d = stream(text)
    assert "".join(pieces) == text == d.text
    assert all("\ufffd" not in p for p in pieces)
    assert "🔨" in pieces  # released as soon as its fourth byte arrived


def test_stop_string_across_piece_boundaries_is_cut_and_not_leaked() -> None:
    """A stop string arriving one byte per token ends the text just before it; none of it is shown."""
    pieces, d = stream("Well met, traveller.\nPlayer: hi", stop=("\nPlayer:",))
    assert d.stopped
    assert "".join(pieces) == "Well met, traveller."
    assert all("\n" not in p for p in pieces)


def test_partial_stop_prefix_is_released_when_it_diverges() -> None:
    """Text held back as a possible stop prefix is released once it turns out not to be one."""
    pieces, d = stream("ab abc abd", stop=("abx",))
    assert not d.stopped
    assert "".join(pieces) == "ab abc abd"


def test_earliest_of_several_stop_strings_wins() -> None:
    """With several stop strings the text ends at whichever occurs first."""
    pieces, _ = stream("one two three", stop=("three", "two"))
    assert "".join(pieces) == "one "


def test_eos_is_never_shown_and_incomplete_tail_flushes() -> None:
    """EOS tokens add no text, and a character cut off by the end is flushed as U+FFFD."""
    broken = TOK.encode("ok ✓")[:-1]  # drop the last byte of the check mark
    d = Detokenizer(TOK, skip_ids=frozenset({IM_END}))
    shown = "".join(d.push(t) for t in broken + [IM_END])
    assert shown == "ok "
    assert d.flush() == "\ufffd" and d.text == "ok \ufffd"


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=0, max_size=40), stop=st.text(min_size=1, max_size=4))
def test_pieces_always_concatenate_to_text_before_stop(text: str, stop: str) -> None:
    """For any text and stop string, the pieces join to the text up to the first stop occurrence."""
    pieces, d = stream(text, stop=(stop,))
    expected = text[:text.find(stop)] if stop in text else text
    assert "".join(pieces) == expected == d.text


def test_special_tokens_are_never_shown() -> None:
    """A role marker the model emits mid-answer adds no text (players never see template markup)."""
    d = Detokenizer(TOK)
    ids = TOK.encode("Hi") + [256] + TOK.encode(" there")  # 256 is <|im_start|>
    assert "".join(d.push(t) for t in ids) + d.flush() == "Hi there"
