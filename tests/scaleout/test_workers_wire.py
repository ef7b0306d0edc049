"""NPC-over-MQTT pieces that need no broker: settings, topics, payloads, and the worker's batching."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from npc.engine.engine import Engine, EngineSettings
from npc.engine.tiny import tiny_model, tiny_tokenizer
from npc.remote.wire import (NpcTopics, RecentIds, RemoteSettings, WorkerLinkSettings, WorkerLoad,
                             parse_reply_batch, reply_batch)
from npc.remote.worker import MqttWorker

URL = "mqtt://127.0.0.1:1"  # never connected to in this module


@pytest.mark.parametrize("kw", [
    dict(url="http://x"), dict(url=URL, world_prefix="a/#"), dict(url=URL, shard="a/b"),
    dict(url=URL, worker_lost_s=0), dict(url=URL, accept_timeout_s=-1), dict(url=URL, max_attempts=0),
])
def test_remote_settings_reject_bad_values(kw) -> None:
    """Each bad shard-side setting is refused with ValueError when the settings are made."""
    with pytest.raises(ValueError):
        RemoteSettings(**kw)


@pytest.mark.parametrize("kw", [
    dict(url="mqtt://"), dict(url=URL, worker_id="a b"), dict(url=URL, coalesce_ms=-1),
    dict(url=URL, load_every_s=0), dict(url=URL, drain_s=-1),
])
def test_worker_settings_reject_bad_values(kw) -> None:
    """Each bad worker-side setting is refused with ValueError when the settings are made."""
    with pytest.raises(ValueError):
        WorkerLinkSettings(**kw)


def test_topics_live_under_the_world_prefix() -> None:
    """Every NPC topic starts with the prefix; workers share requests; reply topics are recognised strictly."""
    t = NpcTopics("town")
    assert t.requests == "town/npc/requests" and t.shared_requests == "$share/npc-workers/town/npc/requests"
    assert t.reply("s1") == "town/npc/reply/s1" and t.is_reply("town/npc/reply/s1")
    assert not t.is_reply("town/npc/reply/s1/x") and not t.is_reply("other/npc/reply/s1")
    assert t.cancel("w1") == "town/npc/cancel/w1" and t.load("w1") == "town/npc/workers/w1"
    assert t.worker_of("town/npc/workers/w1") == "w1" and t.worker_of("town/npc/reply/w1") is None
    assert t.gone("s1.ab") == "town/npc/gone/s1.ab" and t.instance_of("town/npc/gone/s1.ab") == "s1.ab"
    assert t.instance_of("town/npc/workers/w1") is None


def test_load_report_and_reply_batch_round_trip() -> None:
    """A load report and a reply batch parse back unchanged; malformed ones raise ValueError."""
    load = WorkerLoad("w1", 2, 1, 3, 16, 120.5, 999, "tiny", "serving", 123, 1024)
    assert WorkerLoad.from_payload("w1", load.to_payload()) == load
    with pytest.raises(ValueError):
        WorkerLoad.from_payload("w1", b'{"running": 1}')
    assert parse_reply_batch(reply_batch("w1", [{"t": "accepted", "id": "r"}])) == ("w1", [{"t": "accepted", "id": "r"}])
    for bad in (b"nope", b"[]", b'{"w": 1, "m": []}'):
        with pytest.raises(ValueError):
            parse_reply_batch(bad)


def test_recent_ids_forget_the_oldest_past_the_limit() -> None:
    """The dedupe memory is bounded: past its limit the oldest id is forgotten first."""
    ids = RecentIds(limit=2)
    for rid in ("a", "b", "a", "c"):
        ids.add(rid)
    assert "a" not in ids and "b" in ids and "c" in ids


@pytest.fixture
async def worker():
    """An MqttWorker over a real tiny engine, never connected: its outbox shows what it would publish.

    The coalescing window is the longest allowed (1 s), so how pieces group into batches barely
    depends on how fast a loaded machine runs the tiny engine."""
    engine = Engine(tiny_model(), tiny_tokenizer(), EngineSettings(threads=1, kv_budget_mb=4, max_running=2,
                                                                   max_waiting=1))
    w = MqttWorker(engine, WorkerLinkSettings(URL, worker_id="w1", coalesce_ms=1000))
    yield w
    await w.worker.aclose()


def request(rid: str, max_tokens: int = 40) -> bytes:
    return orjson.dumps({"t": "generate", "id": rid, "reply": "worldsmith/npc/reply/s1",
                         "messages": [{"role": "user", "content": "hi"}],
                         "sampling": {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True}})


async def replies_until_done(w: MqttWorker, rid: str) -> list[list[dict]]:
    """The batches the worker queued, up to the one holding `rid`'s final message."""
    batches = []
    while True:
        item = await asyncio.wait_for(w.link.outbox.get(), 10)
        if item.topic != "worldsmith/npc/reply/s1":
            continue
        worker, msgs = parse_reply_batch(item.payload)
        assert worker == "w1"
        batches.append(msgs)
        if any(m["t"] in ("done", "rejected") and m["id"] == rid for m in msgs):
            return batches


async def test_worker_coalesces_pieces_and_ignores_a_duplicate_request(worker) -> None:
    """An answer's pieces share broker messages (far fewer messages than pieces), all in order, and
    the same request delivered twice is served once."""
    await worker._on_request(request("r1"))
    await worker._on_request(request("r1"))
    batches = await replies_until_done(worker, "r1")
    msgs = [m for b in batches for m in b]
    pieces = [m for m in msgs if m["t"] == "piece"]
    assert [m["t"] for m in msgs].count("accepted") == 1 and msgs[-1]["t"] == "done"
    assert [p["n"] for p in pieces] == list(range(len(pieces))) and len(pieces) >= 20
    # accepted and the first piece go at once; later pieces wait up to 1 s or for `done`, which flushes.
    assert len(batches) <= len(pieces) // 2
    assert worker.duplicates == 1


async def test_cancel_that_overtakes_its_request_ends_it_cancelled(worker) -> None:
    """A cancel that arrives before its request makes the worker answer that request `cancelled` unserved."""
    await worker._on_cancel(orjson.dumps({"t": "cancel", "id": "r2"}))
    await worker._on_request(request("r2"))
    [[done]] = await replies_until_done(worker, "r2")
    assert done["t"] == "done" and done["finish_reason"] == "cancelled"
    assert worker.engine.in_flight == 0


async def test_worker_refuses_requests_without_a_valid_reply_topic(worker) -> None:
    """A request naming no reply topic, or one outside the world's reply topics, is dropped unserved."""
    await worker._on_request(orjson.dumps({"t": "generate", "id": "r3", "prompt_ids": [1]}))
    await worker._on_request(orjson.dumps({"t": "generate", "id": "r4", "prompt_ids": [1], "reply": "x/#"}))
    assert worker.engine.in_flight == 0 and len(worker.link.outbox) == 0
