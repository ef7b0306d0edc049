"""NPC workers over MQTT: real mosquitto, real `python -m npc.worker --mqtt` processes (tiny model)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import orjson
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

from npc.engine.engine import Engine, EngineSettings
from npc.engine.errors import Busy
from npc.engine.sequence import SamplingParams
from npc.engine.tiny import tiny_model, tiny_tokenizer
from npc.remote import RemoteEngine, RemoteSettings, WorkerLoad, remote_engine
from npc.remote.wire import NpcTopics
from tests.broker import Broker

ROOT = Path(__file__).resolve().parents[2]
CHAT = [{"role": "system", "content": "You are the smith."}, {"role": "user", "content": "Any news?"}]
GREEDY = SamplingParams(temperature=0, max_tokens=40)
LONG = SamplingParams(temperature=0, max_tokens=900, ignore_eos=True)  # ~1-2 s on the tiny model
CAPACITY = 4 + 4  # --max-running 4 --max-waiting 4 per worker
TOPICS = NpcTopics("worldsmith")

pytestmark = pytest.mark.timeout(60)


class WorkerPool:
    """Worker processes by name; `ensure(n)` keeps n of them running (started in parallel)."""

    def __init__(self, broker: Broker, logdir: Path) -> None:
        self.broker = broker
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}
        self._made = 0

    def ensure(self, count: int) -> list[str]:
        """Start workers until `count` are alive; returns the names of the live ones."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                del self.procs[name]
        while len(self.procs) < count:
            self._made += 1
            name = f"w{self._made}"
            log = open(self.logdir / f"{name}.log", "wb")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "npc.worker", "--mqtt", self.broker.url, "--model", "tiny",
                 "--worker-id", name, "--threads", "1", "--kv-budget-mb", "8", "--max-model-len", "1024",
                 "--max-running", "4", "--max-waiting", "4", "--load-every-s", "0.2"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            log.close()
        return sorted(self.procs)

    def kill(self, name: str) -> None:
        """SIGKILL one worker: no clean leave, the broker's last will tells the shards."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One mosquitto for the module's tests."""
    with Broker(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture(scope="module")
def pool(broker, tmp_path_factory):
    """Two tiny-model workers, shared by the module's tests (a test that kills one gets a fresh one next)."""
    p = WorkerPool(broker, tmp_path_factory.mktemp("workers"))
    p.ensure(2)
    yield p
    p.close()


@pytest.fixture
async def remote(broker, pool):
    """A shard-side RemoteEngine that has heard from both workers."""
    names = pool.ensure(2)
    engine = remote_engine(broker.url, model="tiny", shard="test")
    engine.start()
    await engine.wait_for_reports(lambda w: set(names) <= set(w), timeout=40)
    yield engine
    await engine.aclose()


@pytest.fixture(scope="module")
def reference():
    """Greedy answers of the same tiny model in process: {prompt text: (pieces, result)}."""
    async def run() -> dict:
        out = {}
        async with Engine(tiny_model(), tiny_tokenizer(), EngineSettings(threads=1, kv_budget_mb=8)) as engine:
            for text in ("Any news?", "Where is the well?"):
                stream = engine.submit(chat(text), GREEDY)
                pieces = [p async for p in stream]
                out[text] = (pieces, await stream.result())
        return out
    return asyncio.run(run())


def chat(text: str) -> list[dict]:
    return [CHAT[0], {"role": "user", "content": text}]


async def collect(stream) -> tuple[list[str], object]:
    pieces = [p async for p in stream]
    return pieces, await stream.result()


async def test_remote_answer_streams_the_same_pieces_as_in_process(remote, reference) -> None:
    """A greedy answer through a worker arrives as exactly the in-process engine's pieces and result."""
    for text, (pieces, result) in reference.items():
        got, res = await asyncio.wait_for(collect(remote.submit(chat(text), GREEDY)), 10)
        assert got == pieces
        assert (res.text, res.finish_reason, res.completion_tokens) == (result.text, result.finish_reason,
                                                                       result.completion_tokens)
        assert res.timings.ttft_s is not None and res.prompt_tokens == result.prompt_tokens
    assert remote.in_flight == 0
    assert remote.metrics.snapshot()["finished_length"] == 2


async def test_cancel_reaches_the_worker_and_frees_its_slot(remote) -> None:
    """Cancelling a remote answer ends it `cancelled` early and the worker's in_flight drops back to 0."""
    stream = remote.submit(CHAT, LONG)
    first = await asyncio.wait_for(anext(aiter(stream)), 10)
    assert first
    worker = stream.worker
    await remote.wait_for_reports(lambda w: w[worker].in_flight >= 1, timeout=5)
    stream.cancel()
    result = await asyncio.wait_for(stream.result(), 5)
    assert result.finish_reason == "cancelled" and result.completion_tokens < LONG.max_tokens
    await remote.wait_for_reports(lambda w: w[worker].in_flight == 0, timeout=5)
    assert remote.in_flight == 0


async def test_two_workers_share_the_requests(remote) -> None:
    """Concurrent requests are spread over both workers by the shared subscription, and all complete."""
    streams = [remote.submit(chat(f"question {i}"), GREEDY) for i in range(6)]
    results = await asyncio.wait_for(asyncio.gather(*(s.result() for s in streams)), 20)
    assert {r.finish_reason for r in results} <= {"stop", "length"}
    assert {s.worker for s in streams} == set(remote.workers)
    assert len(remote.workers) == 2 and remote.max_model_len == 1024
    text = remote.metrics.prometheus()
    for name in remote.workers:
        assert f'npc_remote_worker_in_flight{{worker="{name}"}}' in text


async def test_duplicate_deliveries_show_each_piece_once(broker, remote, reference) -> None:
    """Every request and every reply batch delivered twice still streams the in-process pieces, once each."""
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as spy:
        no_local = SubscribeOptions(qos=1, noLocal=True)  # never hear our own copies again
        await spy.subscribe([(TOPICS.requests, no_local), (remote.reply_topic, no_local)])

        async def duplicate() -> None:
            async for msg in spy.messages:
                await spy.publish(msg.topic.value, msg.payload, qos=1)

        task = asyncio.create_task(duplicate())
        try:
            for text, (pieces, result) in reference.items():
                got, res = await asyncio.wait_for(collect(remote.submit(chat(text), GREEDY)), 10)
                assert got == pieces and res.text == result.text
        finally:
            task.cancel()
    assert remote.metrics.duplicates > 0
    assert remote.metrics.snapshot()["finished_length"] == 2


async def test_saturation_is_busy_at_once(remote) -> None:
    """Past the workers' reported capacity submit raises Busy at once; a prompt a worker refuses ends `busy`."""
    streams = [remote.submit(CHAT, LONG) for _ in range(2 * CAPACITY)]
    with pytest.raises(Busy):
        remote.submit(CHAT, LONG)
    for s in streams:
        s.cancel()
    await asyncio.wait_for(asyncio.gather(*(s.result() for s in streams)), 10)
    too_long = remote.submit(prompt_ids=[65] * 1100, params=GREEDY)
    result = await asyncio.wait_for(too_long.result(), 5)
    assert result.finish_reason == "busy" and "too_long" in result.detail


async def test_no_worker_means_busy(broker) -> None:
    """A shard that hears of no worker refuses with Busy at once instead of queueing into the void."""
    engine = RemoteEngine(RemoteSettings(broker.url, world_prefix="empty-world"), tokenizer=tiny_tokenizer())
    engine.start()
    try:
        await asyncio.wait_for(engine.link.connected.wait(), 10)
        with pytest.raises(Busy):
            engine.submit(CHAT, GREEDY)
    finally:
        await engine.aclose()


async def test_unbegun_request_of_a_departed_worker_goes_to_another(broker, remote, reference) -> None:
    """A request a worker accepted but never began is offered again when that worker leaves, and completes."""
    name = "silent"
    # The workers are shared with earlier tests (the saturation test's cancelled answers may
    # still hold their slots): start from idle ones, or the offer made again may meet `busy`.
    await remote.wait_for_reports(lambda w: all(load.in_flight == 0 for load in w.values()), timeout=10)
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5,
                              identifier="silent-worker") as silent:
        load = WorkerLoad(name, 0, 0, 0, CAPACITY, 0.0, 0, "tiny", "serving", 0)
        await silent.publish(TOPICS.load(name), load.to_payload(), qos=1, retain=True)
        await silent.subscribe(TOPICS.shared_requests, qos=1)
        await remote.wait_for_reports(lambda w: name in w, timeout=5)
        text = "Any news?"
        # Round robin over three workers: within a few requests one lands on the silent one.
        streams = [remote.submit(chat(text), GREEDY) for _ in range(3)]
        async for msg in silent.messages:
            rid = orjson.loads(msg.payload)["id"]
            reply = {"w": name, "m": [{"t": "accepted", "id": rid}]}
            await silent.publish(remote.reply_topic, orjson.dumps(reply), qos=1)
            break
        taken = next(s for s in streams if s.id == rid)
        await remote.wait_for_reports(lambda w: taken.worker == name, timeout=5)
        # It leaves as a departing worker does: off the shared subscription (so the offer
        # made again can only reach the workers still there), then its empty report.
        await silent.unsubscribe(TOPICS.shared_requests)
        await silent.publish(TOPICS.load(name), b"", qos=1, retain=True)  # it leaves
        pieces, result = await asyncio.wait_for(collect(taken), 10)
    assert taken.worker != name and taken.attempts == 2
    assert pieces == reference[text][0] and result.finish_reason == "length"
    await asyncio.wait_for(asyncio.gather(*(s.result() for s in streams)), 10)
    assert remote.metrics.reoffered >= 1


