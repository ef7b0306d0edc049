"""NPC workers over MQTT: many shards share a pool of GPU (or CPU) workers through a broker.

    worker:  python -m npc.worker --mqtt mqtt://HOST:1883 [--model M --device cuda]
    shard:   NpcService(settings, engine=remote_engine(URL, model=M, world_prefix=P, shard=NAME))

The shard's `RemoteEngine` (`npc.remote.client`) has the in-process Engine's interface, so
players see the same `npc_start`/`npc_token`/`npc_end` either way. The worker
(`npc.remote.worker`) wraps `npc.worker.Worker`; message bodies are `npc.queue`'s wire
messages. The client library is aiomqtt (MQTT 5), the maintained successor of asyncio-mqtt.

Topics (the one place they are defined; ``P`` is the world prefix, default ``worldsmith``,
the same prefix the shards' own MQTT relay uses)::

    P/npc/requests          QoS 1. shard -> workers: a queue `generate` message (id, deadline,
                            messages, sampling, priority) plus
                            "reply": the shard's reply topic. Workers subscribe as the MQTT 5
                            shared subscription $share/npc-workers/P/npc/requests, so the
                            broker hands each request to one worker.
    P/npc/reply/SHARD.N     QoS 1. workers -> one shard (N: a random tag per RemoteEngine, so a
                            restarted shard never reads its predecessor's answers):
                            {"w": WORKER, "m": [messages]} where
                            messages are queue `accepted`, `rejected`, `piece` (numbered n),
                            `done`. Batched per shard: an answer's later pieces wait up to
                            coalesce_ms (default 5) to share one broker message.
    P/npc/cancel/WORKER     QoS 1. shard -> one worker: {"t":"cancel","id"}.
    P/npc/gone/SHARD.N      QoS 1, empty. The RemoteEngine's last will: every worker cancels
                            the answers it was generating for that reply topic.
    P/npc/workers/WORKER    retained, QoS 1. The worker's load report
                            {"worker","running","waiting","in_flight","capacity","tokens_per_s",
                            "completion_tokens","model","state","sent_ms","max_model_len"}, every
                            load_every_s (default 0.5 s) and soon after each change: it is
                            also the heartbeat. The worker's last will (and its clean leave)
                            is an empty retained message here.

Guarantees: a request carries an id, a deadline (Unix seconds) and its reply topic. Pieces
reach the stream in order, each once (dedupe by id and piece number; a second worker that
got a duplicate delivery is told to cancel). A dead worker's begun answers end with `error`
at once when the broker delivers its last will, and within worker_lost_s + check_every_s
(3.1 s by default) when only its heartbeat stops; answers nobody has seen a piece of yet
are offered to another worker. A saturated worker (or no worker at all) means `busy`. A
shard that loses the broker ends its answers in flight with `error` at once (its last will
has the workers drop them) and answers `busy` until it is back.
"""
from __future__ import annotations

from npc.remote.client import RemoteEngine
from npc.remote.stream import RemoteReplyStream
from npc.remote.wire import NpcTopics, RemoteSettings, WorkerLinkSettings, WorkerLoad


def remote_engine(url: str, *, model: str | None, world_prefix: str = "worldsmith", shard: str = "",
                  username: str | None = None, password: str | None = None) -> RemoteEngine:
    """The shard's engine when its NPCs answer on remote workers (loads only the tokenizer of
    `model`, which must be the workers' model)."""
    settings = RemoteSettings(url, world_prefix=world_prefix, shard=shard, username=username, password=password)
    return RemoteEngine(settings, tokenizer=load_tokenizer(model))


def load_tokenizer(model: str | None):
    """The tokenizer of a model without its weights, for a shard whose engine is remote:
    'tiny' (the test model), a GGUF file, a Hugging Face directory, or None (the default model)."""
    from pathlib import Path

    if model == "tiny":
        from npc.engine.tiny import tiny_tokenizer

        return tiny_tokenizer()
    from npc.engine.tokenizer import Tokenizer

    if model is None:
        from npc.models import default_model_path

        model = str(default_model_path())
    path = Path(model).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return Tokenizer.from_hf_dir(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        path = ggufs[0] if len(ggufs) == 1 else path
    from gguf import GGUFReader

    from npc.engine.gguf_loader import read_metadata

    return Tokenizer.from_gguf_metadata(read_metadata(GGUFReader(str(path))))


__all__ = ["RemoteEngine", "remote_engine", "RemoteReplyStream", "RemoteSettings", "WorkerLinkSettings", "WorkerLoad",
           "NpcTopics", "load_tokenizer"]
