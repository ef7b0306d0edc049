"""Unit tests of World's public API: entities, movement, queries, views and diffs."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldstate import DuplicateEntity, Entity, Pose, UnknownEntity, World, WorldConfig


def make_world(*, rebuild_limit: int | None = None, **kw) -> World:
    base = dict(bounds=(-100.0, -100.0, 100.0, 100.0), aoi=20.0, speed=5.0)
    base.update(kw)
    return World(WorldConfig(**base), rebuild_limit=rebuild_limit)


def player(i: str, x: float = 0.0, z: float = 0.0) -> Entity:
    return Entity(f"p:{i}", "player", i, Pose(x, 0.0, z))


def test_first_tick_enters_whole_view_including_self():
    """A new observer's first diff enters itself and everything within the aoi, and nothing beyond."""
    w = make_world()
    w.add(player("a"))
    w.add(player("b", 15, 0))
    w.add(player("c", 30, 0))
    w.watch("p:a")
    diffs = w.tick()
    assert set(diffs) == {"p:a"}
    assert {e.id for e in diffs["p:a"].enter} == {"p:a", "p:b"}
    assert w.tick() == {}


def test_move_is_clamped_and_reported_to_watchers():
    """move() applies the speed limit and the clamped pose is the one others get in upd."""
    w = make_world()
    w.add(player("a"))
    w.add(player("b", 5, 0))
    w.watch("p:b")
    w.tick()
    got = w.move("p:a", Pose(50.0, 0.0, 0.0), now_ms=1_000)
    assert got == Pose(5.0, 0.0, 0.0)
    assert w.get("p:a").pose == got
    diff = w.tick()["p:b"]
    assert [e.id for e in diff.upd] == ["p:a"] and diff.upd[0].pose == got


def test_remove_leaves_views_and_errors():
    """Removing an entity puts it in watchers' leave; duplicates and unknown ids raise."""
    w = make_world()
    w.add(player("a"))
    w.add(player("b", 1, 1))
    with pytest.raises(DuplicateEntity):
        w.add(player("a"))
    with pytest.raises(UnknownEntity):
        w.move("p:zz", Pose(0, 0, 0), 0)
    w.watch("p:a")
    w.tick()
    assert w.remove("p:b").id == "p:b"
    assert w.remove("p:b") is None
    assert w.tick()["p:a"].leave == ["p:b"]
    assert "p:b" not in w and len(w) == 1


def test_move_time_allowance_follows_previous_applied_move():
    """The speed limit counts time since the previous applied move, a full second at first and after a teleport."""
    w = make_world()
    w.add(player("a"))
    assert w.move("p:a", Pose(100, 0, 0), now_ms=10_000).x == 5.0       # first move: 1 s
    assert w.move("p:a", Pose(100, 0, 0), now_ms=10_200).x == 6.0       # 0.2 s later
    assert w.move("p:a", Pose(100, 0, 0), now_ms=99_000).x == 11.0      # capped at 1 s
    w.teleport("p:a", Pose(0, 0, 0))
    assert w.move("p:a", Pose(100, 0, 0), now_ms=99_001).x == 5.0       # fresh allowance


def test_near_filters_by_distance_and_kind_nearest_first():
    """near() returns entities within the x-z radius (inclusive), nearest first, optionally of one kind."""
    w = make_world()
    w.add(player("a", 0, 0))
    w.add(Entity("n:g", "npc", "g", Pose(3, 50, 4)))      # y is ignored: 5 m away on x-z
    w.add(Entity("o:x", "object", "x", Pose(1, 0, 0)))
    w.add(player("far", 30, 30))
    assert [e.id for e in w.near(0, 0, 5)] == ["p:a", "o:x", "n:g"]
    assert [e.id for e in w.near(0, 0, 5, kind="npc")] == ["n:g"]
    assert w.near(0, 0, 4.99, kind="npc") == []
    assert {e.id for e in w.near(0, 0, 1e9)} == {"p:a", "n:g", "o:x", "p:far"}
    assert w.near(0, 0, -1) == []


def test_reset_view_is_the_base_for_later_diffs():
    """After reset_view the next tick reports only changes relative to the returned view."""
    w = make_world()
    w.add(player("a"))
    w.add(player("b", 10, 0))
    w.add(player("c", 60, 0))
    w.add(player("d", 5, 5))
    w.watch("p:a")
    full = w.reset_view("p:a")
    assert {e.id for e in full} == {"p:a", "p:b", "p:d"}
    w.remove("p:d")
    w.teleport("p:c", Pose(1, 0, 1))
    diffs = w.tick()
    assert {e.id for e in diffs["p:a"].enter} == {"p:c"}
    assert diffs["p:a"].leave == ["p:d"]
    assert w.view_ids("p:a") == {"p:a", "p:b", "p:c"}


