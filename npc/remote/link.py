"""One MQTT 5 connection that stays up: connect, subscribe, read and write; reconnect with backoff.

Both sides of the NPC transport (shard and worker) own one `Link`. The client library is
aiomqtt, the maintained successor of asyncio-mqtt. Outgoing messages go through a bounded
`Outbox` that outlives connections, so replies made while the broker is away are sent
when it is back (a message that was being written when the connection fell is sent again;
receivers drop the duplicate by request id and piece number).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from server.cluster import parse_broker_url

log = logging.getLogger("worldsmith.npc.remote")
# paho logs a broken connection at ERROR; Link logs each up/down transition once instead.
_client_log = logging.getLogger("worldsmith.npc.remote.client")

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
KEEPALIVE_S = 5
CALL_TIMEOUT_S = 5.0
OUTBOX_LIMIT = 20_000           # queued publishes; past this the oldest are dropped
INCOMING_LIMIT = 100_000
PUBLISH_WINDOW = 64            # publishes awaiting their PUBACK at once


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Outbox:
    """A bounded FIFO of publishes that survives reconnects (oldest dropped when full)."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self._items: collections.deque[Outgoing] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self.idle = asyncio.Event()  # set while nothing is queued or being written
        self.idle.set()
        self.dropped = 0
        self._writing = 0  # taken by get() and not yet written() or ungot

    def put(self, item: Outgoing) -> None:
        """Queue one publish; never blocks."""
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self.idle.clear()
        self._ready.set()

    async def get(self) -> Outgoing:
        """The next publish, waiting for one."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        self._writing += 1
        return self._items.popleft()

    def unget(self, item: Outgoing) -> None:
        """Put back a publish that could not be written (it goes out first next time)."""
        self._writing -= 1
        self._items.appendleft(item)
        self.idle.clear()
        self._ready.set()

    def written(self) -> None:
        """The writer finished a publish; marks the outbox idle once nothing is left."""
        self._writing -= 1
        if not self._items and not self._writing:
            self.idle.set()

    def __len__(self) -> int:
        return len(self._items)


OnMessage = Callable[[str, bytes], Awaitable[None]]
OnConnect = Callable[[aiomqtt.Client], Awaitable[None]]


class Link:
    """Keeps one MQTT connection up for as long as `run()` runs."""

    def __init__(self, url: str, *, identifier: str, subscriptions: list[tuple[str, int]],
                 on_message: OnMessage, on_connect: OnConnect | None = None,
                 will: aiomqtt.Will | None = None, username: str | None = None,
                 password: str | None = None, name: str = "link") -> None:
        self.address = parse_broker_url(url)
        self.identifier = identifier
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connect = on_connect
        self.will = will
        self.username = username or self.address.username
        self.password = password or self.address.password
        self.name = name
        self.outbox = Outbox()
        self.connected = asyncio.Event()
        self.client: aiomqtt.Client | None = None
        self.on_down: Callable[[], None] | None = None
        self._was_up: bool | None = None
        self._backoff = BACKOFF_MIN_S
        if not log.isEnabledFor(logging.DEBUG) and _client_log.level == logging.NOTSET:
            _client_log.setLevel(logging.CRITICAL)

    async def run(self) -> None:
        """Connect, serve, reconnect with capped backoff; returns only when cancelled."""
        while True:
            try:
                await self._session()
            except* aiomqtt.MqttError as group:
                self._went_down(group.exceptions[0])
            except* Exception as group:  # a bug in a handler must not end the link for good
                log.error("%s failed", self.name, exc_info=group.exceptions[0])
                self._went_down(group.exceptions[0])
            # Pacing the retries, not synchronisation; jitter keeps clients out of step.
            await asyncio.sleep(self._backoff * random.uniform(0.8, 1.2))
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    async def _session(self) -> None:
        a = self.address
        client = aiomqtt.Client(
            a.host, a.port, username=self.username, password=self.password,
            identifier=self.identifier, protocol=aiomqtt.ProtocolVersion.V5, will=self.will,
            clean_start=True, keepalive=KEEPALIVE_S, timeout=CALL_TIMEOUT_S,
            max_queued_incoming_messages=INCOMING_LIMIT, logger=_client_log,
            # Nagle's algorithm holds small publishes until the broker ACKs the previous
            # one; with delayed ACKs that is tens of milliseconds per token batch.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        async with client:
            self.client = client
            try:
                await client.subscribe([(t, SubscribeOptions(qos=q)) for t, q in self.subscriptions])
                if self.on_connect is not None:
                    await self.on_connect(client)
                self._came_up()
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._read(client))
                    tasks.create_task(self._write(client))
            finally:
                self.client = None
                self.connected.clear()

    def _came_up(self) -> None:
        self.connected.set()
        self._backoff = BACKOFF_MIN_S
        if self._was_up is not True:
            log.info("%s connected to MQTT broker %s:%d", self.name, self.address.host, self.address.port)
        self._was_up = True

    def _went_down(self, why: BaseException) -> None:
        self.connected.clear()
        if self._was_up is not False:
            log.warning("%s lost MQTT broker %s:%d (%s); retrying", self.name, self.address.host,
                        self.address.port, why)
        self._was_up = False
        if self.on_down is not None:
            self.on_down()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                await self.on_message(message.topic.value, bytes(message.payload or b""))
            except Exception:  # one bad message must not take the link down
                log.exception("%s ignored a bad message on %s", self.name, message.topic.value)

    async def _write(self, client: aiomqtt.Client) -> None:
        # Publishes are pipelined: waiting for each PUBACK before the next would cost a
        # broker round trip per message, and on a worker whose engine thread holds the GIL
        # each round trip is several milliseconds. The client writes them in call order.
        window = asyncio.Semaphore(PUBLISH_WINDOW)
        async with asyncio.TaskGroup() as tasks:
            while True:
                item = await self.outbox.get()
                await window.acquire()
                tasks.create_task(self._publish(client, item, window))

    async def _publish(self, client: aiomqtt.Client, item: Outgoing, window: asyncio.Semaphore) -> None:
        try:
            await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
        except BaseException:
            self.outbox.unget(item)
            raise
        finally:
            window.release()
        self.outbox.written()

    async def publish_now(self, item: Outgoing, timeout: float = 2.0) -> bool:
        """Publish outside the outbox (shutdown messages); False if the broker is not there."""
        client = self.client
        if client is None or not self.connected.is_set():
            return False
        try:
            async with asyncio.timeout(timeout):
                await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
        except (aiomqtt.MqttError, TimeoutError):
            return False
        return True
