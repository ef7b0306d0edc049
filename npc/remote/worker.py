"""The worker side: an `npc.worker.Worker` serving requests from every shard through MQTT.

`python -m npc.worker --mqtt URL` builds the engine and calls `serve_mqtt`. The worker joins
the shared subscription of the world's request topic, so the broker hands each request to
one worker; it answers on the reply topic the request names, batching messages per shard
(pieces after an answer's first wait up to `coalesce_ms`; first pieces, `accepted` and the
final `done` go at the end of the current event-loop turn). Its load report is retained and
doubles as its heartbeat; its last will clears it, so shards notice a dead worker at once.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import signal
import time
from typing import Any

import aiomqtt
import orjson

from npc.queue import Done, InProcessQueue, Rejected
from npc.remote.link import Link, Outgoing
from npc.remote.wire import NpcTopics, RecentIds, WorkerLinkSettings, WorkerLoad, now_ms, reply_batch
from npc.worker import Worker

log = logging.getLogger("worldsmith.npc.worker")

LOAD_MIN_GAP_S = 0.05       # at most ~20 load reports a second, however busy
RATE_WINDOW_S = 5.0         # tokens/s is averaged over this window


class MqttWorker:
    """One engine serving NPC requests from every shard of a world."""

    def __init__(self, engine, settings: WorkerLinkSettings, *, model_name: str = "") -> None:
        self.engine = engine
        self.settings = settings
        self.worker_id = settings.worker_id or f"w-{secrets.token_hex(4)}"
        self.model_name = model_name
        self.topics = NpcTopics(settings.world_prefix)
        self.worker = Worker(InProcessQueue(engine), self._send)
        self.duplicates = 0
        self.draining = False
        self._routes: dict[str, str] = {}       # request id -> reply topic, while in flight
        self._seen = RecentIds()
        self._cancelled_early = RecentIds()
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        self._flush: asyncio.Handle | asyncio.TimerHandle | None = None
        self._flush_urgent = False
        self._load_changed = asyncio.Event()
        self._rate: collections.deque[tuple[float, int]] = collections.deque()
        load_topic = self.topics.load(self.worker_id)
        self.link = Link(
            settings.url, identifier=f"npc-worker-{self.worker_id}",
            subscriptions=[(self.topics.shared_requests, 1), (self.topics.cancel(self.worker_id), 1),
                           (self.topics.gone_all, 1)],
            on_message=self._on_message, on_connect=self._on_connect,
            will=aiomqtt.Will(load_topic, b"", qos=1, retain=True),
            username=settings.username, password=settings.password, name=f"npc worker {self.worker_id}")

    # -- inbound ------------------------------------------------------------------
    async def _on_connect(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topics.load(self.worker_id), self.load().to_payload(), qos=1, retain=True)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.requests:
            await self._on_request(payload)
        elif topic == self.topics.cancel(self.worker_id):
            await self._on_cancel(payload)
        elif (instance := self.topics.instance_of(topic)) is not None:
            await self._on_shard_gone(self.topics.reply(instance))

    async def _on_request(self, payload: bytes) -> None:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("dropped a request that is not JSON")
            return
        rid = obj.get("id") if isinstance(obj, dict) else None
        reply = obj.get("reply") if isinstance(obj, dict) else None
        if not isinstance(rid, str) or not rid or not isinstance(reply, str) or not self.topics.is_reply(reply):
            log.warning("dropped a request without an id or a valid reply topic")
            return
        if rid in self._seen:
            self.duplicates += 1  # the broker delivered it again: it is served already
            return
        self._seen.add(rid)
        self._routes[rid] = reply
        if rid in self._cancelled_early:
            self._send(Done(rid, "", "cancelled", 0, 0, None, 0.0, "cancelled before it arrived").to_wire())
        elif self.draining:
            self._send(Rejected(rid, "closed", "this worker is shutting down").to_wire())
        else:
            await self.worker.handle(obj)

    async def _on_cancel(self, payload: bytes) -> None:
        try:
            rid = orjson.loads(payload).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if not isinstance(rid, str):
            return
        if rid in self._routes:
            await self.worker.queue.cancel(rid)
        elif rid not in self._seen:
            self._cancelled_early.add(rid)  # it may still arrive: answer it `cancelled` then

    async def _on_shard_gone(self, reply: str) -> None:
        """A shard died (its last will): nobody reads its answers any more, free their slots."""
        dropped = [rid for rid, topic in self._routes.items() if topic == reply]
        for rid in dropped:
            await self.worker.queue.cancel(rid)
        if dropped:
            log.info("cancelled %d answers for %s, which is gone", len(dropped), reply)

    # -- outbound -----------------------------------------------------------------
    def _send(self, msg: dict[str, Any]) -> None:
        """The Worker's send: route by request id into the per-shard batch."""
        rid = msg.get("id")
        topic = self._routes.get(rid) if isinstance(rid, str) else None
        if topic is None:
            return
        kind = msg.get("t")
        if kind in ("done", "rejected"):
            del self._routes[rid]
            self._load_changed.set()
        elif kind == "accepted":
            self._load_changed.set()
        self._buffers.setdefault(topic, []).append(msg)
        urgent = kind != "piece" or msg.get("n") == 0
        self._schedule_flush(urgent)

    def _schedule_flush(self, urgent: bool) -> None:
        loop = asyncio.get_running_loop()
        delay = self.settings.coalesce_ms / 1000
        if self._flush is not None:
            if not urgent or self._flush_urgent:
                return
            self._flush.cancel()
        self._flush_urgent = urgent or delay == 0
        # call_soon runs after every pump already woken by this engine step: one batch per step.
        self._flush = loop.call_soon(self._flush_now) if self._flush_urgent else loop.call_later(
            delay, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        for topic, msgs in self._buffers.items():
            self.link.outbox.put(Outgoing(topic, reply_batch(self.worker_id, msgs)))
        self._buffers.clear()

    # -- load reports ---------------------------------------------------------------
    def load(self) -> WorkerLoad:
        """This worker's figures now."""
        snap = self.engine.metrics.snapshot()
        in_flight = self.engine.in_flight
        now, total = time.monotonic(), int(snap["completion_tokens"])
        self._rate.append((now, total))
        while len(self._rate) > 2 and self._rate[1][0] < now - RATE_WINDOW_S:
            self._rate.popleft()
        t0, n0 = self._rate[0]
        rate = (total - n0) / (now - t0) if now > t0 else 0.0
        s = self.engine.settings
        # The engine's gauges are updated per step; with nothing in flight there is no step.
        running, waiting = (snap["running"], snap["queue_depth"]) if in_flight else (0, 0)
        return WorkerLoad(self.worker_id, int(running), int(waiting), in_flight,
                          s.max_running + s.max_waiting, round(rate, 1), total, self.model_name,
                          "draining" if self.draining else "serving", now_ms(),
                          self.engine.core.config.max_model_len)

    async def _report_loop(self) -> None:
        """Publish the retained load report every load_every_s, and soon after a change."""
        while True:
            self._load_changed.clear()
            self.link.outbox.put(Outgoing(self.topics.load(self.worker_id), self.load().to_payload(),
                                          qos=1, retain=True))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.load_every_s):
                    await self._load_changed.wait()
            await asyncio.sleep(LOAD_MIN_GAP_S)  # pacing the reports, not synchronisation

    # -- lifecycle ------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then drain (bounded by drain_s) and leave cleanly."""
        async with asyncio.TaskGroup() as tasks:
            link = tasks.create_task(self.link.run())
            report = tasks.create_task(self._report_loop())
            await stop.wait()
            await self._drain()
            report.cancel()
            link.cancel()

    async def _drain(self) -> None:
        self.draining = True
        if (client := self.link.client) is not None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(2):
                    await client.unsubscribe(self.topics.shared_requests)
        self._load_changed.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_s):
                await self.worker.drain()
        await self.worker.aclose()  # cancels what is left; each still sends its `done`
        self._flush_now()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):  # let the last replies out before leaving
                await self.link.outbox.idle.wait()
        await self.link.publish_now(Outgoing(self.topics.load(self.worker_id), b"", qos=1, retain=True))


