"""`python -m server` as a real process: its help, its ready line, and SIGTERM."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server.__main__ import settings_from_args
from server.settings import Settings, npc_engine_threads
from tests.server.wire import close_all, join, walk_to, write_world
from worldstate.store import Store

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"Worldsmith shard (?P<shard>\S+) ready: open (?P<http>http://\S+/) in a browser; "
                   r"WebSocket (?P<ws>ws://\S+/ws); database (?P<db>\S+); world (?P<world>\S+)$")


async def start_process(tmp_path, *args: str) -> tuple[asyncio.subprocess.Process, dict]:
    """Start `python -m server --port 0 ...` and wait for its ready line; stderr keeps draining."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDSMITH_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", *args,
        cwd=tmp_path, env=env | {"PYTHONPATH": str(REPO), "WORLDSMITH_NPC_MODEL": "none"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []

    async def ready_line() -> dict:
        while True:
            raw = await proc.stderr.readline()
            if not raw:
                raise AssertionError("shard exited before its ready line:\n" + "".join(lines))
            lines.append(raw.decode())
            match = READY.search(raw.decode().rstrip("\n"))
            if match:
                return match.groupdict()

    try:
        ready = await asyncio.wait_for(ready_line(), 30)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise

    async def drain() -> None:  # a full stderr pipe would block the shard
        async for raw in proc.stderr:
            lines.append(raw.decode())

    ready["drain"] = asyncio.get_running_loop().create_task(drain())
    ready["lines"] = lines
    return proc, ready


def test_help_documents_every_setting_and_its_variable():
    """`--help` names a flag and a WORLDSMITH_* variable for every Settings field."""
    out = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    for f in dataclasses.fields(Settings):
        flag = "--admin" if f.name == "admins" else "--" + f.name.replace("_", "-")
        env = "WORLDSMITH_ADMIN" if f.name == "admins" else "WORLDSMITH_" + f.name.upper()
        assert flag in out, flag
        assert env in " ".join(out.split()), env  # help text may wrap between words
    assert "(default: 8765)" in out


def test_settings_come_from_variables_and_flags_win(monkeypatch):
    """WORLDSMITH_* variables set settings, flags override them, --admin repeats."""
    monkeypatch.setenv("WORLDSMITH_PORT", "9001")
    monkeypatch.setenv("WORLDSMITH_TICK_HZ", "10")
    monkeypatch.setenv("WORLDSMITH_ADMIN", "ann,bo")
    s = settings_from_args(["--shard", "east"])
    assert (s.port, s.tick_hz, s.shard, s.admins) == (9001, 10.0, "east", ("ann", "bo"))
    s = settings_from_args(["--port", "9002", "--admin", "cy", "--admin", "di"])
    assert (s.port, s.admins) == (9002, ("cy", "di"))


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--tick-hz", "0"], ["--max-chat", "5000"],
                                  ["--log-level", "LOUD"], ["--admin", "bad name"]])
def test_bad_values_are_refused_by_name(argv, capsys):
    """A bad setting stops the CLI with a usage error that names the setting."""
    with pytest.raises(SystemExit) as exc:
        settings_from_args(argv)
    assert exc.value.code == 2
    assert argv[0].lstrip("-").replace("-", "_") in capsys.readouterr().err


def test_settings_reject_unknown_keys_and_bad_values():
    """Settings is strict: unknown keys are a TypeError, bad values a ValueError."""
    with pytest.raises(TypeError):
        Settings(colour="red")
    with pytest.raises(ValueError, match="send_buffer_limit"):
        Settings(send_buffer_limit=0)


async def test_ready_line_then_sigterm_closes_1001_flushes_poses_and_exits_0(tmp_path):
    """The process logs the ready line; on SIGTERM clients get 1001, the last pose is saved and it exits 0."""
    world = write_world(tmp_path / "w.toml")
    db = f"sqlite:///{tmp_path / 'term.db'}"
    proc, ready = await start_process(tmp_path, "--db", db, "--world", world, "--shard", "termy",
                                      "--pose-flush-s", "600")  # only shutdown can save the pose
    try:
        assert ready["shard"] == "termy" and ready["world"] == world
        assert ready["http"] == ready["ws"][:-2].replace("ws://", "http://")
        sam = await join(ready["ws"], "sam", password="pw-sam")
        guest = await join(ready["ws"])
        await walk_to(sam, 12.5, -4.0, yaw=1.0)
        proc.send_signal(signal.SIGTERM)
        assert (await sam.closed(timeout=10))[0] == 1001
        assert (await guest.closed(timeout=10))[0] == 1001
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        await ready["drain"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    store = Store(db)
    try:
        rec = store.load_player("sam")
    finally:
        store.close()
    assert (rec.x, rec.z, rec.yaw) == (12.5, -4.0, 1.0)
    assert any("stopped" in line for line in ready["lines"])


def test_npc_threads_auto_leaves_a_core_to_the_shard_for_a_child_engine():
    """--npc-threads 0: a child-process engine gets one thread fewer than the CPUs (at least 1),
    an in-process one PyTorch's default (0); a number is kept either way."""
    cpus = len(os.sched_getaffinity(0))
    assert npc_engine_threads(0, "process") == max(1, cpus - 1)
    assert npc_engine_threads(0, "inprocess") == 0
    assert npc_engine_threads(3, "process") == npc_engine_threads(3, "inprocess") == 3
    assert Settings().npc_threads == 0


def test_unreadable_world_file_is_one_error_line_and_exit_1(tmp_path):
    """A shard that cannot start says why in one log line, without a traceback, and exits 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDSMITH_")}
    run = subprocess.run([sys.executable, "-m", "server", "--port", "0", "--world", str(tmp_path / "missing.toml"),
                          "--db", f"sqlite:///{tmp_path / 'x.db'}"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=env | {"WORLDSMITH_NPC_MODEL": "none"})
    assert run.returncode == 1
    assert "cannot run the shard" in run.stderr and "missing.toml" in run.stderr
    assert "Traceback" not in run.stderr