async def test_players_see_the_same_npc_frames_either_way(tmp_path, remote) -> None:
    """A player's line to an NPC yields the same npc_token pieces and npc_end through a remote worker
    as through the in-process engine (NpcService unchanged, RemoteEngine in place of Engine)."""
    from npc.service import NpcService, NpcSettings
    from server.app import run_shard
    from tests.server.conftest import shard_settings
    from tests.server.wire import join, write_world

    guard = {"id": "guard", "name": "Guard", "x": 2.0, "y": 0.0, "z": 0.0,
             "persona": "A quiet test guard.", "reply_tokens": 32}
    world = write_world(tmp_path / "w.toml", npcs=(guard,))
    seen = []
    for engine in (None, remote):
        service = NpcService(NpcSettings(model="tiny", soft_stop=1.0, context_tokens=1024), engine=engine)
        run = tmp_path / ("remote" if engine else "local")
        run.mkdir()
        async with run_shard(shard_settings(run, world=world), npcs=service) as shard:
            await asyncio.wait_for(service.ready.wait(), 20)
            ada = await join(shard.ws_url, "Ada")
            await ada.send({"t": "chat", "text": "hello guard", "to": "n:guard"})
            frames = []
            while not frames or frames[-1]["t"] != "npc_end":
                frames.append(await ada.recv_until(lambda m: m["t"].startswith("npc_"), 10))
            await ada.close()
        seen.append([{k: v for k, v in f.items() if k not in ("reply", "to")} for f in frames])
    local, through_worker = seen
    assert local[0]["t"] == "npc_start" and local[-1]["reason"] in ("stop", "length")
    assert through_worker == local


