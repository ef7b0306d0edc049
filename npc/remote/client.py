"""The shard side: `RemoteEngine`, an Engine look-alike whose answers come from MQTT workers.

`NpcService(settings, engine=RemoteEngine(...))` works unchanged: `submit()` returns a
stream with the in-process `ReplyStream`'s interface (iterate pieces, `await result()`,
`cancel()`), `in_flight`, `tokenizer`, `start()`, `await aclose()` and `metrics`.

Each request's life, as the shard sees it: sent (shared subscription: the broker picks a
worker) -> accepted by one worker (the first `accepted` binds it; any other worker serving
the same id is told to cancel) -> pieces in order by their number `n` (duplicates dropped,
early ones held) -> exactly one end. A worker that dies (its last will clears its load
report, or its reports stop for `worker_lost_s`) ends its begun answers with `error`; those
no player has seen a piece of yet are offered again, as are requests no worker accepted
within `accept_timeout_s`. Losing the broker ends every answer in flight with `error`.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Mapping, Sequence as Seq

import aiomqtt
import orjson

from npc.engine.errors import Busy, EngineClosed
from npc.engine.sequence import Priority, SamplingParams
from npc.queue import Accepted, Done, GenerateRequest, Piece, Rejected, WireError, parse
from npc.remote.link import Link, Outgoing
from npc.remote.metrics import RemoteMetrics
from npc.remote.stream import RemoteReplyStream
from npc.remote.wire import NpcTopics, RecentIds, RemoteSettings, WorkerLoad, parse_reply_batch

log = logging.getLogger("worldsmith.npc.remote")

Messages = Seq[Mapping[str, str]]


class RemoteEngine:
    """Generates NPC answers on remote workers through an MQTT broker; an Engine stand-in."""

    def __init__(self, settings: RemoteSettings, *, tokenizer) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.shard = settings.shard or "shard"
        self._nonce = secrets.token_hex(3)
        self.topics = NpcTopics(settings.world_prefix)
        # One reply topic per engine instance: a restarted shard (or two with one name)
        # never reads, or cancels, another instance's answers.
        self.instance = f"{self.shard}.{self._nonce}"
        self.reply_topic = self.topics.reply(self.instance)
        self._id_prefix = f"{self.shard}.{self._nonce}."
        self.workers: dict[str, WorkerLoad] = {}
        self.metrics = RemoteMetrics(self)
        self._seen_at: dict[str, float] = {}     # worker -> monotonic time of its last report
        self._calls: dict[str, RemoteReplyStream] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._tasks: list[asyncio.Task] = []
        self._workers_changed = asyncio.Event()
        self._told = RecentIds()                  # worker/request pairs already told to stop
        self.link = Link(settings.url, identifier=f"npc-shard-{self.shard}-{self._nonce}",
                         subscriptions=[(self.reply_topic, 1), (self.topics.workers_all, 1)],
                         on_message=self._on_message, username=settings.username,
                         # A shard that dies tells the workers to drop its answers.
                         will=aiomqtt.Will(self.topics.gone(self.instance), b"", qos=1),
                         password=settings.password, name=f"npc client {self.shard}")
        self.link.on_down = self._link_down

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Start the broker link and the timeout checks (idempotent; needs a running loop)."""
        if self._tasks or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.link.run(), name="npc-remote-link"),
                       loop.create_task(self._watch(), name="npc-remote-watch")]

    async def aclose(self) -> None:
        """Cancel every answer in flight (telling their workers, briefly waiting for the broker) and disconnect."""
        self._closed = True
        for call in list(self._calls.values()):
            if call.worker is not None:
                self.link.outbox.put(self._cancel_msg(call.worker, call.id))
            self._end(call, "cancelled", detail="engine closed")
        if self.link.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.link.outbox.idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def __aenter__(self) -> "RemoteEngine":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def wait_for_workers(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until `count` live workers are known (raises TimeoutError)."""
        await self.wait_for_reports(lambda workers: len([w for w in workers.values() if w.state == "serving"])
                                    >= count, timeout)

    async def wait_for_reports(self, predicate, timeout: float = 10.0) -> None:
        """Wait until `predicate(self.workers)` holds, re-checked on each load report (TimeoutError)."""
        async with asyncio.timeout(timeout):
            while not predicate(self.workers):
                self._workers_changed.clear()
                await self._workers_changed.wait()

    def live_workers(self) -> list[WorkerLoad]:
        """Workers reporting and accepting requests."""
        return [w for w in self.workers.values() if w.state == "serving"]

    @property
    def max_model_len(self) -> int | None:
        """The smallest context (prompt plus answer tokens) a serving worker reports; None if unknown.
        A longer request would be refused, so prompt budgets should stay within it."""
        lens = [w.max_model_len for w in self.live_workers() if w.max_model_len]
        return min(lens) if lens else None

    # -- requests -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """This shard's answers not yet ended."""
        return len(self._calls)

    def submit(self, messages: Messages | None = None, params: SamplingParams | None = None, *,
               prompt_ids: list[int] | None = None, deadline: float | None = None,
               timeout: float | None = None, priority: Priority = Priority.NORMAL) -> RemoteReplyStream:
        """Send one answer request to the workers; same arguments and errors as `Engine.submit`.

        Raises Busy at once when the broker is down, no worker is serving, or every known
        worker is full; EngineClosed after aclose; ValueError for bad arguments.
        """
        if (messages is None) == (prompt_ids is None):
            raise ValueError("pass exactly one of messages or prompt_ids")
        if self._closed:
            raise EngineClosed("the remote engine is closed")
        self._admit()
        request, deadline = GenerateRequest.for_submit(f"{self._id_prefix}{next(self._ids)}", messages,
                                                       prompt_ids, params or SamplingParams(), deadline,
                                                       timeout, priority)
        call = RemoteReplyStream(self, request, deadline)
        self._calls[call.id] = call
        self._offer(call)
        return call

    def _admit(self) -> None:
        if not self.link.connected.is_set():
            self.metrics.busy_local += 1
            raise Busy("the MQTT broker is unreachable")
        live = self.live_workers()
        if not live:
            self.metrics.busy_local += 1
            raise Busy("no NPC worker is serving")
        # Reports lag a little, so two checks: the workers' own counts, and our own total.
        if all(w.in_flight >= w.capacity for w in live) or len(self._calls) >= sum(w.capacity for w in live):
            self.metrics.busy_local += 1
            raise Busy(f"every NPC worker is full ({sum(w.capacity for w in live)} answers)")

    def _offer(self, call: RemoteReplyStream) -> None:
        payload = call.request.to_wire()
        payload["reply"] = self.reply_topic
        self.link.outbox.put(Outgoing(self.topics.requests, orjson.dumps(payload)))

    def _cancel_msg(self, worker: str, rid: str) -> Outgoing:
        return Outgoing(self.topics.cancel(worker), orjson.dumps({"t": "cancel", "id": rid}))

    def _cancel(self, call: RemoteReplyStream) -> None:
        if call.worker is None:
            self._end(call, "cancelled")  # any worker that accepts it later is told to stop
        elif call.cancel_at is None:
            call.cancel_at = time.monotonic()
            self.link.outbox.put(self._cancel_msg(call.worker, call.id))

    def _end(self, call: RemoteReplyStream, reason: str, **kw) -> None:
        if call.done:
            return
        self._calls.pop(call.id, None)
        result = call._finish(reason, **kw)
        self.metrics.finished(result)

    # -- inbound --------------------------------------------------------------------
    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.reply_topic:
            worker, messages = parse_reply_batch(payload)
            for obj in messages:
                try:
                    self._on_reply(worker, parse(obj))
                except WireError as e:
                    log.warning("ignored a bad reply from worker %s: %s", worker, e)
        elif (worker := self.topics.worker_of(topic)) is not None:
            self._on_load(worker, payload)

    def _on_reply(self, worker: str, msg) -> None:
        call = self._calls.get(msg.request_id)
        if call is None or worker in call.abandoned:
            if isinstance(msg, (Accepted, Piece)) and msg.request_id.startswith(self._id_prefix):
                self._tell_stop(worker, msg.request_id, call)  # ours, but ended or re-offered
            return
        if call.worker is None:
            call.worker = worker  # the first worker heard from serves it
            if call.cancel_at is not None:
                self.link.outbox.put(self._cancel_msg(worker, call.id))
        elif call.worker != worker:
            if isinstance(msg, (Accepted, Piece)):
                self._tell_stop(worker, call.id, call)  # a duplicate delivery served twice
            return
        if isinstance(msg, Piece):
            if not call._piece(msg.n, msg.text):
                self.metrics.duplicates += 1
        elif isinstance(msg, Done):
            self._end(call, msg.finish_reason, text=msg.text, prompt_tokens=msg.prompt_tokens,
                      completion_tokens=msg.completion_tokens, detail=msg.detail)
        elif isinstance(msg, Rejected) and msg.reason == "closed":
            self._reoffer(call, f"worker {worker} is shutting down")  # another worker may take it
        elif isinstance(msg, Rejected):
            # A worker that refuses looks like the engine refusing: `busy`, as in-process.
            self.metrics.busy_remote += 1
            self._end(call, "busy", detail=f"{msg.reason}: {msg.message}")

    def _tell_stop(self, worker: str, rid: str, call: RemoteReplyStream | None) -> None:
        """Ask `worker` to stop generating `rid` (once): nobody here is waiting for its answer."""
        if call is not None:
            call.abandoned.add(worker)
        key = f"{worker}/{rid}"
        if key in self._told:
            return
        self._told.add(key)
        self.metrics.duplicates += 1
        self.link.outbox.put(self._cancel_msg(worker, rid))

    def _on_load(self, worker: str, payload: bytes) -> None:
        if not payload:  # its last will, or a clean leave
            self._worker_gone(worker, "left")
            return
        try:
            load = WorkerLoad.from_payload(worker, payload)
        except ValueError as e:
            log.warning("%s", e)
            return
        self.workers[worker] = load
        self._seen_at[worker] = time.monotonic()
        self._workers_changed.set()

    def _worker_gone(self, worker: str, why: str) -> None:
        known = self.workers.pop(worker, None) is not None
        self._seen_at.pop(worker, None)
        self._workers_changed.set()
        if known:
            log.warning("NPC worker %s %s", worker, why)
            self.metrics.workers_lost += 1
        for call in [c for c in self._calls.values() if c.worker == worker]:
            self._reoffer(call, f"worker {worker} {why}")

    def _reoffer(self, call: RemoteReplyStream, why: str) -> None:
        """Offer a request again, unless a player saw part of it or its attempts are spent."""
        if call.worker is not None:
            call.abandoned.add(call.worker)
        if call.begun or call.cancel_at is not None:
            self._end(call, "error" if call.cancel_at is None else "cancelled", detail=why)
        elif call.attempts >= self.settings.max_attempts or not self.link.connected.is_set():
            self._end(call, "error", detail=f"{why}; not offered again")
        else:
            call.attempts += 1
            call.worker = None
            call.sent_at = time.monotonic()
            self.metrics.reoffered += 1
            self._offer(call)

    def _link_down(self) -> None:
        # Our last will has told the workers to drop our answers, and whatever they sent
        # meanwhile is lost (clean session): end them all now rather than at their deadline.
        # New requests get Busy until the retained reports come back on reconnect.
        for call in list(self._calls.values()):
            self._end(call, "error", detail="lost the connection to the MQTT broker")
        self.workers.clear()
        self._seen_at.clear()
        self._workers_changed.set()

    # -- timeouts -------------------------------------------------------------------
    async def _watch(self) -> None:
        """Apply the time bounds: lost workers, unaccepted requests, cancels, deadlines."""
        s = self.settings
        while True:
            await asyncio.sleep(s.check_every_s)  # the checks' period, not synchronisation
            now = time.monotonic()
            for worker, seen in list(self._seen_at.items()):
                if now - seen > s.worker_lost_s:
                    self._worker_gone(worker, f"silent for {s.worker_lost_s:g} s")
            for call in list(self._calls.values()):
                self._check(call, now)

    def _check(self, call: RemoteReplyStream, now: float) -> None:
        s = self.settings
        if call.cancel_at is not None and now - call.cancel_at > s.cancel_grace_s:
            self._end(call, "cancelled", detail="the worker did not confirm the cancel")
        elif call.deadline is not None and now > call.deadline + s.deadline_grace_s:
            self._end(call, "cancelled", detail="deadline")
        elif call.worker is None and now - call.sent_at > s.accept_timeout_s:
            self._reoffer(call, f"no worker accepted it in {s.accept_timeout_s:g} s")