def test_reset_view_watches_and_drops_pending_leaves():
    """reset_view on a non-observer starts its view; leaves queued before the reset are not repeated."""
    w = make_world()
    w.add(player("a"))
    w.add(player("b", 1, 0))
    w.watch("p:a")
    w.tick()
    w.remove("p:b")
    assert [e.id for e in w.reset_view("p:a")] == ["p:a"]
    assert w.tick() == {}
    w.add(player("x", 50, 50))
    assert not w.is_watching("p:x")
    assert [e.id for e in w.reset_view("p:x")] == ["p:x"]
    assert w.is_watching("p:x")


def test_unwatch_and_removing_an_observer_stop_its_diffs():
    """An unwatched or removed observer gets no diff; others still see its entity leave."""
    w = make_world()
    for i in "abc":
        w.add(player(i))
    for i in "abc":
        w.watch(f"p:{i}")
    w.tick()
    w.unwatch("p:a")
    w.unwatch("p:a")  # a no-op the second time
    w.unwatch("p:nobody")
    w.remove("p:b")
    w.teleport("p:c", Pose(1, 0, 0))
    diffs = w.tick()
    assert set(diffs) == {"p:c"}
    assert diffs["p:c"].leave == ["p:b"] and [e.id for e in diffs["p:c"].upd] == ["p:c"]
    with pytest.raises(UnknownEntity):
        w.view_ids("p:a")
    with pytest.raises(UnknownEntity):
        w.watch("p:b")


def test_readding_an_id_within_a_tick_is_an_enter_not_a_leave():
    """An entity removed and re-added (reconnect) before the tick is sent whole, never in leave."""
    w = make_world()
    w.add(player("a"))
    w.add(player("b", 2, 0))
    w.watch("p:a")
    w.tick()
    w.remove("p:b")
    w.add(Entity("p:b", "player", "b2", Pose(3, 0, 0)))
    d = w.tick()["p:a"]
    assert [e.name for e in d.enter] == ["b2"] and d.leave == [] and d.upd == []


def test_move_and_back_within_a_tick_sends_nothing():
    """An entity that ends the tick where it started is not in anyone's upd."""
    w = make_world()
    w.add(player("a"))
    w.add(player("b", 2, 0))
    w.watch("p:a")
    w.tick()
    w.move("p:b", Pose(3, 0, 0), 1_000)
    w.move("p:b", Pose(2, 0, 0), 2_000)
    assert w.tick() == {}


def test_far_teleports_keep_views_exact():
    """Teleports far outside the bounds (no rules apply) neither break nor bloat the index."""
    w = make_world(aoi=10.0, rebuild_limit=0)  # rebuild the band whenever anything is loose
    w.add(player("a"))
    w.add(player("b", 1, 0))
    w.watch("p:a")
    w.watch("p:b")
    w.tick()
    w.teleport("p:b", Pose(1e9, 0, -1e9))
    for _ in range(3):  # ticks force a rebuild with the far-flung entity in the index
        d = w.tick()
    assert w.view_ids("p:a") == {"p:a"} and w.view_ids("p:b") == {"p:b"}
    w.teleport("p:b", Pose(2, 0, 0))
    d = w.tick()
    assert [e.id for e in d["p:a"].enter] == ["p:b"]


def test_entity_wire_form_and_validation():
    """to_wire gives the protocol's entity object; bad kinds, ids and poses are refused."""
    from worldstate import InvalidEntity
    e = Entity("o:1", "object", "crate", Pose(1, 2, 3, 0.5), {"shape": "box", "color": "#ff0000"})
    assert e.to_wire() == {"id": "o:1", "kind": "object", "name": "crate", "x": 1, "y": 2, "z": 3,
                           "yaw": 0.5, "props": {"shape": "box", "color": "#ff0000"}}
    assert "props" not in player("a").to_wire()
    with pytest.raises(InvalidEntity):
        Entity("x", "dragon", "x", Pose(0, 0, 0))
    with pytest.raises(InvalidEntity):
        Entity("", "npc", "x", Pose(0, 0, 0))
    with pytest.raises(InvalidEntity):
        Entity("n:1", "npc", "x", Pose(float("nan"), 0, 0))
    with pytest.raises(InvalidEntity):
        Entity("n:1", "npc", "x", Pose(0, 0, -1e300))
    w = make_world()
    w.add(e)
    with pytest.raises(InvalidEntity):
        w.teleport("o:1", Pose(float("inf"), 0, 0))
    with pytest.raises(InvalidEntity):
        w.teleport("o:1", Pose(1e300, 0, 0))
    assert w.get("o:1").pose == Pose(1, 2, 3, 0.5)


def test_world_tuning_is_validated():
    """Band tuning values that cannot work are refused with ValueError."""
    with pytest.raises(ValueError):
        make_world_with(skin=0)
    with pytest.raises(ValueError):
        make_world_with(rebuild_limit=-1)