async def test_a_dead_shards_answers_are_dropped_by_the_workers(broker, remote) -> None:
    """A shard whose connection dies without a goodbye leaves a last will that makes the workers
    cancel its answers, long before they would have finished."""
    await remote.wait_for_reports(lambda w: all(x.in_flight == 0 for x in w.values()), timeout=10)
    before = sum(w.completion_tokens for w in remote.workers.values())
    doomed = RemoteEngine(RemoteSettings(broker.url, shard="doomed"), tokenizer=tiny_tokenizer())
    doomed.start()
    try:
        await doomed.wait_for_workers(2, timeout=10)
        stream = doomed.submit(CHAT, LONG)
        await asyncio.wait_for(anext(aiter(stream)), 10)
        worker = stream.worker
        await remote.wait_for_reports(lambda w: w[worker].in_flight >= 1, timeout=5)
        doomed.link.client._client.socket().shutdown(socket.SHUT_RDWR)  # the network fails: no DISCONNECT
        result = await asyncio.wait_for(stream.result(), 10)
        assert result.finish_reason == "error"  # its own side ends the answer at once too
        await remote.wait_for_reports(lambda w: w[worker].in_flight == 0, timeout=10)
    finally:
        await doomed.aclose()
    made = sum(w.completion_tokens for w in remote.workers.values()) - before
    assert 0 < made < LONG.max_tokens


