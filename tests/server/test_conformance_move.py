"""Conformance: `move` (seq/ack, clamping by bounds and speed) and views (enter/upd/leave)."""
from __future__ import annotations

import asyncio
import math
import time

import pytest

from tests.server.wire import close_all, entity_ids, join, own_entity, walk_to, write_world


@pytest.fixture
async def field_shard(start_shard, tmp_path):
    """A shard on the small fast test world (aoi 20 m, shout 50 m, bounds ±100 m)."""
    async with start_shard(world=write_world(tmp_path / "field.toml")) as s:
        yield s


async def test_ack_is_highest_applied_seq_and_pose_echoed(field_shard):
    """`ack` reports the highest applied `seq`; the own `upd` row holds the applied pose."""
    w = await join(field_shard.ws_url)
    await w.send({"t": "move", "seq": 5, "x": 1.5, "y": 0.0, "z": -2.0, "yaw": 0.75})
    state = await w.state_where(lambda m: m["ack"] >= 5)
    assert state["ack"] == 5
    assert [w.you, 1.5, 0.0, -2.0, 0.75] in state["upd"]
    await w.send({"t": "move", "seq": 9, "x": 2.5, "y": 0.0, "z": -2.0, "yaw": 0.5})
    state = await w.state_where(lambda m: m["ack"] != 5)
    assert state["ack"] == 9 and [w.you, 2.5, 0.0, -2.0, 0.5] in state["upd"]
    await w.close()


async def test_move_out_of_bounds_is_clamped_for_everyone(field_shard):
    """A move past the bounds is clamped to them; mover and watcher see the clamped pose."""
    a = await join(field_shard.ws_url)
    b = await join(field_shard.ws_url)
    maxx = a.welcome["bounds"][2]
    await walk_to(b, maxx - 10.0, 0.0)  # b watches from near the border
    await walk_to(a, maxx - 5.0, 0.0)
    await a.send({"t": "move", "seq": a.seq + 1, "x": maxx + 500.0, "y": 0.0, "z": 0.0,
                  "yaw": 0.0})
    state = await a.state_where(lambda m: m["ack"] >= a.seq + 1)
    row = next(u for u in state["upd"] if u[0] == a.you)
    assert row[1] == pytest.approx(maxx) and row[1] <= maxx
    assert (await b.recv_until(lambda m: m.get("t") == "state" and any(
        u[0] == a.you and u[1] == row[1] for u in m.get("upd", ()))))
    await close_all(a, b)


async def test_speed_limit_clamps_and_time_counts_at_most_one_second(shard):
    """A too-fast move is shortened to speed × elapsed time, elapsed counted at most 1 s."""
    w = await join(shard.ws_url)
    speed = w.welcome["speed"]
    own = own_entity(w)
    x0, y0, z0 = own["x"], own["y"], own["z"]
    await w.send({"t": "move", "seq": 1, "x": x0, "y": y0, "z": z0, "yaw": 0.1})
    await w.state_where(lambda m: m["ack"] >= 1)
    await asyncio.sleep(1.5)  # elapsed time is the quantity under test here
    await w.send({"t": "move", "seq": 2, "x": x0 + 50 * speed, "y": y0, "z": z0, "yaw": 0.2})
    row = (await w.state_where(lambda m: m["ack"] >= 2 and m.get("upd")))["upd"]
    row = next(u for u in row if u[0] == w.you)
    travelled = math.dist((x0, y0, z0), row[1:4])
    assert travelled == pytest.approx(speed * 1.0, rel=0.02)  # 1 s, not the 1.5 s that passed
    # Straight away again: only the few milliseconds since then count.
    sent = time.monotonic()
    await w.send({"t": "move", "seq": 3, "x": row[1] + 50 * speed, "y": y0, "z": z0, "yaw": 0})
    later = await w.state_where(lambda m: m["ack"] >= 3)
    elapsed = time.monotonic() - sent
    moved = next((u for u in later.get("upd", ()) if u[0] == w.you), row)
    # The shard's dt can exceed our measured elapsed by the ack's delivery delay: allow a tick+.
    assert moved[1] - row[1] <= speed * min(1.0, elapsed + 0.25) + 1e-6
    await w.close()


async def test_others_see_enter_upd_and_leave_as_players_move(field_shard):
    """A watcher sees a mover's upd within range, leave when it walks out, enter on return."""
    a = await join(field_shard.ws_url)
    b = await join(field_shard.ws_url)
    if b.you not in entity_ids(a.first_state):
        await a.state_where(lambda m: b.you in entity_ids(m))
    row = await walk_to(b, 3.0, 4.0, yaw=1.0)
    assert (await a.pose_of(b.you)) == row  # others see exactly the shard's pose
    await walk_to(b, 80.0, 80.0)  # far outside the 20 m area of interest
    await a.state_where(lambda m: b.you in m.get("leave", ()))
    await walk_to(b, 5.0, 0.0)
    entered = await a.state_where(lambda m: b.you in entity_ids(m))
    again = next(e for e in entered["enter"] if e["id"] == b.you)
    assert (again["x"], again["z"], again["kind"]) == (5.0, 0.0, "player")
    await close_all(a, b)


async def test_unchanged_entities_are_not_repeated_in_upd(field_shard):
    """An entity whose pose did not change is not in `upd`; only the mover's is."""
    a = await join(field_shard.ws_url)
    b = await join(field_shard.ws_url)
    await walk_to(a, 1.0, 1.0)
    state = await b.state_where(lambda m: any(u[0] == a.you for u in m.get("upd", ())))
    assert [u[0] for u in state["upd"]] == [a.you]
    await close_all(a, b)


async def test_first_state_holds_the_area_of_interest_only(field_shard):
    """The first `enter` lists the NPC 10 m away but not the one ~85 m away (aoi 20 m)."""
    w = await join(field_shard.ws_url)
    npcs = {e["name"]: e["id"] for e in w.first_state["enter"] if e["kind"] == "npc"}
    assert list(npcs) == ["Guard"]
    start = len(w.seen)
    await walk_to(w, 55.0, 55.0)  # now the hermit is ~7 m away, the guard ~75 m
    entered = [e for m in w.seen[start:] if m.get("t") == "state" for e in m.get("enter", ())]
    left = [i for m in w.seen[start:] if m.get("t") == "state" for i in m.get("leave", ())]
    assert [e["name"] for e in entered if e["kind"] == "npc"] == ["Hermit"]
    assert npcs["Guard"] in left
    await w.close()


async def test_state_only_when_view_changes_and_once_per_tick(field_shard):
    """Moves out of view send no `state` to a watcher; states carry increasing ticks."""
    a = await join(field_shard.ws_url)
    b = await join(field_shard.ws_url)
    await a.state_where(lambda m: b.you in entity_ids(m))
    await walk_to(b, 80.0, -80.0)
    await a.state_where(lambda m: b.you in m.get("leave", ()))
    start = len(a.seen)
    for i in range(5):  # each ack is a later tick: at least five ticks pass
        await walk_to(b, 80.0 - i, -80.0)
    await a.barrier()
    assert not any(m.get("t") == "state" for m in a.seen[start:])
    ticks = [m["tick"] for m in b.seen if m.get("t") == "state"]
    assert ticks == sorted(set(ticks))  # strictly increasing: never two in one tick
    await close_all(a, b)
