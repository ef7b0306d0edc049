"""Conformance: chat (say/shout/global by range, private by id and name), errors, NPC range."""
from __future__ import annotations

import pytest

from tests.server.wire import close_all, join, unique_name, walk_to, write_world


@pytest.fixture
async def field_shard(start_shard, tmp_path):
    """A shard on the small fast test world (aoi 20 m, shout 50 m, a guard NPC 10 m away)."""
    async with start_shard(world=write_world(tmp_path / "field.toml")) as s:
        yield s


async def _heard(w, texts: set[str]) -> list[dict]:
    """The chat lines among `texts` that `w` received, after a barrier."""
    await w.barrier()
    return [m for m in w.seen if m.get("t") == "chat" and m["text"] in texts]


async def test_say_shout_global_reach_by_range(field_shard):
    """`say` reaches the area of interest, `shout` the wider range, `global` everyone."""
    speaker = await join(field_shard.ws_url)
    near = await join(field_shard.ws_url)
    mid = await join(field_shard.ws_url)
    far = await join(field_shard.ws_url)
    await walk_to(near, 10.0, 0.0)
    await walk_to(mid, 0.0, 35.0)    # outside say (20 m), inside shout (50 m)
    await walk_to(far, -90.0, -90.0)  # outside both
    for channel in ("say", "shout", "global"):
        await speaker.send({"t": "chat", "text": f"{channel}!", "channel": channel,
                            "id": channel})
        own = await speaker.recv_type("chat", text=f"{channel}!")
        assert own["re"] == channel and own["from"] == speaker.you
        assert own["channel"] == channel and own["name"] == speaker.welcome["name"]
        assert isinstance(own["st"], int)
    texts = {"say!", "shout!", "global!"}
    assert {m["text"] for m in await _heard(near, texts)} == texts
    assert {m["text"] for m in await _heard(mid, texts)} == {"shout!", "global!"}
    assert {m["text"] for m in await _heard(far, texts)} == {"global!"}
    for w in (near, mid, far):
        assert all("re" not in m for m in await _heard(w, texts))  # re only on own copy
    await close_all(speaker, near, mid, far)


async def test_private_by_id_and_by_name(field_shard):
    """`to` a player id or name delivers to that player only, relayed as channel `private`."""
    a = await join(field_shard.ws_url)
    b = await join(field_shard.ws_url)
    c = await join(field_shard.ws_url)
    await walk_to(b, -90.0, 90.0)  # private lines ignore range
    await a.send({"t": "chat", "text": "psst id", "to": b.you, "id": 1})
    await a.send({"t": "chat", "text": "psst name", "channel": "say",
                  "to": b.welcome["name"], "id": 2})
    for text, mid in (("psst id", 1), ("psst name", 2)):
        own = await a.recv_type("chat", text=text)
        assert own["channel"] == "private" and own["re"] == mid and own["to"] == b.you
        got = await b.recv_type("chat", text=text)
        assert got["channel"] == "private" and got["from"] == a.you and "re" not in got
        assert got["to"] == b.you
    # `to` wins over any channel: a "global" line with `to` is still private.
    await a.send({"t": "chat", "text": "psst global", "channel": "global", "to": b.you})
    assert (await b.recv_type("chat", text="psst global"))["channel"] == "private"
    assert await _heard(c, {"psst id", "psst name", "psst global"}) == []
    await close_all(a, b, c)


async def test_private_to_unknown_or_offline_is_not_found(field_shard):
    """A private line to an unknown name, unknown id, or an offline player gets `not_found`."""
    a = await join(field_shard.ws_url)
    gone = await join(field_shard.ws_url, unique_name("gone"))
    await gone.close()  # still in its grace period: counts as offline
    targets = ["nobody-here", "p:does-not-exist", gone.welcome["name"], gone.you]
    for i, to in enumerate(targets):
        await a.send({"t": "chat", "text": "hello?", "channel": "private", "to": to, "id": i})
        err = await a.error()
        assert (err["code"], err["re"]) == ("not_found", i), to
    await a.close()


async def test_line_to_npc_out_of_talking_range_is_too_far(field_shard):
    """A line addressed to an NPC beyond talking range gets `too_far` and nobody hears it."""
    a = await join(field_shard.ws_url)
    b = await join(field_shard.ws_url)
    npc = next(e for e in a.first_state["enter"] if e["kind"] == "npc")
    assert npc["id"].startswith("n:")
    await a.send({"t": "chat", "text": "hello guard", "channel": "say", "to": npc["id"],
                  "id": "g"})
    err = await a.error()
    assert (err["code"], err["re"]) == ("too_far", "g")
    assert await _heard(b, {"hello guard"}) == []
    await close_all(a, b)


async def test_who_lists_everyone_online(field_shard):
    """`who` lists every online player with id, name and shard, and the total."""
    a = await join(field_shard.ws_url)
    b = await join(field_shard.ws_url)
    await walk_to(b, 90.0, 90.0)  # presence is not limited by range
    await a.send({"t": "who", "id": "w"})
    who = await a.recv_type("who")
    assert who["re"] == "w" and who["total"] == len(who["players"]) == 2
    by_id = {p["id"]: p for p in who["players"]}
    assert by_id[b.you]["name"] == b.welcome["name"]
    assert {p["shard"] for p in who["players"]} == {a.welcome["shard"]}
    await b.close()
    for _ in range(20):  # the shard may need a moment to notice b's close: ask again
        await a.send({"t": "who"})
        who = await a.recv_type("who")
        if who["total"] == 1:
            break
    assert [p["id"] for p in who["players"]] == [a.you] and who["total"] == 1
    await a.close()