async def test_killed_worker_ends_its_answer_with_error_and_the_other_serves(remote, pool) -> None:
    """kill -9 of a worker mid-answer ends that answer `error` within 5 s; the next request gets its
    first piece from the surviving worker within 1 s."""
    stream = remote.submit(CHAT, LONG)
    await asyncio.wait_for(anext(aiter(stream)), 10)
    victim = stream.worker
    killed = time.monotonic()
    pool.kill(victim)
    result = await asyncio.wait_for(stream.result(), 5)
    assert result.finish_reason == "error"
    assert time.monotonic() - killed < 5.0
    await remote.wait_for_reports(lambda w: victim not in w, timeout=5)

    sent = time.monotonic()
    nxt = remote.submit(CHAT, GREEDY)
    await asyncio.wait_for(anext(aiter(nxt)), 1.0)
    assert time.monotonic() - sent < 1.0
    assert nxt.worker != victim
    assert (await asyncio.wait_for(nxt.result(), 10)).finish_reason == "length"


async def test_workers_and_shard_resume_after_a_broker_restart(broker, pool) -> None:
    """After the broker restarts (losing its retained reports), the worker reconnects and reports
    again, the shard sees it, and answers flow as before."""
    names = pool.ensure(1)
    engine = RemoteEngine(RemoteSettings(broker.url, shard="restart"), tokenizer=tiny_tokenizer())
    engine.start()
    try:
        await engine.wait_for_reports(lambda w: set(names) <= set(w), timeout=40)
        broker.restart()
        await engine.wait_for_reports(lambda w: not w, timeout=10)  # the shard saw the link fall
        await engine.wait_for_reports(lambda w: set(names) <= set(w), timeout=20)
        pieces, result = await asyncio.wait_for(collect(engine.submit(CHAT, GREEDY)), 10)
        assert pieces and result.finish_reason == "length" and result.text == "".join(pieces)
    finally:
        await engine.aclose()


async def test_shard_settings_choose_remote_workers_and_metrics_show_them(tmp_path, broker, pool) -> None:
    """`--npc-workers remote --mqtt URL` makes the shard's NPCs answer on the workers, and the
    shard's /metrics carries the remote-worker figures."""
    import urllib.request

    from server.app import run_shard
    from tests.server.conftest import shard_settings
    from tests.server.wire import join, write_world

    names = pool.ensure(2)
    guard = {"id": "guard", "name": "Guard", "x": 2.0, "y": 0.0, "z": 0.0,
             "persona": "A quiet test guard.", "reply_tokens": 32}
    world = write_world(tmp_path / "w.toml", npcs=(guard,))
    settings = shard_settings(tmp_path, world=world, mqtt=broker.url, npc_workers="remote",
                              npc_model="tiny", npc_context_tokens=1024)
    async with run_shard(settings) as shard:
        engine = shard.npcs.engine
        assert isinstance(engine, RemoteEngine)
        await engine.wait_for_reports(lambda w: set(names) <= set(w), timeout=40)
        ada = await join(shard.ws_url, "Ada")
        await ada.send({"t": "chat", "text": "hello guard", "to": "n:guard"})
        end = await ada.recv_type("npc_end", timeout=20)
        assert end["reason"] in ("stop", "length") and end["tokens"] > 0
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(shard.http_url + "metrics", timeout=10).read())
        assert b"npc_remote" in body
        await ada.close()