def make_world_with(**kw) -> World:
    return World(WorldConfig(), **kw)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-90, 90), st.integers(-90, 90), st.sampled_from(["player", "npc", "object"])),
                max_size=60),
       st.integers(-100, 100), st.integers(-100, 100), st.integers(0, 150),
       st.sampled_from([None, "player", "npc", "object"]))
def test_near_equals_brute_force(spots, x, z, radius, kind):
    """near() returns exactly the brute-force set (x-z distance <= radius, inclusive), nearest first."""
    w = make_world()
    for i, (ex, ez, k) in enumerate(spots):
        w.add(Entity(f"e:{i}", k, str(i), Pose(float(ex), 0.0, float(ez))))
    got = w.near(float(x), float(z), float(radius), kind=kind)
    want = {e.id for e in w.entities()
            if (e.pose.x - x) ** 2 + (e.pose.z - z) ** 2 <= radius * radius and kind in (None, e.kind)}
    assert {e.id for e in got} == want and len(got) == len(want)
    d = [(e.pose.x - x) ** 2 + (e.pose.z - z) ** 2 for e in got]
    assert d == sorted(d)


def test_reset_between_a_move_and_its_undo_still_updates():
    """An observer reset mid-tick gets the final pose even if the entity ends where the tick began."""
    w = make_world()
    w.add(player("a"))
    w.add(player("b", 2, 0))
    w.watch("p:a")
    w.tick()
    w.teleport("p:b", Pose(2, 0, 0, 1.0))
    assert {e.id: e.pose.yaw for e in w.reset_view("p:a")}["p:b"] == 1.0  # the client saw yaw 1
    w.teleport("p:b", Pose(2, 0, 0, 0.0))
    d = w.tick()["p:a"]
    assert [(e.id, e.pose.yaw) for e in d.upd] == [("p:b", 0.0)]


def test_views_widen_their_slots_past_65536_entities():
    """Views store slots in 16 bits until a slot needs more; from then on in 32, and stay exact."""
    w = make_world(bounds=(-1000.0, -1000.0, 1000.0, 1000.0))
    w.add(player("a"))
    w.add(player("b", 5, 0))
    w.watch("p:a")
    w.watch("p:b")
    w.tick()
    assert w._views._code == "H"
    for i in range((1 << 16) - 2):  # fill slots 2..65535, far from the players
        w.add(Entity(f"o:{i}", "object", "crate", Pose(900.0, 0.0, 900.0)))
    w.tick()
    assert w._views._code == "H"
    w.add(player("c", 0, 5))  # slot 65536: past 16 bits
    w.watch("p:c")
    assert w._views._code == "i"
    diffs = w.tick()
    assert [e.id for e in diffs["p:a"].enter] == ["p:c"]
    assert {e.id for e in diffs["p:c"].enter} == {"p:a", "p:b", "p:c"}
    assert w.view_ids("p:a") == {"p:a", "p:b", "p:c"}
    w.teleport("p:c", Pose(0.0, 0.0, 30.0))
    diffs = w.tick()
    assert diffs["p:a"].leave == ["p:c"] and diffs["p:b"].leave == ["p:c"]
    assert w.view_ids("p:c") == {"p:c"}


def test_one_sided_views_between_ticks_stay_exact():
    """A reset or a new watch between ticks makes two observers' views one-sided until the
    tick; removing either meanwhile still leaves every view and diff exact."""
    w = make_world()
    for name, x in (("a", 0), ("b", 10), ("c", 25)):
        w.add(player(name, x, 0))
        w.watch(f"p:{name}")
    w.tick()
    assert w.view_ids("p:a") == {"p:a", "p:b"} and w.view_ids("p:c") == {"p:b", "p:c"}
    w.teleport("p:b", Pose(-15.0, 0.0, 0.0))
    assert {e.id for e in w.reset_view("p:b")} == {"p:a", "p:b"}  # c is out of b's view now
    w.remove("p:b")                                               # before c was told
    diffs = w.tick()
    assert diffs["p:c"].leave == ["p:b"] and diffs["p:a"].leave == ["p:b"]
    assert "p:b" not in w.view_ids("p:a") and w.view_ids("p:c") == {"p:c"}
    w.add(Entity("n:d", "npc", "d", Pose(5.0, 0.0, 0.0)))
    w.tick()
    w.watch("n:d")                  # a thing a sees becomes an observer, then goes
    w.unwatch("n:d")
    w.teleport("n:d", Pose(6.0, 0.0, 0.0))
    diffs = w.tick()
    assert [e.id for e in diffs["p:a"].upd] == ["n:d"] and "n:d" not in diffs
    w.watch("n:d")
    w.remove("n:d")
    diffs = w.tick()
    assert diffs["p:a"].leave == ["n:d"] and "n:d" not in diffs
    assert w.view_ids("p:a") == {"p:a"}
