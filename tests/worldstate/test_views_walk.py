"""Seeded long walks: crowds moving for hundreds of ticks keep World.tick() equal to the oracle."""
from __future__ import annotations

import math
import random

import pytest

from worldstate import Entity, Pose, World, WorldConfig, spatial
from worldstate.oracle import Oracle
from worldstate.views import Views


def walk(seed: int, *, n: int, observers: int, ticks: int, step: float, skin: float | None,
         rebuild_limit: int | None, teleports: float = 0.0, churn: float = 0.0,
         move_p: float = 0.8) -> int:
    """Run a random walk, check every tick against the oracle, return the diff items seen."""
    rng = random.Random(seed)
    half, aoi = 60.0, 20.0
    cfg = WorldConfig(bounds=(-half, -half, half, half), aoi=aoi, speed=1e6)
    kw = {k: v for k, v in (("skin", skin), ("rebuild_limit", rebuild_limit)) if v is not None}
    world = World(cfg, **kw)
    oracle = Oracle(aoi)
    kinds = ("player", "npc", "object")
    serial = 0

    def new_entity():
        nonlocal serial
        serial += 1
        return Entity(f"e:{serial}", kinds[serial % 3], f"e{serial}",
                      Pose(rng.uniform(-half, half), 0.0, rng.uniform(-half, half)))

    for _ in range(n):
        world.add(new_entity())
    watching = [e.id for e in world.entities()[:observers]]
    for o in watching:
        world.watch(o)
    now, items = 0, 0
    for _ in range(ticks):
        now += 50
        for e in world.entities():
            r = rng.random()
            if r < teleports:
                world.teleport(e.id, Pose(rng.uniform(-half, half), 0.0, rng.uniform(-half, half)))
            elif r < move_p:
                h = rng.uniform(-math.pi, math.pi)
                p = e.pose
                world.move(e.id, Pose(p.x + math.cos(h) * step, 0.0, p.z + math.sin(h) * step, h), now)
        if churn and rng.random() < churn:
            gone = rng.choice(world.entities()).id
            world.remove(gone)
            if gone in watching:
                watching.remove(gone)
                oracle.forget(gone)
            world.add(new_entity())
        diffs = world.tick()
        expected = oracle.tick(world.entities(), watching)
        assert set(diffs) == set(expected)
        for o, d in diffs.items():
            exp = expected[o]
            assert {e.id for e in d.enter} == exp.enter
            assert {e.id for e in d.upd} == exp.upd
            assert set(d.leave) == exp.leave
            items += len(d.enter) + len(d.upd) + len(d.leave)
    return items


@pytest.mark.parametrize("step,skin,limit", [
    (0.3, None, None),    # walking pace, default tuning: the band does nearly all the work
    (1.0, 2.0, 50),       # steps near the loose threshold, rebuilds rare: many loose endpoints
    (1.4, 2.0, 1000),     # steps past the skin, never rebuilding: everything loose
    (0.5, 1.0, 0),        # rebuild on every loose endpoint
])
def test_walking_crowd_matches_oracle(step, skin, limit):
    """Over 150 ticks of walking, every observer's diff equals the oracle's, whatever the band tuning."""
    items = walk(7, n=120, observers=30, ticks=150, step=step, skin=skin, rebuild_limit=limit)
    assert items > 1000  # the walk really produced traffic to compare


def test_teleports_and_churn_match_oracle():
    """Teleports, removals and arrivals mixed into a walk keep diffs equal to the oracle's."""
    walk(11, n=100, observers=25, ticks=120, step=0.8, skin=2.0, rebuild_limit=20,
         teleports=0.02, churn=0.5)


@pytest.mark.parametrize("move_p,limit", [(0.02, None), (0.1, 40), (0.3, None)])
def test_few_movers_among_many_match_oracle(monkeypatch, move_p, limit):
    """When few entities move they skip the band for exact queries, and diffs still match."""
    # Make exact queries look free so the few-movers path is taken whenever the limit allows.
    monkeypatch.setattr(Views, "LOOSE_COST", 0)
    items = walk(5, n=300, observers=60, ticks=60, step=0.7, skin=2.0, rebuild_limit=limit,
                 move_p=move_p)
    assert items > 100


def test_finely_chunked_pair_passes_match_oracle(monkeypatch):
    """Band rebuilds and batched exact views computed in many small chunks keep diffs equal to the oracle's."""
    monkeypatch.setattr(spatial, "NEAR_PAIRS_CHUNK", 16)
    monkeypatch.setattr(Views, "BATCH_MIN", 2)
    walk(13, n=120, observers=40, ticks=80, step=0.8, skin=2.0, rebuild_limit=10,
         teleports=0.01, churn=0.3)


def test_idle_loose_endpoints_are_settled_by_a_rebuild(monkeypatch):
    """Players who join and then stand still stop costing exact queries: a rebuild settles them
    once their queries add up to a rebuild's cost, and an idle world never rebuilds again."""
    rebuilt_at = []
    real = Views.tick

    def spy(self, population):
        out = real(self, population)
        rebuilt_at.append(out[1])
        return out

    monkeypatch.setattr(Views, "tick", spy)
    rng = random.Random(3)
    world = World(WorldConfig(bounds=(-100.0, -100.0, 100.0, 100.0), aoi=30.0))
    oracle, watching = Oracle(30.0), []
    for i in range(12):  # fewer than the loose limit: joins alone never force a rebuild
        pid = f"p:{i}"
        world.add(Entity(pid, "player", pid, Pose(rng.uniform(-100, 100), 0.0, rng.uniform(-100, 100))))
        world.watch(pid)
        watching.append(pid)
        diffs = world.tick()
        expected = oracle.tick(world.entities(), watching)
        assert {o: {e.id for e in d.enter} for o, d in diffs.items()} == {o: e.enter for o, e in expected.items()}
    joined = len(rebuilt_at)
    for _ in range(Views.REBUILD_QUERIES + 10):
        assert world.tick() == {}
    idle = rebuilt_at[joined:]
    assert any(idle)
    assert not any(idle[idle.index(True) + 1:])
