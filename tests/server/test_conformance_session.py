"""Conformance: the session part of protocol v1 (subprotocol, hello/welcome, auth, resume)."""
from __future__ import annotations

import asyncio
import time

from tests.server.wire import (close_all, entity_ids, join, open_wire, refused,
                               unique_name)


async def test_subprotocol_world_v1_is_selected(shard):
    """A client offering `world.v1` gets it selected by the shard."""
    w = await open_wire(shard.ws_url)
    assert w.ws.subprotocol == "world.v1"
    await w.close()


async def test_welcome_has_every_field_with_its_type(shard):
    """`welcome` carries v, you, name, token, shard, tick_hz, aoi, speed, st, bounds, spawn."""
    name = unique_name("alice")
    before = time.time() * 1000
    w = await join(shard.ws_url, name)
    m = w.welcome
    assert m["v"] == 1
    assert isinstance(m["you"], str) and m["you"].startswith("p:")
    assert m["name"] == name
    assert isinstance(m["token"], str) and m["token"]
    assert isinstance(m["shard"], str) and m["shard"]
    for key in ("tick_hz", "aoi", "speed"):
        assert isinstance(m[key], (int, float)) and m[key] > 0, key
    assert isinstance(m["st"], int) and before - 5000 <= m["st"] <= time.time() * 1000 + 5000
    minx, minz, maxx, maxz = m["bounds"]
    assert minx < maxx and minz < maxz
    x, y, z = m["spawn"]
    assert all(isinstance(v, (int, float)) for v in (x, y, z))
    await w.close()


async def test_welcome_adds_the_worlds_name_and_places(shard):
    """Worldsmith's optional welcome fields: `world` (its name) and `places` from the world file."""
    from worldstate.config import default_world

    w = await join(shard.ws_url)
    village = default_world()
    assert w.welcome["world"] == village.name
    assert [p["name"] for p in w.welcome["places"]] == [p.name for p in village.places]
    inn = next(p for p in w.welcome["places"] if p["name"] == "The Crooked Kettle")
    assert (inn["x"], inn["z"]) == (-35.0, 25.0)
    await w.close()


async def test_first_state_enters_own_entity(shard):
    """The `state` right after `welcome` has ack 0 and lists the player's own entity."""
    w = await join(shard.ws_url)
    s = w.first_state
    assert isinstance(s["tick"], int) and isinstance(s["st"], int)
    assert s["ack"] == 0
    own = next(e for e in s["enter"] if e["id"] == w.you)
    assert own["kind"] == "player" and own["name"] == w.welcome["name"]
    minx, minz, maxx, maxz = w.welcome["bounds"]
    assert minx <= own["x"] <= maxx and minz <= own["z"] <= maxz
    assert all(isinstance(own[k], (int, float)) for k in ("x", "y", "z", "yaw"))
    await w.close()


async def test_no_hello_within_timeout_closes_4000(start_shard):
    """A connection that never sends `hello` is closed 4000 once the hello timeout passes."""
    async with start_shard(hello_timeout_s=0.3) as s:
        w = await open_wire(s.ws_url)
        code, _ = await w.closed()
        assert code == 4000


async def test_first_message_not_hello_closes_4000(shard):
    """Any message before `hello` is a protocol violation: close 4000."""
    code, _, seen = await refused(shard.ws_url, {"t": "ping", "ct": 1})
    assert code == 4000
    assert [m["t"] for m in seen] == ["error"]  # Worldsmith says why before closing


async def test_guest_joins_with_a_name_alone(shard):
    """A `hello` with only a free name is accepted as a guest under that name."""
    name = unique_name("guest")
    w = await join(shard.ws_url, name)
    assert w.welcome["name"] == name
    await w.close()


async def test_claimed_name_returns_same_player_with_password(shard):
    """A name claimed with a password comes back as the same player with that password."""
    name = unique_name("claim")
    a = await join(shard.ws_url, name, password="s3cret-pw")
    you = a.you
    await a.close()
    b = await join(shard.ws_url, name, password="s3cret-pw")
    assert b.you == you and b.welcome["name"] == name
    await b.close()


async def test_wrong_password_gets_auth_error_then_4001(shard):
    """A claimed name with the wrong password gets `error` `auth`, then close 4001."""
    name = unique_name("claim")
    a = await join(shard.ws_url, name, password="right-one")
    await a.close()
    code, _, seen = await refused(shard.ws_url, {"t": "hello", "v": 1, "name": name,
                                                 "password": "wrong-one"})
    assert code == 4001
    assert [m["code"] for m in seen if m.get("t") == "error"] == ["auth"]
    assert not any(m.get("t") == "welcome" for m in seen)


async def test_claimed_name_without_password_closes_4001(shard):
    """A claimed name used without its password is refused with 4001."""
    name = unique_name("claim")
    a = await join(shard.ws_url, name, password="right-one")
    await a.close()
    code, _, seen = await refused(shard.ws_url, {"t": "hello", "v": 1, "name": name})
    assert code == 4001
    assert not any(m.get("t") == "welcome" for m in seen)


