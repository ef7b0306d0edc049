"""The load-test bots against a real shard on 127.0.0.1 (port 0, SQLite under tmp_path)."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from clients.bots import BotSettings, run_bots
from clients.bots.swarm import Swarm
from server.app import run_shard
from server.npcs import NpcHook, NpcLine
from tests.server.conftest import shard_settings

REPO = Path(__file__).resolve().parents[2]
# A small world whose area of interest covers all of it: every bot must see every other,
# so a quiet run has an exact ground truth (no edge-of-view cases).
SMALL_WORLD = """\
[world]
name = "BotYard"
bounds = [-40.0, -40.0, 40.0, 40.0]
spawn = [0.0, 0.0, 0.0]
spawn_radius = 20.0
aoi = 200.0
shout_range = 300.0
talk_range = 8.0
speed = 6.0
"""
REPORT_KEYS = {"scenario", "url", "bots", "duration_s", "world", "connections", "ack_ms", "staleness_ms",
               "missed_updates", "completeness", "traffic", "chat", "npc", "errors", "events",
               "loop_lag_ms", "bots_cpu_pct", "observers", "bottleneck", "warnings"}


@pytest.fixture
def world_file(tmp_path) -> Path:
    path = tmp_path / "botyard.toml"
    path.write_text(SMALL_WORLD)
    return path


def quick(url: str, **kw) -> BotSettings:
    """Short, quiet bot settings for tests."""
    base = dict(url=url, bots=6, duration=1.5, warmup=0.3, progress=False, probe_timeout=1.0,
                ramp=500.0)
    base.update(kw)
    return BotSettings(**base)


async def test_move_run_reports_sane_numbers(tmp_path, world_file):
    """Six walking bots on a quiet shard: all connect, acks are timed, no update is missed, views are complete."""
    async with run_shard(shard_settings(tmp_path, world=str(world_file))) as shard:
        # An area wider than the world: the bots must keep to the world's bounds by themselves.
        swarm = Swarm(quick(shard.ws_url, scenario="move", area=(-100.0, -60.0, 100.0, 30.0)))
        r = await swarm.run()
    assert swarm.area == (-40.0, -40.0, 40.0, 30.0)
    assert REPORT_KEYS <= set(r)
    assert r["connections"]["made"] == 6 and r["connections"]["failed"] == 0
    assert r["connections"]["welcomed"] == 6
    assert r["connections"]["close_codes"] == {"1000 (at stop)": 6}
    ack = r["ack_ms"]
    # 10 Hz for ~1.5 s for 6 bots: dozens of timed moves, each after at least part of a tick.
    assert ack["n"] >= 40
    assert 0 < ack["p50"] <= ack["p99"] < 1000
    assert r["staleness_ms"]["n"] > 0 and r["staleness_ms"]["p50"] > 0
    mu = r["missed_updates"]
    assert mu["expected"] > 0 and mu["missed"] == 0 and mu["delivered"] == mu["expected"]
    cp = r["completeness"]
    assert cp["checks"] > 0 and cp["expected"] > 0 and cp["ratio"] == 1.0 and cp["extra"] == 0
    assert r["traffic"]["msgs_out_per_s"] > 40 and r["traffic"]["msgs_in_per_s"] > 40
    assert r["world"]["aoi"] == 200.0 and r["world"]["speed"] == 6.0
    assert r["events"].get("clamped_moves", 0) <= 6  # walking at half the limit: rarely clamped


async def test_chat_run_times_the_echo_and_counts_lines_heard(tmp_path, world_file):
    """Chatting bots get their own line back (timed by its `re`) and hear each other's lines."""
    async with run_shard(shard_settings(tmp_path, world=str(world_file))) as shard:
        r = await run_bots(quick(shard.ws_url, scenario="chat", bots=4, chat_rate=2.0))
    assert r["chat"]["sent"] >= 4
    assert r["chat"]["echo_ms"]["n"] >= 4 and 0 < r["chat"]["echo_ms"]["p99"] < 1000
    # Everyone is within hearing range, so each line reaches the three other bots.
    assert r["chat"]["heard"] >= 3 * r["chat"]["echo_ms"]["n"] - 3
    assert r["ack_ms"]["n"] == 0  # chat bots do not walk


async def test_idle_bots_stay_silent_and_a_stop_request_ends_the_run_early(tmp_path, world_file):
    """Idle bots send nothing after hello; a stop request (Ctrl-C) cuts a 60 s run short and it still reports."""
    async with run_shard(shard_settings(tmp_path, world=str(world_file))) as shard:
        swarm = Swarm(quick(shard.ws_url, scenario="idle", bots=5, duration=60.0),
                      on_phase=lambda phase, t: phase == "steady_start" and swarm.request_stop())
        r = await asyncio.wait_for(swarm.run(), 30)
    assert r["connections"]["welcomed"] == 5
    assert r["traffic"]["msgs_out"] == 5  # one hello each
    assert r["ack_ms"]["n"] == 0 and r["errors"] == {}
    assert r["duration_s"] < 5 and any("stopped early" in w for w in r["warnings"])


async def test_full_shard_close_code_is_reported(tmp_path, world_file):
    """Bots beyond the shard's max_players are counted under close code 4013 in the report."""
    async with run_shard(shard_settings(tmp_path, world=str(world_file), max_players=3)) as shard:
        r = await run_bots(quick(shard.ws_url, scenario="idle", bots=5, duration=0.3))
    assert r["connections"]["welcomed"] == 3
    assert r["connections"]["close_codes"].get("4013") == 2


