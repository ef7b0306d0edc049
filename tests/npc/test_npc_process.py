"""`--npc-workers process`: the engine in a `python -m npc.worker` child of the shard, over a pipe.

Real shard, real WebSocket, a real child process with the tiny random-weight model: the
answers look the same as in-process, a cancel reaches the child, a killed child ends its
answers with `error` and is started again, and the child dies with its parent.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys

import pytest

from npc.process import ProcessSettings
from server.app import run_shard
from tests.npc.test_npc_world import GUARD, LONG, collect_answer
from tests.server.conftest import shard_settings
from tests.server.wire import close_all, join, write_world


@contextlib.asynccontextmanager
async def process_shard(tmp_path):
    """A shard whose NPCs answer in a child worker process (tiny model), once that child is ready."""
    world = write_world(tmp_path / "w.toml", npcs=(GUARD, LONG))
    settings = shard_settings(tmp_path, world=world, npc_model="tiny", npc_workers="process",
                              npc_context_tokens=1024, npc_threads=1)
    async with run_shard(settings) as shard:
        await shard.npcs.engine.ready_event.wait()
        yield shard, shard.npcs.engine


def wait_exit(pid: int, timeout: float) -> bool:
    """True once process `pid` (not necessarily our child) has exited, within `timeout` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


async def test_answer_streams_from_the_child_to_speaker_and_bystander(tmp_path):
    """A line answered in the child streams npc_start/npc_token.../npc_end to all who heard it."""
    async with process_shard(tmp_path) as (shard, engine):
        alice, bob = await join(shard.ws_url), await join(shard.ws_url)
        await alice.send({"t": "chat", "text": "hello guard", "to": "n:guard", "id": 3})
        start = await alice.recv_type("npc_start")
        assert start["re"] == 3 and start["npc"] == "n:guard"
        a_pieces, a_end = await collect_answer(alice, start["reply"])
        b_pieces, b_end = await collect_answer(bob, start["reply"])
        assert a_pieces and a_pieces == b_pieces
        assert a_end["text"] == "".join(a_pieces) == b_end["text"]
        assert a_end["reason"] in ("stop", "length") and a_end["tokens"] >= 1
        assert engine.in_flight == 0 and engine.proc.pid != os.getpid()
        await close_all(alice, bob)


async def test_cancel_reaches_the_child(tmp_path):
    """npc_cancel ends the child's answer as cancelled (confirmed by the child), and the player may talk again."""
    async with process_shard(tmp_path) as (shard, engine):
        alice = await join(shard.ws_url)
        await alice.send({"t": "chat", "text": "a long story please", "to": "n:sage"})
        start = await alice.recv_type("npc_start")
        await alice.recv_type("npc_token", reply=start["reply"])
        await alice.send({"t": "npc_cancel", "reply": start["reply"]})
        _, end = await collect_answer(alice, start["reply"])
        assert end["reason"] == "cancelled"
        assert engine.metrics.finished_by.get("cancelled") == 1
        await alice.send({"t": "chat", "text": "hi", "to": "n:guard"})
        start = await alice.recv_type("npc_start")
        _, end = await collect_answer(alice, start["reply"])
        assert end["reason"] in ("stop", "length")
        await close_all(alice)


async def test_a_killed_child_ends_answers_with_error_and_is_restarted(tmp_path):
    """Killing the child mid-answer ends that answer with error at once; a new child then answers."""
    async with process_shard(tmp_path) as (shard, engine):
        alice = await join(shard.ws_url)
        await alice.send({"t": "chat", "text": "a long story please", "to": "n:sage"})
        start = await alice.recv_type("npc_start")
        await alice.recv_type("npc_token", reply=start["reply"])
        first = engine.proc.pid
        os.kill(first, signal.SIGKILL)
        _, end = await collect_answer(alice, start["reply"])
        assert end["reason"] == "error"
        await engine.ready_event.wait()
        assert engine.proc.pid != first and engine.metrics.restarts == 1
        await alice.send({"t": "chat", "text": "hello again", "to": "n:guard"})
        start = await alice.recv_type("npc_start")
        _, end = await collect_answer(alice, start["reply"])
        assert end["reason"] in ("stop", "length")
        await close_all(alice)


