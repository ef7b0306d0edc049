"""Conformance: `place` and `remove` (validation, ownership, admin, persistence, visibility)."""
from __future__ import annotations

import pytest

from tests.server.wire import close_all, join, unique_name


def _objects(state: dict) -> dict[str, dict]:
    return {e["id"]: e for e in state.get("enter", ()) if e["kind"] == "object"}


async def _placed(w, **match) -> dict:
    """The next object entering `w`'s view whose props match."""
    state = await w.state_where(lambda m: any(
        all(e.get("props", {}).get(k) == v for k, v in match.items())
        for e in _objects(m).values()))
    return next(e for e in _objects(state).values()
                if all(e.get("props", {}).get(k) == v for k, v in match.items()))


async def test_place_appears_to_placer_and_others_with_props(shard):
    """A placed object enters every nearby view as kind object with shape/color/label/owner."""
    a = await join(shard.ws_url)
    b = await join(shard.ws_url)
    x, z = a.welcome["spawn"][0] + 1.0, a.welcome["spawn"][2] + 1.0
    await a.send({"t": "place", "shape": "sphere", "x": x, "y": 0.5, "z": z,
                  "color": "#12ab9f", "label": "Beacon", "id": "pl"})
    mine = await _placed(a, label="Beacon")
    theirs = await _placed(b, label="Beacon")
    assert mine == theirs
    assert mine["id"].startswith("o:") and mine["name"] == "Beacon"
    assert (mine["x"], mine["y"], mine["z"]) == (x, 0.5, z)
    assert mine["props"]["shape"] == "sphere" and mine["props"]["color"] == "#12ab9f"
    assert mine["props"]["owner"] in (a.you, a.welcome["name"])
    await close_all(a, b)


async def test_unlabelled_object_is_named_by_its_shape(shard):
    """An object without a label has its shape as its name."""
    a = await join(shard.ws_url)
    await a.send({"t": "place", "shape": "cone", "x": 1.0, "y": 0.0, "z": 7.0})
    obj = await _placed(a, shape="cone")
    assert obj["name"] == "cone"
    await a.close()


@pytest.mark.parametrize("color", ["red", "#12ab9", "#12ab9fa", "#gg0000", 255])
async def test_place_with_bad_color_is_invalid_color_and_creates_nothing(shard, color):
    """A colour that is not `#rrggbb` gets `invalid` with field `color`; nothing is placed."""
    a = await join(shard.ws_url)
    await a.send({"t": "place", "shape": "box", "x": 1.0, "y": 0.0, "z": 7.0,
                  "color": color, "label": "Nope", "id": 5})
    err = await a.error()
    assert (err["code"], err["field"], err["re"]) == ("invalid", "color", 5)
    await a.barrier()
    assert not any(e.get("props", {}).get("label") == "Nope"
                   for m in a.seen if m.get("t") == "state" for e in m.get("enter", ()))
    await a.close()


async def test_remove_by_other_is_forbidden_by_owner_works(shard):
    """Removing someone else's object is `forbidden` (it stays); the owner removes it for all."""
    a = await join(shard.ws_url)
    b = await join(shard.ws_url)
    await a.send({"t": "place", "shape": "box", "x": 1.0, "y": 0.0, "z": 8.0, "label": "Mine"})
    obj = await _placed(b, label="Mine")
    await b.send({"t": "remove", "target": obj["id"], "id": "rm"})
    err = await b.error()
    assert (err["code"], err["re"]) == ("forbidden", "rm")
    await a.send({"t": "remove", "target": obj["id"]})
    await a.state_where(lambda m: obj["id"] in m.get("leave", ()))
    await b.state_where(lambda m: obj["id"] in m.get("leave", ()))
    # leave means gone: the forbidden attempt had not removed it.
    assert sum(obj["id"] in m.get("leave", ()) for m in b.seen if m.get("t") == "state") == 1
    await close_all(a, b)


async def test_admin_removes_any_object(start_shard):
    """A claimed admin name may remove another player's object."""
    boss = unique_name("boss")
    async with start_shard(admins=(boss,)) as s:
        a = await join(s.ws_url)
        admin = await join(s.ws_url, boss, password="admin-pw-1")
        await a.send({"t": "place", "shape": "box", "x": 2.0, "y": 0.0, "z": 8.0,
                      "label": "Junk"})
        obj = await _placed(admin, label="Junk")
        await admin.send({"t": "remove", "target": obj["id"], "id": 1})
        await a.state_where(lambda m: obj["id"] in m.get("leave", ()))
        assert not any(m.get("t") == "error" for m in await admin.barrier())
        await close_all(a, admin)


async def test_objects_persist_across_a_restart(start_shard, tmp_path):
    """A placed object is still there for a new player after the shard restarts."""
    async with start_shard() as s:
        a = await join(s.ws_url)
        await a.send({"t": "place", "shape": "box", "x": 1.0, "y": 0.0, "z": 9.0,
                      "color": "#ff0000", "label": "Keeper"})
        obj = await _placed(a, label="Keeper")
        await a.close()
    async with start_shard() as s:
        b = await join(s.ws_url)
        kept = _objects(b.first_state).get(obj["id"])
        assert kept == obj
        await b.close()


async def test_remove_unknown_object_is_not_found(shard):
    """Removing an object id that does not exist gets `not_found`."""
    a = await join(shard.ws_url)
    await a.send({"t": "remove", "target": "o:nope", "id": "x"})
    err = await a.error()
    assert (err["code"], err["re"]) == ("not_found", "x")
    await a.close()


async def test_claimed_names_own_across_sessions_guests_only_in_theirs(shard):
    """A claimed name may remove its object in a later session; a new guest reusing a
    guest's name may not remove that guest's object (Worldsmith's ownership rule)."""
    claimed, guest = unique_name("own"), unique_name("gst")
    a = await join(shard.ws_url, claimed, password="pw-own-1")
    g = await join(shard.ws_url, guest)
    await a.send({"t": "place", "shape": "box", "x": 1.0, "y": 0.0, "z": 9.0, "label": "A's"})
    await g.send({"t": "place", "shape": "box", "x": 2.0, "y": 0.0, "z": 9.0, "label": "G's"})
    a_obj, g_obj = await _placed(a, label="A's"), await _placed(g, label="G's")
    await close_all(a, g)
    a2 = await join(shard.ws_url, claimed, password="pw-own-1")
    g2 = await join(shard.ws_url, guest)
    await g2.send({"t": "remove", "target": g_obj["id"], "id": "g"})
    assert (await g2.error())["code"] == "forbidden"
    await a2.send({"t": "remove", "target": a_obj["id"], "id": "a"})
    await a2.state_where(lambda m: a_obj["id"] in m.get("leave", ()))
    assert not any(m.get("t") == "error" for m in await a2.barrier())
    await close_all(a2, g2)


async def test_world_file_objects_cannot_be_removed_by_players(shard):
    """An object from the world file (no owner) is `forbidden` to an ordinary player."""
    a = await join(shard.ws_url)
    board = next(e for e in a.first_state["enter"] if e["kind"] == "object")
    assert "owner" not in board.get("props", {})
    await a.send({"t": "remove", "target": board["id"], "id": 1})
    assert (await a.error())["code"] == "forbidden"
    await a.close()
