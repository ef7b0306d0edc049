"""The shard's seams for other issues (NPC hook) and its last-resort error handling (1011)."""
from __future__ import annotations

import asyncio
import logging

from server.app import run_shard
from server.npcs import NpcHook, NpcLine
from tests.server.conftest import shard_settings
from tests.server.wire import close_all, join, walk_to, write_world


class EchoNpcs(NpcHook):
    """A stand-in NPC service: answers every line at once through the shard's fan-out."""

    def __init__(self) -> None:
        self.lines: list[NpcLine] = []
        self.left: list[str] = []
        self.started = asyncio.Event()
        self.closed = False

    async def start(self, shard) -> None:
        self.shard = shard
        self.started.set()

    async def close(self) -> None:
        self.closed = True

    def hear(self, line: NpcLine) -> None:
        self.lines.append(line)
        if line.text == "explode":
            raise RuntimeError("a bug in the NPC service")
        start = {"t": "npc_start", "reply": "r:1", "npc": line.npc, "name": line.npc_name, "to": line.speaker}
        others = [p for p in line.listeners if p != line.speaker]
        self.shard.send_to(others, start)
        self.shard.send_to([line.speaker], dict(start, re=line.re))
        end = {"t": "npc_end", "reply": "r:1", "text": "Hello!", "reason": "stop", "tokens": 2}
        self.shard.send_to(line.listeners, end)

    def player_left(self, pid: str) -> None:
        self.left.append(pid)


async def test_npc_hook_gets_lines_in_range_and_its_answers_reach_the_listeners(tmp_path):
    """A line to an NPC in talk range reaches the hook with who heard it; its answer fans out to them, `re` only to the speaker."""
    hook = EchoNpcs()
    settings = shard_settings(tmp_path, world=write_world(tmp_path / "w.toml"))
    async with run_shard(settings, npcs=hook) as shard:
        assert hook.started.is_set()
        speaker = await join(shard.ws_url)
        near = await join(shard.ws_url)
        await walk_to(speaker, 8.0, 0.0)  # the guard stands at (10, 0); talk range 4
        await speaker.send({"t": "chat", "text": "hi guard", "to": "n:guard", "id": "q1"})
        start = await speaker.recv_type("npc_start")
        assert start == {"t": "npc_start", "reply": "r:1", "npc": "n:guard", "name": "Guard",
                         "to": speaker.you, "re": "q1"}
        heard = await near.recv_type("npc_start")
        assert "re" not in heard
        assert (await near.recv_type("npc_end"))["text"] == "Hello!"
        [line] = hook.lines
        assert (line.speaker, line.npc, line.text, line.re) == (speaker.you, "n:guard", "hi guard", "q1")
        assert set(line.listeners) == {speaker.you, near.you}
        await close_all(near)
        await speaker.state_where(lambda m: near.you in m.get("leave", ()))
        assert hook.left == [near.you]
        await close_all(speaker)
    assert hook.closed


async def test_unexpected_error_closes_only_that_connection_1011_with_traceback(tmp_path, caplog):
    """An exception escaping a handler closes that one connection 1011, logs its traceback, and others play on."""
    hook = EchoNpcs()
    settings = shard_settings(tmp_path, world=write_world(tmp_path / "w.toml"))
    async with run_shard(settings, npcs=hook) as shard:
        victim = await join(shard.ws_url)
        other = await join(shard.ws_url)
        await walk_to(victim, 8.0, 0.0)
        with caplog.at_level(logging.ERROR, logger="worldsmith.connection"):
            await victim.send({"t": "chat", "text": "explode", "to": "n:guard"})
            assert (await victim.closed())[0] == 1011
        assert any(r.exc_info and "a bug in the NPC service" in str(r.exc_info[1]) for r in caplog.records)
        await other.send({"t": "ping", "ct": "ok"})
        assert (await other.recv_type("pong"))["ct"] == "ok"
        assert list(shard.sessions.online) == [other.you]
        await close_all(other)


async def test_an_npc_hook_may_set_a_talk_range_per_npc(tmp_path):
    """When the hook gives an NPC its own talking range, lines from beyond it are too_far and reach no one."""

    class ShortRange(EchoNpcs):
        def talk_range(self, npc_id: str) -> float | None:
            return 2.0 if npc_id == "n:guard" else None

    hook = ShortRange()
    settings = shard_settings(tmp_path, world=write_world(tmp_path / "w.toml"))  # world talk_range 4
    async with run_shard(settings, npcs=hook) as shard:
        p = await join(shard.ws_url)
        await walk_to(p, 7.0, 0.0)  # 3 m from the guard
        await p.send({"t": "chat", "text": "hello?", "to": "n:guard", "id": 1})
        err = await p.error()
        assert (err["code"], err["re"]) == ("too_far", 1) and hook.lines == []
        await walk_to(p, 8.5, 0.0)  # 1.5 m
        await p.send({"t": "chat", "text": "hello!", "to": "n:guard", "id": 2})
        await p.recv_type("npc_end")
        assert [line.text for line in hook.lines] == ["hello!"]
        await close_all(p)


async def test_database_gone_refuses_logins_with_busy_and_keeps_players(start_shard, caplog):
    """With the database unavailable a password hello gets `busy` then 1011, while players online keep playing."""
    from tests.server.wire import refused

    async with start_shard() as shard:
        online = await join(shard.ws_url)
        await shard.db.close()  # the real writer, closed: every store call now fails
        with caplog.at_level(logging.ERROR, logger="worldsmith.connection"):
            code, _, seen = await refused(shard.ws_url, {"t": "hello", "v": 1, "name": "late",
                                                         "password": "pw-late", "id": "h"})
        assert code == 1011 and seen[0]["code"] == "busy" and seen[0]["re"] == "h"
        await online.send({"t": "ping", "ct": 1})
        assert (await online.recv_type("pong"))["ct"] == 1
        await close_all(online)
