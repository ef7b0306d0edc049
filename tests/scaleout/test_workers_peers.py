"""RemoteEngine's time bounds against a scripted worker peer on a real mosquitto (no engine needed)."""
from __future__ import annotations

import asyncio
import contextlib
import time

import aiomqtt
import orjson
import pytest

from npc.engine.errors import Busy
from npc.engine.sequence import SamplingParams
from npc.engine.tiny import tiny_tokenizer
from npc.remote import RemoteEngine, RemoteSettings, WorkerLoad
from npc.remote.wire import NpcTopics

PREFIX = "peers"
TOPICS = NpcTopics(PREFIX)
CHAT = [{"role": "user", "content": "hi"}]
FAST = dict(world_prefix=PREFIX, worker_lost_s=0.5, accept_timeout_s=0.4, max_attempts=2, check_every_s=0.05)

pytestmark = pytest.mark.timeout(30)


class Peer:
    """A worker played by the test: it reports load when told to and answers only as scripted."""

    def __init__(self, client: aiomqtt.Client, name: str = "peer") -> None:
        self.client = client
        self.name = name
        self.requests: asyncio.Queue[dict] = asyncio.Queue()

    async def report(self) -> None:
        load = WorkerLoad(self.name, 0, 0, 0, 8, 0.0, 0, "tiny", "serving", 0)
        await self.client.publish(TOPICS.load(self.name), load.to_payload(), qos=1, retain=True)

    async def reply(self, reply_topic: str, *messages: dict) -> None:
        await self.client.publish(reply_topic, orjson.dumps({"w": self.name, "m": list(messages)}), qos=1)

    async def read(self) -> None:
        async for msg in self.client.messages:
            self.requests.put_nowait(orjson.loads(msg.payload))


@contextlib.asynccontextmanager
async def peer_and_engine(url: str, port: int):
    """A subscribed peer that has reported once, and a RemoteEngine (short bounds) that has heard it."""
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        peer = Peer(client)
        await client.subscribe(TOPICS.shared_requests, qos=1)
        reader = asyncio.create_task(peer.read())
        await peer.report()
        engine = RemoteEngine(RemoteSettings(url, **FAST), tokenizer=tiny_tokenizer())
        engine.start()
        try:
            await engine.wait_for_workers(1, timeout=10)
            yield peer, engine
        finally:
            reader.cancel()
            await engine.aclose()


async def test_silent_worker_ends_begun_answer_with_error_within_bound(mosquitto) -> None:
    """A worker whose reports stop is declared lost after worker_lost_s: its begun answer ends `error`
    within that bound, and with no worker left submit raises Busy."""
    async with peer_and_engine(mosquitto.url, mosquitto.port) as (peer, engine):
        stream = engine.submit(CHAT, SamplingParams(max_tokens=10))
        req = await asyncio.wait_for(peer.requests.get(), 5)
        assert req["id"] == stream.id and req["reply"] == engine.reply_topic and req["deadline"] is None
        await peer.reply(req["reply"], {"t": "accepted", "id": req["id"]},
                         {"t": "piece", "id": req["id"], "n": 0, "text": "Hel"})
        assert await asyncio.wait_for(anext(aiter(stream)), 5) == "Hel"
        went_quiet = time.monotonic()  # the peer's last report was before the request
        result = await asyncio.wait_for(stream.result(), 5)
        assert result.finish_reason == "error" and result.text == "Hel"
        assert time.monotonic() - went_quiet < FAST["worker_lost_s"] + 1.0
        with pytest.raises(Busy):
            engine.submit(CHAT, SamplingParams())


async def test_unaccepted_request_is_offered_again_then_ends(mosquitto) -> None:
    """A request nobody accepts is offered again after accept_timeout_s, and ends `error` after max_attempts."""
    async with peer_and_engine(mosquitto.url, mosquitto.port) as (peer, engine):
        beat = asyncio.create_task(_keep_reporting(peer))
        try:
            stream = engine.submit(CHAT, SamplingParams(max_tokens=10), timeout=30)
            first = await asyncio.wait_for(peer.requests.get(), 5)
            again = await asyncio.wait_for(peer.requests.get(), 5)
            assert first == again and first["id"] == stream.id
            assert first["deadline"] == pytest.approx(time.time() + 30, abs=5)
            result = await asyncio.wait_for(stream.result(), 5)
        finally:
            beat.cancel()
    assert result.finish_reason == "error" and "not offered again" in result.detail
    assert stream.attempts == FAST["max_attempts"] and engine.metrics.reoffered == 1


async def test_pieces_out_of_order_and_missing_are_repaired(mosquitto) -> None:
    """Pieces arriving out of order are streamed in order, duplicates once, and a piece that never
    arrives is filled in from the final text, so the stream always equals the result."""
    async with peer_and_engine(mosquitto.url, mosquitto.port) as (peer, engine):
        stream = engine.submit(CHAT, SamplingParams(max_tokens=10))
        req = await asyncio.wait_for(peer.requests.get(), 5)
        rid, topic = req["id"], req["reply"]
        await peer.reply(topic, {"t": "accepted", "id": rid}, {"t": "piece", "id": rid, "n": 1, "text": "b"},
                         {"t": "piece", "id": rid, "n": 0, "text": "a"}, {"t": "piece", "id": rid, "n": 0, "text": "a"},
                         {"t": "piece", "id": rid, "n": 3, "text": "d"})
        done = {"t": "done", "id": rid, "text": "abcd", "finish_reason": "length", "prompt_tokens": 3,
                "completion_tokens": 4, "ttft_s": 0.01, "total_s": 0.02, "detail": None}
        await peer.reply(topic, done, done)
        pieces = [p async for p in stream]
        result = await stream.result()
    assert pieces == ["a", "b", "cd"]  # "c" never came: the rest of the final text stands in
    assert result.text == "abcd" and result.finish_reason == "length" and result.completion_tokens == 4
    assert engine.metrics.duplicates >= 1


async def test_cancel_before_accept_ends_at_once_and_stops_a_late_worker(mosquitto) -> None:
    """Cancelling a request no worker has accepted ends it `cancelled` at once; a worker that accepts
    it afterwards is told to cancel."""
    async with peer_and_engine(mosquitto.url, mosquitto.port) as (peer, engine):
        await peer.client.subscribe(TOPICS.cancel(peer.name), qos=1)
        stream = engine.submit(CHAT, SamplingParams(max_tokens=10))
        stream.cancel()
        result = await asyncio.wait_for(stream.result(), 1)
        assert result.finish_reason == "cancelled"
        req = await asyncio.wait_for(peer.requests.get(), 5)
        await peer.reply(req["reply"], {"t": "accepted", "id": req["id"]})
        cancel = await asyncio.wait_for(peer.requests.get(), 5)
    assert cancel == {"t": "cancel", "id": req["id"]}
    assert engine.in_flight == 0


async def _keep_reporting(peer: Peer) -> None:
    while True:
        await peer.report()
        await asyncio.sleep(0.1)  # the peer's heartbeat period, not synchronisation
