"""Conformance: errors, `id`/`re`, limits and close codes of protocol v1."""
from __future__ import annotations

from tests.server.wire import close_all, entity_ids, join


async def test_bad_json_gets_bad_json_and_connection_stays(shard):
    """A frame that is not a JSON object in text gets `bad_json`; the connection keeps working."""
    w = await join(shard.ws_url)
    for frame in ("{not json", "[1, 2]", b'{"t":"ping"}'):  # not JSON, not an object, binary
        await w.send(frame)
        assert (await w.error())["code"] == "bad_json", frame
    await w.send({"t": "ping", "ct": 3, "id": "after"})
    assert (await w.recv_type("pong"))["re"] == "after"
    await w.close()


async def test_unknown_type_gets_unknown_type_with_re(shard):
    """An unknown `t` gets `error` `unknown_type` carrying the message's id as `re`."""
    w = await join(shard.ws_url)
    await w.send({"t": "teleport", "id": "u1"})
    err = await w.error()
    assert err["code"] == "unknown_type" and err["re"] == "u1"
    assert isinstance(err["msg"], str)
    await w.close()


async def test_wrong_types_and_missing_fields_name_the_field(shard):
    """Wrong-typed or missing fields get `invalid` with `field` naming the field as sent."""
    w = await join(shard.ws_url)
    cases = [
        ({"t": "move", "seq": 1, "x": "far", "y": 0, "z": 0, "yaw": 0}, "x"),
        ({"t": "move", "x": 0, "y": 0, "z": 0, "yaw": 0}, "seq"),
        ({"t": "move", "seq": 1, "x": 0, "y": 0, "yaw": 0}, "z"),
        ({"t": "chat", "text": 5, "channel": "say"}, "text"),
        ({"t": "chat", "channel": "say"}, "text"),
        ({"t": "chat", "text": "y" * 501, "channel": "say"}, "text"),  # over 500 characters
        ({"t": "place", "shape": "box", "x": 0, "y": 0, "z": "0"}, "z"),
        ({"t": "remove"}, "target"),
    ]
    for i, (msg, field) in enumerate(cases):
        await w.send({**msg, "id": i})
        err = await w.error()
        assert (err["code"], err.get("field"), err["re"]) == ("invalid", field, i), msg
    await w.close()


async def test_re_is_echoed_for_string_and_integer_ids(shard):
    """Replies carry `re` equal to the `id` sent, string or integer."""
    w = await join(shard.ws_url)
    for mid in ("abc", 42, "x" * 64):
        await w.send({"t": "ping", "ct": 1, "id": mid})
        assert (await w.recv_type("pong"))["re"] == mid
    await w.send({"t": "who"})
    assert "re" not in await w.recv_type("who")  # no id sent, no re back
    await w.close()


async def test_ping_pong_echoes_ct_with_shard_time(shard):
    """`ping` is answered by `pong` with the same `ct` and the shard clock `st`."""
    w = await join(shard.ws_url)
    await w.send({"t": "ping", "ct": 1234567, "id": "p"})
    pong = await w.recv_type("pong")
    assert pong["ct"] == 1234567 and pong["re"] == "p"
    assert isinstance(pong["st"], int) and abs(pong["st"] - w.welcome["st"]) < 60_000
    await w.close()


async def test_excess_moves_are_dropped_with_rate_limited(start_shard):
    """Moves beyond the rate get `rate_limited` (with `re`) and are not applied."""
    async with start_shard(move_rate=1.0, move_burst=3.0) as s:
        w = await join(s.ws_url)
        own = next(e for e in w.first_state["enter"] if e["id"] == w.you)
        for seq in range(1, 9):
            await w.send({"t": "move", "seq": seq, "x": own["x"], "y": own["y"],
                          "z": own["z"], "yaw": seq / 10, "id": f"m{seq}"})
        before = await w.barrier()
        limited = [m["re"] for m in before if m.get("t") == "error"
                   and m["code"] == "rate_limited"]
        assert len(limited) >= 4, before
        applied = [seq for seq in range(1, 9) if f"m{seq}" not in limited]
        state = await w.state_where(lambda m: m["ack"] >= max(applied))
        # ack never names a dropped move: it is the highest *applied* seq.
        assert state["ack"] == max(applied)
        await w.close()


async def test_excess_chat_gets_rate_limited_and_is_not_heard(start_shard):
    """Chat past the line budget gets `rate_limited` and nobody hears that line."""
    async with start_shard(chat_lines=2.0, chat_window_s=10.0) as s:
        a = await join(s.ws_url)
        b = await join(s.ws_url)
        for i in range(3):
            await a.send({"t": "chat", "text": f"line {i}", "channel": "global", "id": i})
        errors = [m for m in await a.barrier() if m.get("t") == "error"]
        assert [(e["code"], e["re"]) for e in errors] == [("rate_limited", 2)]
        await b.recv_type("chat", text="line 1")
        await b.barrier()  # line 2 was refused before a's barrier; it would be queued by now
        assert [m["text"] for m in b.seen if m.get("t") == "chat"] == ["line 0", "line 1"]
        await close_all(a, b)


async def test_frame_over_16_kib_closes_1009(shard):
    """An inbound frame over the 16 KiB default is closed with 1009."""
    w = await join(shard.ws_url)
    await w.send({"t": "chat", "text": "x" * (17 * 1024), "channel": "say"})
    assert (await w.closed())[0] == 1009


async def test_bad_messages_change_nothing(shard):
    """Invalid place/move/chat leave the world as it was: no object, no move, no line heard."""
    a = await join(shard.ws_url)
    b = await join(shard.ws_url)
    own = next(e for e in a.first_state["enter"] if e["id"] == a.you)
    if a.you not in entity_ids(b.first_state):
        await b.state_where(lambda m: a.you in entity_ids(m))
    bad = [
        {"t": "place", "shape": "box", "x": own["x"], "y": 0, "z": own["z"], "color": "red"},
        {"t": "move", "seq": 1, "x": own["x"] + 1, "y": own["y"], "z": own["z"], "yaw": "no"},
        {"t": "chat", "text": "y" * 501, "channel": "say"},
        {"t": "chat", "text": "hi", "channel": "yell"},
    ]
    for msg in bad:
        await a.send(msg)
    replies = await a.barrier()
    assert sum(1 for m in replies if m.get("t") == "error") == len(bad)
    # A good move afterwards is acked as seq 1: the bad move was not applied.
    await a.send({"t": "move", "seq": 1, "x": own["x"], "y": own["y"], "z": own["z"],
                  "yaw": 0.5})
    await a.state_where(lambda m: m["ack"] == 1)
    row = await b.pose_of(a.you)
    assert row[1:] == [own["x"], own["y"], own["z"], 0.5]
    await b.barrier()
    assert not any(m.get("t") == "chat" for m in b.seen)
    entered = [e for m in b.seen[2:] if m.get("t") == "state" for e in m.get("enter", ())]
    assert not any(e["kind"] == "object" for e in entered)  # seen[:2]: welcome, first state
    await close_all(a, b)

