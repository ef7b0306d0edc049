"""The tick's state frames: header and payload joined once, as `text_frame` would frame them."""
from __future__ import annotations

import orjson

from server.protocol import text_frame
from server.ticker import FragmentCache
from worldstate.entities import Entity, Pose


def test_a_state_frame_is_the_framed_state_payload_at_every_length_form():
    """FragmentCache.frame gives text_frame(payload) and len(payload), 7-bit and 16-bit lengths."""
    ents = [Entity(f"p:e{i}", "player", f"e{i}", Pose(i + 0.5, 0.0, 2.0 * i, 0.25)) for i in range(40)]
    frames = FragmentCache(7, 1234)
    for enter, upd, leave in [((), (), ()), ((), ents[:1], ()), (ents[:2], ents[2:30], ["p:gone"])]:
        frame, n = frames.frame(9, enter, upd, leave)
        payload = frame[len(frame) - n:]
        assert frame == text_frame(payload)
        msg = orjson.loads(payload)
        assert (msg["t"], msg["tick"], msg["st"], msg["ack"]) == ("state", 7, 1234, 9)
        assert [u[0] for u in msg.get("upd", [])] == [e.id for e in upd]
        assert [e["id"] for e in msg.get("enter", [])] == [e.id for e in enter]
        assert msg.get("leave", []) == list(leave)
    assert len(frames.frame(9, (), (), ())[0]) < 128 < len(frame) < 65536  # both forms were seen
