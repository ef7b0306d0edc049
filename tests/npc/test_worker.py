"""The queue interface and the worker: wire schema, in-process queue, and the stdio worker process."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
import pytest

from npc.engine.engine import Engine, EngineSettings
from npc.engine.errors import Busy
from npc.engine.sequence import SamplingParams
from npc.engine.tiny import tiny_model, tiny_tokenizer
from npc.queue import (Done, GenerateRequest, InProcessQueue, Piece, Sampling, WireError, parse)
from npc.worker import Worker

CHAT = (("system", "You are the smith."), ("user", "Any news?"))


def request(rid: str, max_tokens: int = 12, **kw: object) -> GenerateRequest:
    return GenerateRequest(rid, CHAT, sampling=Sampling(temperature=0, max_tokens=max_tokens, ignore_eos=True), **kw)


class Outbox:
    """Collects a worker's replies and lets a test wait for a given one."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self._changed = asyncio.Event()

    def send(self, obj: dict) -> None:
        orjson.dumps(obj)  # every reply must be JSON-ready
        self.messages.append(obj)
        self._changed.set()

    async def wait_for(self, t: str, rid: str) -> dict:
        async def find() -> dict:
            while True:
                for m in self.messages:
                    if m["t"] == t and m["id"] == rid:
                        return m
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(find(), 10)

    def of(self, rid: str, t: str) -> list[dict]:
        return [m for m in self.messages if m["id"] == rid and m["t"] == t]


@pytest.fixture
async def worker():
    engine = Engine(tiny_model(), tiny_tokenizer(),
                    EngineSettings(threads=1, kv_budget_mb=2, max_running=2, max_waiting=1, token_budget=64))
    out = Outbox()
    w = Worker(InProcessQueue(engine), out.send)
    w.outbox = out  # type: ignore[attr-defined]
    yield w
    await w.aclose()


def test_request_round_trips_over_the_wire() -> None:
    """A request, and each reply type, parse back from their wire dicts unchanged."""
    req = GenerateRequest("r1", CHAT, sampling=Sampling(temperature=0.5, stop=("\n",), allowed_token_ids=(1, 2)),
                          deadline=1234.5, priority="low")
    assert parse(orjson.loads(orjson.dumps(req.to_wire()))) == req
    done = Done("r1", "hi", "stop", 10, 2, 0.1, 0.3, None)
    assert parse(done.to_wire()) == done
    assert parse(Piece("r1", 3, "x").to_wire()) == Piece("r1", 3, "x")


@pytest.mark.parametrize("bad", [
    {"t": "generate", "id": "r", "messages": [], "sampling": {}},
    {"t": "generate", "id": "r", "messages": [{"role": "user", "content": "x"}], "sampling": {"top_p": 7}},
    {"t": "generate", "id": "r", "messages": [{"role": "user", "content": "x"}], "sampling": {"nope": 1}},
    {"t": "generate", "id": "r", "messages": [{"role": "user", "content": 5}]},
    {"t": "generate", "id": "r", "prompt_ids": [1, -2]},
    {"t": "generate", "id": "r", "v": 2, "prompt_ids": [1]},
    {"t": "generate", "id": "r", "prompt_ids": [1], "priority": "urgent"},
    {"t": "whatever", "id": "r"},
    {"t": "cancel"},
])
def test_malformed_messages_raise_wire_error(bad: dict) -> None:
    """Malformed or unknown messages are refused with WireError, never passed on half-checked."""
    with pytest.raises(WireError):
        parse(bad)


def test_sampling_hook_cannot_travel() -> None:
    """A callable allowed-token hook is in-process only; a token set converts both ways."""
    with pytest.raises(ValueError):
        Sampling.from_params(SamplingParams(allowed=lambda done: None))
    s = Sampling.from_params(SamplingParams(temperature=0, allowed={5, 3}))
    assert s.allowed_token_ids == (3, 5) and s.to_params().allowed == frozenset({3, 5})


