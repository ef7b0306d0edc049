"""Unit tests of World's public API: entities, movement, queries, views and diffs."""
from __future__ import annotations

import pytest

from worldstate import DuplicateEntity, Entity, Pose, UnknownEntity, World, WorldConfig


def make_world(**kw) -> World:
    base = dict(bounds=(-100.0, -100.0, 100.0, 100.0), aoi=20.0, speed=5.0)
    base.update(kw)
    return World(WorldConfig(**base))


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