async def test_the_child_stops_with_the_shard(tmp_path):
    """Closing the shard stops its worker process."""
    async with process_shard(tmp_path) as (_, engine):
        pid = engine.proc.pid
    assert engine.proc.returncode is not None and wait_exit(pid, 0)


def test_the_child_dies_when_its_parent_dies_without_closing(tmp_path):
    """A worker started with --parent-pid dies when that parent is killed (no clean close)."""
    settings = ProcessSettings(model="tiny", threads=1, max_model_len=256)
    parent = tmp_path / "parent.py"
    # The child inherits the parent's stdin, which this test holds open: no EOF stops the
    # child when the parent dies, only the parent's death itself can.
    parent.write_text(
        "import os, subprocess, sys\n"
        f"cmd = {settings.command()!r}\n"
        "cmd[cmd.index('--parent-pid') + 1] = str(os.getpid())\n"
        "child = subprocess.Popen(cmd, stdout=subprocess.PIPE)\n"
        "assert b'\"ready\"' in child.stdout.readline()\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, str(parent)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=os.getcwd())
    try:
        child = int(proc.stdout.readline())
        assert not wait_exit(child, 0)
        proc.kill()
        proc.wait()
        assert wait_exit(child, 30)
    finally:
        proc.kill()
        proc.wait()


def test_the_shards_prefill_bound_reaches_both_engines(tmp_path) -> None:
    """--npc-prefill-tokens goes to the in-process engine's settings and to the child's command line."""
    from npc.service import NpcSettings, load_engine
    from server.app import _npc_hook

    inproc = _npc_hook(shard_settings(tmp_path, npc_model="tiny", npc_prefill_tokens=20))
    assert load_engine(inproc.settings).core.config.prefill_with_decodes == 20
    assert NpcSettings().prefill_tokens == 48
    child = _npc_hook(shard_settings(tmp_path, npc_model="tiny", npc_workers="process", npc_prefill_tokens=20))
    cmd = child.engine.settings.command()
    assert cmd[cmd.index("--prefill-with-decodes") + 1] == "20"
    assert "--prefill-with-decodes" not in ProcessSettings(model="tiny").command()


def test_the_shards_int8_rows_reach_both_engines_and_the_worker(tmp_path) -> None:
    """--npc-int8-rows pins the int8 kernel's crossover (default -1: measured at load) in the
    in-process engine, on the child's command line and in `python -m npc.worker`."""
    from npc.engine.quant import Int8Linear
    from npc.service import load_engine
    from npc.worker import _parser, build_engine
    from server.app import _npc_hook
    from server.settings import Settings

    def limits(engine) -> set[int]:
        try:
            return {m.max_kernel_rows for m in engine.core.runner.model.modules() if isinstance(m, Int8Linear)}
        finally:
            engine.close()

    inproc = _npc_hook(shard_settings(tmp_path, npc_model="tiny", npc_int8_rows=7))
    assert limits(load_engine(inproc.settings)) == {7}
    child = _npc_hook(shard_settings(tmp_path, npc_model="tiny", npc_workers="process", npc_int8_rows=7))
    cmd = child.engine.settings.command()
    assert cmd[cmd.index("--int8-rows") + 1] == "7"
    default = ProcessSettings(model="tiny").command()
    assert default[default.index("--int8-rows") + 1] == "-1"
    assert limits(build_engine(_parser().parse_args(["--model", "tiny", "--int8-rows", "3"]))) == {3}
    with pytest.raises(ValueError):
        Settings(npc_int8_rows=-2)
    with pytest.raises(ValueError):
        ProcessSettings(int8_rows=-2)
