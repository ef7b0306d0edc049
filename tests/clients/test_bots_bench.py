"""The load benchmark's parts: its world file, /proc readers, verdicts, and the naive baseline driven by the bots."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from clients.bots import BotSettings, run_bots
from worldstate.config import load_world

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_module(name: str):
    """Import a bench/ script by path (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def load():
    return load_module("load")


def test_generated_world_is_a_valid_world_file(load, tmp_path):
    """The benchmark's generated TOML loads with the shard's own loader, with the planned sizes."""
    plan = load.Plan(world_m=1000.0, aoi=100.0, speed=6.0)
    path = tmp_path / "w.toml"
    path.write_text(load.world_toml(plan, spawn_radius=100.0))
    cfg = load_world(path)
    assert tuple(cfg.bounds) == (0.0, 0.0, 1000.0, 1000.0)
    assert cfg.aoi == 100.0 and cfg.speed == 6.0 and cfg.spawn_radius == 100.0
    assert tuple(cfg.spawn) == (500.0, 0.0, 500.0)


def test_proc_readers_see_this_process(load):
    """CPU seconds and VmRSS come from /proc for a live process and grow when it works."""
    before = load.cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))
    assert load.cpu_seconds(os.getpid()) >= before
    assert load.rss_kb(os.getpid()) > 1000


def test_plan_rejects_bad_sizes(load):
    """A plan with no bots or an unknown scenario is a ValueError."""
    with pytest.raises(ValueError):
        load.Plan(spread_bots=0)
    with pytest.raises(ValueError, match="unknown"):
        load.Plan(scenarios=("spread", "jog"))


def row(load, scenario, server, **kw):
    base = dict(scenario=scenario, server=server, bots=10, failed=0, ack_p99_ms=50.0, missed=0,
                completeness=1.0, shard_cpu_pct=20.0, bots_bottleneck=False)
    base.update(kw)
    return base


def test_verdicts_and_ratios_follow_the_targets(load):
    """Spread, crowd and idle verdicts say MET or MISSED by the issue's limits; ratios divide shard by naive."""
    rows = [row(load, "spread", "shard", shard_cpu_pct=40.0), row(load, "spread", "naive", shard_cpu_pct=80.0),
            row(load, "crowd", "shard", ack_p99_ms=90.0, shard_cpu_pct=30.0),
            row(load, "crowd", "naive", shard_cpu_pct=60.0),
            row(load, "idle", "shard", kb_per_player=4.2, ack_p99_ms=None)]
    ratios, verdicts = load.judge(rows)
    assert ratios["spread_cpu_shard_over_naive"] == 0.5 and ratios["crowd_cpu_shard_over_naive"] == 0.5
    assert verdicts[0].startswith("spread") and verdicts[0].endswith("MET")
    assert verdicts[1].startswith("crowd") and verdicts[1].endswith("MISSED")  # ack p99 90 > 80
    assert verdicts[2].startswith("idle") and verdicts[2].endswith("MET")
    rows[0]["bots_bottleneck"] = True
    assert "BOTS ARE THE BOTTLENECK" in load.judge(rows)[1][-1]


async def test_bots_drive_the_naive_baseline():
    """The naive full-broadcast server welcomes the bots, acks their moves and shows everyone to everyone."""
    naive = load_module("naive_server")
    cfg = naive.NaiveConfig(bounds=(0.0, 0.0, 100.0, 100.0), spawn=(50.0, 50.0), spawn_radius=20.0)
    async with naive.naive_shard(cfg) as url:
        r = await run_bots(BotSettings(url=url, bots=5, duration=1.0, warmup=0.3, progress=False,
                                       probe_timeout=1.0, ramp=500.0))
    assert r["connections"]["welcomed"] == 5
    assert r["ack_ms"]["n"] > 20 and 0 < r["ack_ms"]["p99"] < 1000
    assert r["missed_updates"]["missed"] == 0 and r["completeness"]["ratio"] == 1.0
    assert r["world"]["shard"] == "naive"