async def test_server_without_world_v1_counts_as_failed_connection():
    """A WebSocket server that does not select the world.v1 subprotocol is a failed connection, with the reason."""
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        r = await run_bots(quick(f"ws://127.0.0.1:{port}/ws", scenario="idle", bots=2, duration=0.2,
                                 warmup=0.0, connect_timeout=2.0))
    assert r["connections"]["made"] == 0 and r["connections"]["failed"] == 2
    assert any("subprotocol" in k for k in r["connections"]["failures"])
    assert any("2 of 2 connections failed" in w for w in r["warnings"])


async def test_high_loop_lag_is_flagged_as_bots_bottleneck(tmp_path, world_file):
    """When the bots' own loop lags past the limit, the report says BOTS ARE THE BOTTLENECK."""
    async with run_shard(shard_settings(tmp_path, world=str(world_file))) as shard:
        settings = quick(shard.ws_url, scenario="idle", bots=2, duration=0.6, lag_warn_ms=0.001)

        stop = asyncio.Event()

        async def hog():
            # Block the bots' loop on purpose, as an overloaded bot process would: again and
            # again, so the blocks fall inside the measured window however long the ramp takes.
            import time
            while not stop.is_set():
                await asyncio.sleep(0.05)
                time.sleep(0.05)

        hogger = asyncio.create_task(hog())
        try:
            r = await run_bots(settings)
        finally:
            stop.set()
            await hogger
    assert r["bottleneck"] is True
    assert any("BOTS ARE THE BOTTLENECK" in w for w in r["warnings"])
    assert r["loop_lag_ms"]["max"] >= 1.0


async def test_command_line_writes_table_json_and_plot(tmp_path, world_file):
    """`python -m clients.bots` exits 0, prints a table, writes the JSON report and a PNG plot."""
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    async with run_shard(shard_settings(tmp_path, world=str(world_file))) as shard:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.bots", shard.ws_url, "-n", "3", "--duration", "1",
            "--scenario", "mixed", "--quiet", "--warmup", "0.2", "--json", str(out_json), "--plot", str(out_png),
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert "ack latency ms" in text and "connections" in text
    report = json.loads(out_json.read_text())
    assert REPORT_KEYS <= set(report) and report["connections"]["made"] == 3
    assert json.loads(text.strip().splitlines()[-1])["bots"] == 3  # the last line is the JSON report
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class ScriptedNpc(NpcHook):
    """An NPC behind the shard's NpcHook seam that answers in three pieces, or `busy` every third line."""

    def __init__(self) -> None:
        self.heard = 0
        self.tasks: set[asyncio.Task] = set()
        self.flight: set[str] = set()

    async def start(self, shard) -> None:
        self.shard = shard

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def in_flight(self, pid: str) -> bool:
        return pid in self.flight

    def hear(self, line: NpcLine) -> None:
        self.heard += 1
        reply = f"r:{self.heard}"
        start = {"t": "npc_start", "reply": reply, "npc": line.npc, "name": line.npc_name, "to": line.speaker}
        others = [p for p in line.listeners if p != line.speaker]
        self.shard.send_to([line.speaker], dict(start, re=line.re) if line.re is not None else start)
        self.shard.send_to(others, start)
        if self.heard % 3 == 0:
            self.shard.send_to(line.listeners, {"t": "npc_end", "reply": reply, "text": "", "reason": "busy",
                                                "tokens": 0})
            return
        self.flight.add(line.speaker)
        task = asyncio.create_task(self._stream(line, reply))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _stream(self, line: NpcLine, reply: str) -> None:
        pieces = ["Well", " met,", " traveller."]
        for piece in pieces:
            await asyncio.sleep(0.02)  # stands in for the time a model takes per token
            self.shard.send_to(line.listeners, {"t": "npc_token", "reply": reply, "text": piece})
        self.flight.discard(line.speaker)
        self.shard.send_to(line.listeners, {"t": "npc_end", "reply": reply, "text": "".join(pieces),
                                            "reason": "stop", "tokens": len(pieces)})


async def test_npc_run_times_first_token_and_gaps_and_counts_busy(tmp_path):
    """Bots asking an NPC measure time to first token and inter-token gaps, and count `busy` answers."""
    world = tmp_path / "npcyard.toml"
    world.write_text(SMALL_WORLD.replace("spawn_radius = 20.0", "spawn_radius = 2.0")
                     + '\n[[npcs]]\nid = "sage"\nname = "Sage"\nx = 0.0\ny = 0.0\nz = 0.0\n')
    npc = ScriptedNpc()
    async with run_shard(shard_settings(tmp_path, world=str(world)), npcs=npc) as shard:
        r = await run_bots(quick(shard.ws_url, scenario="npc", bots=3, npc_rate=2.0, duration=1.5))
    n = r["npc"]
    assert n["asked"] >= 3 and n["asked"] == npc.heard
    assert n["started"] == n["asked"]
    assert n["busy"] >= 1 and n["ends"].get("stop", 0) >= 1
    assert n["busy"] + n["ends"]["stop"] == n["asked"]
    assert n["ttft_ms"]["n"] == n["ends"]["stop"] and n["ttft_ms"]["p50"] >= 15  # one 20 ms token delay
    assert n["itl_ms"]["n"] == 2 * n["ends"]["stop"] and n["itl_ms"]["p50"] >= 15
    assert r["errors"] == {}
