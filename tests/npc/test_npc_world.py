"""NPCs in the world, end to end over real WebSocket, with the tiny random-weight model.

The tiny model's words are gibberish; these tests prove the mechanics: routing, streaming
order, everyone-who-hears, busy, cancel (by message, by walking away, by leaving), and one
answer in flight per player.
"""
from __future__ import annotations

import contextlib

import pytest

from npc.service import NpcService, NpcSettings
from server.app import run_shard
from tests.server.conftest import shard_settings
from tests.server.wire import close_all, join, unique_name, walk_to, write_world

GUARD = {"id": "guard", "name": "Guard", "x": 2.0, "y": 0.0, "z": 0.0,
         "persona": "A quiet test guard.", "reply_tokens": 48}
LONG = dict(GUARD, id="sage", name="Sage", x=-2.0, reply_tokens=400)


@contextlib.asynccontextmanager
async def npc_shard(tmp_path, **npc):
    """A shard on a small test world with two NPCs next to the spawn, answering with the tiny model."""
    world = write_world(tmp_path / "w.toml", npcs=(GUARD, LONG))
    opts = dict(model="tiny", soft_stop=1.0, context_tokens=1024)
    opts.update(npc)
    service = NpcService(NpcSettings(**opts))
    async with run_shard(shard_settings(tmp_path, world=world), npcs=service) as shard:
        await service.ready.wait()
        yield shard, service


async def collect_answer(w, reply: str) -> tuple[list[str], dict]:
    """Every npc_token piece of `reply`, in order, and its npc_end (including ones already seen)."""
    pieces = []
    for m in w.seen:
        if m.get("reply") == reply and m["t"] == "npc_token":
            pieces.append(m["text"])
        elif m.get("reply") == reply and m["t"] == "npc_end":
            return pieces, m
    while True:
        m = await w.recv_until(lambda m: m.get("reply") == reply and m["t"] in ("npc_token", "npc_end"), 10)
        if m["t"] == "npc_end":
            return pieces, m
        pieces.append(m["text"])


async def test_answer_streams_to_speaker_and_bystander_not_to_the_far(tmp_path):
    """A line to an NPC streams npc_start/npc_token.../npc_end to all who heard it, in order."""
    async with npc_shard(tmp_path) as (shard, _):
        alice, bob, carol = await join(shard.ws_url), await join(shard.ws_url), await join(shard.ws_url)
        await walk_to(carol, 60.0, 60.0)  # beyond hearing range (aoi 20 m)
        await alice.send({"t": "chat", "text": "hello guard", "to": "n:guard", "id": 7})
        start = await alice.recv_type("npc_start")
        assert start["npc"] == "n:guard" and start["name"] == "Guard" and start["re"] == 7
        assert start["to"] == alice.you and start["reply"].startswith("r:")
        bob_start = await bob.recv_type("npc_start")
        assert "re" not in bob_start and bob_start["reply"] == start["reply"]
        a_pieces, a_end = await collect_answer(alice, start["reply"])
        b_pieces, b_end = await collect_answer(bob, start["reply"])
        assert a_pieces and a_pieces == b_pieces
        assert a_end["text"] == "".join(a_pieces) == b_end["text"]
        assert a_end["reason"] in ("stop", "length") and a_end["tokens"] >= 1
        await carol.barrier()
        assert not [m for m in carol.seen if m["t"].startswith("npc_")]
        await close_all(alice, bob, carol)


async def test_npc_turns_to_face_the_speaker(tmp_path):
    """The NPC's yaw changes toward whoever speaks to it, and observers see it in upd."""
    async with npc_shard(tmp_path) as (shard, _):
        alice = await join(shard.ws_url)
        await walk_to(alice, 2.0, 3.0)  # south of the guard (+z)
        await alice.send({"t": "chat", "text": "hi", "to": "n:guard"})
        row = await alice.pose_of("n:guard")
        assert abs(abs(row[4]) - 3.14159) < 0.01  # facing +z is yaw pi
        await close_all(alice)


async def test_one_answer_in_flight_per_player_and_cancel_frees_it(tmp_path):
    """A second line during an answer is rate_limited and unheard; npc_cancel ends it and frees the slot."""
    async with npc_shard(tmp_path) as (shard, service):
        alice, bob = await join(shard.ws_url), await join(shard.ws_url)
        await alice.send({"t": "chat", "text": "tell me everything", "to": "n:sage"})
        start = await alice.recv_type("npc_start")
        await alice.send({"t": "chat", "text": "again", "to": "n:sage", "id": "x"})
        err = await alice.error()
        assert err["code"] == "rate_limited" and err["re"] == "x"
        await alice.send({"t": "npc_cancel", "reply": start["reply"]})
        _, end = await collect_answer(alice, start["reply"])
        assert end["reason"] == "cancelled"
        await bob.barrier()
        assert not [m for m in bob.seen if m["t"] == "chat" and m.get("text") == "again"]
        assert service.engine.in_flight == 0 or not service.in_flight(alice.you)
        await alice.send({"t": "chat", "text": "hi", "to": "n:guard"})
        assert (await alice.recv_type("npc_start"))["npc"] == "n:guard"
        await close_all(alice, bob)


async def test_walking_away_or_leaving_cancels_the_answer(tmp_path):
    """An answer stops (cancelled) when the speaker walks out of range or disconnects."""
    async with npc_shard(tmp_path) as (shard, service):
        alice, bob = await join(shard.ws_url), await join(shard.ws_url)
        await alice.send({"t": "chat", "text": "a long story please", "to": "n:sage"})
        start = await alice.recv_type("npc_start")
        await walk_to(alice, -2.0, 15.0)  # within hearing, beyond 2 x talk range
        _, end = await collect_answer(alice, start["reply"])
        assert end["reason"] == "cancelled"
        await walk_to(alice, -2.0, 1.0)
        await alice.send({"t": "chat", "text": "another story", "to": "n:sage"})
        first = start["reply"]
        start = await bob.recv_until(lambda m: m["t"] == "npc_start" and m["reply"] != first)
        await alice.close()
        _, end = await collect_answer(bob, start["reply"])
        assert end["reason"] == "cancelled"
        await close_all(bob)