async def test_worker_streams_pieces_then_done(worker: Worker) -> None:
    """A generate gets accepted, numbered pieces in order, and one done whose text is their concatenation."""
    await worker.handle(request("r1").to_wire())
    done = await worker.outbox.wait_for("done", "r1")
    pieces = worker.outbox.of("r1", "piece")
    assert worker.outbox.messages[0] == {"t": "accepted", "id": "r1"}
    assert [p["n"] for p in pieces] == list(range(len(pieces)))
    assert "".join(p["text"] for p in pieces) == done["text"]
    assert done["finish_reason"] == "length" and done["completion_tokens"] == 12


async def test_worker_rejects_busy_and_invalid(worker: Worker) -> None:
    """Past capacity a generate is rejected as busy at once; a malformed one as invalid."""
    for i in range(3):
        await worker.handle(request(f"r{i}", max_tokens=400).to_wire())
    await worker.handle(request("r3").to_wire())
    assert worker.outbox.of("r3", "rejected")[0]["reason"] == "busy"
    await worker.handle({"t": "generate", "id": "r4", "messages": []})
    assert worker.outbox.of("r4", "rejected")[0]["reason"] == "invalid"
    await worker.handle(request("r0").to_wire())  # an id already in flight
    assert worker.outbox.of("r0", "rejected")[0]["reason"] == "invalid"


async def test_worker_cancel_and_deadline(worker: Worker) -> None:
    """A cancel ends its request as cancelled; a past wire deadline ends one as cancelled by deadline."""
    await worker.handle(request("long", max_tokens=1000).to_wire())
    await worker.outbox.wait_for("piece", "long")
    await worker.handle({"t": "cancel", "id": "long"})
    assert (await worker.outbox.wait_for("done", "long"))["finish_reason"] == "cancelled"
    await worker.handle(request("late", deadline=time.time() - 5).to_wire())
    done = await worker.outbox.wait_for("done", "late")
    assert done["finish_reason"] == "cancelled" and done["detail"] == "deadline"


async def test_in_process_queue_raises_busy_and_streams() -> None:
    """The shard-side interface: submit raises Busy at once when full; stream yields pieces then Done."""
    engine = Engine(tiny_model(), tiny_tokenizer(),
                    EngineSettings(threads=1, kv_budget_mb=2, max_running=1, max_waiting=0, token_budget=64))
    queue = InProcessQueue(engine)
    try:
        await queue.submit(request("a"))
        with pytest.raises(Busy):
            await queue.submit(request("b"))
        replies = [r async for r in queue.stream("a")]
        assert isinstance(replies[-1], Done) and all(isinstance(r, Piece) for r in replies[:-1])
        assert "".join(r.text for r in replies[:-1]) == replies[-1].text
        await queue.submit(request("b"))  # room again
    finally:
        await queue.aclose()


def test_worker_process_speaks_json_lines() -> None:
    """`python -m npc.worker --model tiny` answers a generate on stdin with JSON lines and exits at EOF."""
    lines = [request("p1", max_tokens=6).to_wire(), {"t": "nonsense", "id": "p2"}]
    proc = subprocess.run([sys.executable, "-m", "npc.worker", "--model", "tiny", "--threads", "1"],
                          input=b"".join(orjson.dumps(m) + b"\n" for m in lines),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    replies = [orjson.loads(line) for line in proc.stdout.splitlines()]
    kinds = [(r["t"], r["id"]) for r in replies]
    assert ("accepted", "p1") in kinds and ("rejected", "p2") in kinds
    done = [r for r in replies if r["t"] == "done"]
    assert len(done) == 1 and done[0]["completion_tokens"] == 6
    assert "".join(r["text"] for r in replies if r["t"] == "piece") == done[0]["text"]


def test_the_worker_command_line_sets_the_prefill_bound() -> None:
    """--prefill-with-decodes reaches the engine's scheduler; without it the engine's default holds."""
    from npc.worker import _parser, build_engine

    args = _parser().parse_args(["--model", "tiny", "--prefill-with-decodes", "24"])
    engine = build_engine(args)
    assert engine.core.config.prefill_with_decodes == 24
    default = build_engine(_parser().parse_args(["--model", "tiny"]))
    assert default.core.config.prefill_with_decodes == EngineSettings().prefill_with_decodes