async def serve_mqtt(engine, settings: WorkerLinkSettings, *, model_name: str = "") -> None:
    """Serve `engine` over MQTT until SIGINT/SIGTERM (the `--mqtt` mode of `python -m npc.worker`)."""
    worker = MqttWorker(engine, settings, model_name=model_name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("npc worker %s ready: model %s; requests from %s via %s", worker.worker_id,
             model_name or "default", worker.topics.requests, settings.url)
    await worker.serve(stop)


def add_arguments(parser) -> None:
    """The `--mqtt` options of `python -m npc.worker`."""
    g = parser.add_argument_group("MQTT (serve every shard of a world through a broker)")
    g.add_argument("--mqtt", default=None, metavar="URL", help="mqtt://[user[:password]@]host[:port]; "
                   "without it the worker speaks JSON lines on stdin/stdout")
    g.add_argument("--mqtt-user", default=None)
    g.add_argument("--mqtt-password", default=None)
    g.add_argument("--world-prefix", default="worldsmith", help="topic prefix of the world")
    g.add_argument("--worker-id", default="", help="this worker's name in topics (default: random)")
    g.add_argument("--coalesce-ms", type=float, default=5.0,
                   help="an answer's later pieces wait this long to share one broker message")
    g.add_argument("--load-every-s", type=float, default=0.5, help="load report (heartbeat) period")
    g.add_argument("--drain-s", type=float, default=30.0, help="on SIGTERM, answers in flight get this long")


async def serve_from_args(engine, args) -> None:
    """Serve `engine` with the MQTT options parsed by `add_arguments`."""
    settings = WorkerLinkSettings(args.mqtt, world_prefix=args.world_prefix, worker_id=args.worker_id,
                                  username=args.mqtt_user, password=args.mqtt_password,
                                  coalesce_ms=args.coalesce_ms, load_every_s=args.load_every_s,
                                  drain_s=args.drain_s)
    await serve_mqtt(engine, settings, model_name=args.model or "default")