async def test_saturated_service_answers_busy_at_once(tmp_path):
    """With no free capacity, a line gets npc_start then npc_end busy immediately, never silence."""
    async with npc_shard(tmp_path, max_running=1, max_waiting=0) as (shard, _):
        alice, bob = await join(shard.ws_url), await join(shard.ws_url)
        await alice.send({"t": "chat", "text": "a long story please", "to": "n:sage"})
        first = await alice.recv_type("npc_start")
        await bob.send({"t": "chat", "text": "me too", "to": "n:guard", "id": 1})
        start = await bob.recv_type("npc_start", re=1)
        end = await bob.recv_type("npc_end", reply=start["reply"])
        assert end["reason"] == "busy" and end["tokens"] == 0 and end["text"] == ""
        assert not [m for m in bob.seen if m.get("t") == "npc_end" and m["reply"] == first["reply"]]
        await close_all(alice, bob)


@pytest.mark.parametrize("n", [3])
async def test_every_start_ends_exactly_once(tmp_path, n):
    """Several players talking at once each get exactly one npc_end per npc_start."""
    async with npc_shard(tmp_path) as (shard, _):
        wires = [await join(shard.ws_url) for _ in range(n)]
        for w in wires:
            await w.send({"t": "chat", "text": "hello", "to": "n:guard"})
        for w in wires:
            start = await w.recv_until(lambda m: m["t"] == "npc_start" and m["to"] == w.you)
            await collect_answer(w, start["reply"])
        await wires[0].barrier()
        starts = [m["reply"] for m in wires[0].seen if m["t"] == "npc_start"]
        ends = [m["reply"] for m in wires[0].seen if m["t"] == "npc_end"]
        assert sorted(starts) == sorted(set(starts)) and len(starts) == n
        assert sorted(ends) == sorted(starts)
        await close_all(*wires)


async def test_metrics_carry_the_engine_figures(tmp_path):
    """The shard's /metrics includes the in-process engine's queue, batch, KV and latency figures."""
    import asyncio
    import urllib.request

    async with npc_shard(tmp_path) as (shard, _):
        alice = await join(shard.ws_url)
        await alice.send({"t": "chat", "text": "hello guard", "to": "n:guard"})
        await alice.recv_type("npc_end", timeout=20)
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(shard.http_url + "metrics", timeout=10).read())
        text = body.decode()
        assert "worldsmith_" in text
        assert "npc_engine" in text and "ttft" in text
        await close_all(alice)


async def test_first_line_to_an_npc_finds_its_fixed_prompt_cached(tmp_path):
    """Once ready, every NPC's fixed prompt part has been computed: the very first line to an
    NPC reuses it from the prefix cache instead of computing persona, lore and facts."""
    async with npc_shard(tmp_path) as (shard, service):
        assert service.warmed is not None
        counters = service.engine.metrics.counters
        fixed = len(service.engine.tokenizer.render_chat(service.minds["n:guard"].fixed))
        before = counters["cached_prompt_tokens"]
        alice = await join(shard.ws_url)
        await alice.send({"t": "chat", "text": "hello guard", "to": "n:guard"})
        await alice.recv_type("npc_end", timeout=20)
        block = service.engine.settings.block_size
        assert counters["cached_prompt_tokens"] - before >= (fixed // block - 1) * block > 0
        await close_all(alice)


async def test_a_returning_players_next_line_reuses_their_last_prompt(tmp_path):
    """The situation and the remembered turns come before the new line, and read the same
    from one line to the next: the third line finds the second one's prompt (situation,
    first turn, second line) in the prefix cache, beyond the fixed part that every line finds."""
    async with npc_shard(tmp_path) as (shard, service):
        counters = service.engine.metrics.counters
        name = unique_name("Alice")
        alice = await join(shard.ws_url, name)
        cached = []
        for text in ("hello guard", "what do you guard?", "and at night?"):
            before = counters["cached_prompt_tokens"]
            await alice.send({"t": "chat", "text": text, "to": "n:guard"})
            await alice.recv_type("npc_end", timeout=20)
            cached.append(counters["cached_prompt_tokens"] - before)
        first_answer = service._memory[("n:guard", name.lower())].turns[0].answer
        assert cached[2] - cached[1] >= len(service.engine.tokenizer.encode(first_answer)) > 0
        await close_all(alice)


async def test_the_npc_names_only_players_it_has_met_among_those_near(tmp_path):
    """Near the NPC, a player it has talked with is named in every speaker's situation; one
    it has not met is not (names are learnt in conversation)."""
    from types import SimpleNamespace

    async with npc_shard(tmp_path) as (shard, service):
        a_name, b_name = unique_name("Alice"), unique_name("Bob")
        alice, bob = await join(shard.ws_url, a_name), await join(shard.ws_url, b_name)
        await alice.send({"t": "chat", "text": "hello guard", "to": "n:guard"})
        await alice.recv_type("npc_end", timeout=20)
        await bob.barrier()
        guard = service.minds["n:guard"].persona
        for speaker in (a_name, b_name):
            s = service._situation(guard, SimpleNamespace(speaker_name=speaker))
            assert s.nearby == (a_name,) and s.strangers == 1
        await close_all(alice, bob)
