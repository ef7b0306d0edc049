"""The edge parser: any frame becomes a typed message or a typed ProtocolError, nothing else."""
from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import Move, ProtocolError, _Fields, _move, parse, text_frame

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
TYPES = st.sampled_from(["hello", "move", "ping", "chat", "place", "remove", "who", "npc_cancel", "nope"])
FIELDS = st.sampled_from(["v", "name", "password", "token", "seq", "x", "y", "z", "yaw", "ct", "text",
                          "channel", "to", "shape", "color", "label", "target", "reply", "id"])


@settings(max_examples=100, deadline=None)
@given(t=TYPES, fields=st.dictionaries(FIELDS, json_values, max_size=8))
def test_any_object_parses_or_raises_protocol_error(t, fields):
    """Whatever the fields hold, parse returns an immutable message or a ProtocolError with a code."""
    frame = orjson.dumps({"t": t, **fields}).decode()
    try:
        msg = parse(frame)
    except ProtocolError as exc:
        assert exc.code in ("unknown_type", "invalid")
        assert exc.code != "invalid" or exc.field
        # The error goes back to the sender with its id, unless the id itself was the fault.
        assert exc.re == (None if exc.field == "id" else fields.get("id"))
    else:
        assert isinstance(msg, tuple) and msg.id == fields.get("id")


@settings(max_examples=60, deadline=None)
@given(seq=st.integers(0, 2**53 - 1), pose=st.lists(st.floats(allow_nan=False, allow_infinity=False)
                                                   | st.integers(-10**6, 10**6), min_size=4, max_size=4))
def test_fast_move_path_agrees_with_the_checked_path(seq, pose):
    """A well-formed move parses to the same Move by the fast path as by the field-by-field path."""
    obj = {"t": "move", "seq": seq, "x": pose[0], "y": pose[1], "z": pose[2], "yaw": pose[3]}
    fast = parse(orjson.dumps(obj).decode())
    slow = _move(_Fields(obj, None), 500, "")
    assert isinstance(fast, Move) and fast == slow


def test_a_move_whose_numbers_sum_past_the_float_range_is_still_a_move():
    """The fast path tests finiteness on one sum; a huge sum only sends the move the checked way."""
    obj = {"t": "move", "seq": 3, "x": 1.7e308, "y": 0, "z": 1.7e308, "yaw": -1.7e308}
    assert parse(orjson.dumps(obj).decode()) == Move(3, 1.7e308, 0.0, 1.7e308, -1.7e308)


def test_frames_are_framed_by_length():
    """Server text frames use the 7-bit, 16-bit and 64-bit length forms at their boundaries."""
    assert text_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