async def test_online_name_without_token_closes_4001_and_keeps_holder(shard):
    """A guest name held by an online player cannot be taken; the holder stays connected."""
    name = unique_name("held")
    a = await join(shard.ws_url, name)
    code, _, _ = await refused(shard.ws_url, {"t": "hello", "v": 1, "name": name})
    assert code == 4001
    await a.send({"t": "ping", "ct": 7})
    assert (await a.recv_type("pong"))["ct"] == 7
    await a.close()


async def test_token_resumes_same_player_and_restores_pose(shard):
    """Reconnecting with the welcome's token within grace gives the same `you` and pose."""
    a = await join(shard.ws_url, unique_name("res"))
    own = next(e for e in a.first_state["enter"] if e["id"] == a.you)
    target = (own["x"] + 0.5, own["y"], own["z"] + 0.5, 1.25)
    await a.send({"t": "move", "seq": 1, "x": target[0], "y": target[1], "z": target[2],
                  "yaw": target[3]})
    acked = await a.state_where(lambda m: m["ack"] >= 1)
    # The shard may clamp the move (speed limit); its reported pose is the truth.
    row = next(u for u in acked["upd"] if u[0] == a.you)
    await a.close()
    b = await join(shard.ws_url, "ignoredname", token=a.welcome["token"])
    assert b.you == a.you and b.welcome["name"] == a.welcome["name"]
    assert b.first_state["ack"] == 0  # a new connection counts moves from 0 again
    back = next(e for e in b.first_state["enter"] if e["id"] == b.you)
    assert [back["x"], back["y"], back["z"], back["yaw"]] == row[1:]
    assert row[4] == target[3]  # turning is never clamped, so the pose did change
    await b.close()


async def test_forged_token_closes_4001(shard):
    """A token the shard did not sign (a real one with a changed character) gets 4001."""
    a = await join(shard.ws_url)
    token = a.welcome["token"]
    forged = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (forged, "not-a-token"):
        code, _, seen = await refused(shard.ws_url, {"t": "hello", "v": 1, "name": "x",
                                                     "token": bad})
        assert code == 4001, bad
        assert not any(m.get("t") == "welcome" for m in seen)
    await a.close()


async def test_expired_token_closes_4001(start_shard):
    """A token older than the token lifetime is refused with 4001."""
    async with start_shard(token_ttl_s=0.3) as s:
        a = await join(s.ws_url)
        await a.close()
        await asyncio.sleep(0.5)  # the quantity under test is elapsed time, not an event
        code, _, _ = await refused(s.ws_url, {"t": "hello", "v": 1, "name": "x",
                                              "token": a.welcome["token"]})
        assert code == 4001


async def test_second_connection_replaces_first_with_4002(shard):
    """The same claimed name with its password, or the token, takes over; the old one gets 4002."""
    name = unique_name("rep")
    a = await join(shard.ws_url, name, password="pw-12345")
    b = await join(shard.ws_url, name, password="pw-12345")
    assert b.you == a.you
    assert (await a.closed())[0] == 4002
    c = await join(shard.ws_url, "whatever", token=b.welcome["token"])
    assert c.you == a.you
    assert (await b.closed())[0] == 4002
    await c.send({"t": "ping", "ct": 1})
    await c.recv_type("pong")
    await c.close()


async def test_others_see_enter_and_leave(shard):
    """A player joining near another enters its view; on disconnect it leaves it."""
    a = await join(shard.ws_url)
    b = await join(shard.ws_url)
    await a.state_where(lambda m: b.you in entity_ids(m))
    assert a.you in entity_ids(b.first_state)
    await b.close()
    await a.state_where(lambda m: b.you in m.get("leave", ()))
    await close_all(a)


async def test_names_outside_the_rules_get_no_welcome(shard):
    """Names must be 1-24 of A-Z a-z 0-9 _ -: others get `invalid` (field name), no welcome;
    Worldsmith then accepts a corrected hello on the same connection."""
    w = await open_wire(shard.ws_url)
    for bad in ("", "x" * 25, "two words", "caf\u00e9", "semi;colon"):
        await w.send({"t": "hello", "v": 1, "name": bad, "id": "h"})
        err = await w.error()
        assert (err["code"], err.get("field"), err["re"]) == ("invalid", "name", "h"), bad
    assert not any(m.get("t") == "welcome" for m in w.seen)
    await w.send({"t": "hello", "v": 1, "name": "A-z_09" + unique_name("")[:10]})
    welcome = await w.recv_type("welcome")
    assert welcome["name"].startswith("A-z_09")
    await w.close()


async def test_second_hello_is_invalid_and_changes_nothing(shard):
    """A `hello` on an accepted connection is `invalid` (field t); the session goes on."""
    w = await join(shard.ws_url)
    await w.send({"t": "hello", "v": 1, "name": unique_name("other"), "id": "again"})
    err = await w.error()
    assert (err["code"], err.get("field"), err["re"]) == ("invalid", "t", "again")
    await w.send({"t": "who", "id": "w"})
    who = await w.recv_type("who")
    assert [p["id"] for p in who["players"]] == [w.you]
    await w.close()
