"""The MQTT relay: joins this shard to the other shards of its world through a broker.

Chosen by `server.app` when `--mqtt URL` is set; it replaces the one-shard `Relay` of
`server.chat`. The client library is aiomqtt (the maintained successor of asyncio-mqtt),
speaking MQTT 5. Topics and payloads are in `server.cluster`.

One background task (`_link`, started by `start()`, cancelled and awaited by `close()`)
owns the broker connection for the relay's whole life. Per connection it runs a TaskGroup
(reader, writer, presence, heartbeat, object resync) that ends as one when the connection
does; then it reconnects with capped exponential backoff, logging each up/down
transition once. While
the link is down the shard keeps serving its own players; what needs the other shards
(global lines, private lines to players not here, `who`) answers `error` `unavailable`.
Object events made while down are kept (bounded) and sent on reconnect, and the world's
objects are re-read from the shared database then, so shards converge after an outage.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import secrets
import socket

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from server import cluster, objects
from server.chat import Relay
from server.errors import REPLACED, UNAVAILABLE, ClientError
from server.metrics import Counter, Gauge
from server.sessions import now_ms

log = logging.getLogger("worldsmith.mqtt")
# paho logs a broken connection at ERROR; our own lines report each transition once, so
# its chatter is kept for DEBUG runs only (see MqttRelay.__init__).
_client_log = logging.getLogger("worldsmith.mqtt.client")

PRESENCE_EVERY_S = 0.1      # how often the local roster is checked for changes
CONNECT_WAIT_S = 5.0        # start() waits this long for the first connection, then goes on
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
OUTBOX_LIMIT = 10_000       # queued publishes; past this, cross-shard lines are refused
PENDING_OBJECTS_LIMIT = 10_000
KEEPALIVE_S = 10
CALL_TIMEOUT_S = 2.0       # a subscribe/publish/disconnect the broker doesn't answer in time fails
BEAT_EVERY_S = 0.5          # own heartbeat through the broker...
# ...and how long without it before the link counts as dead. Generous on purpose: on a
# starved machine beats come back seconds late, and a needless reconnect loses lines.
BEAT_LOST_S = 10.0


class Unavailable(ClientError):
    """The world link (MQTT broker) is down: cross-shard features can't be served now."""

    def __init__(self, msg: str = "the other shards are unreachable right now; try again soon") -> None:
        super().__init__(UNAVAILABLE, msg)


class MqttRelay(Relay):
    """A `Relay` that reaches players on every shard of the world through an MQTT broker."""

    def __init__(self, shard) -> None:
        super().__init__(shard)
        s = shard.settings
        self.address = cluster.parse_broker_url(s.mqtt)
        self.topics = cluster.Topics(s.world_prefix, s.shard)
        self.remote = cluster.RemoteRoster()
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._outbox: asyncio.Queue[tuple[str, bytes, int, bool]] = asyncio.Queue(OUTBOX_LIMIT)
        self._pending_objects: collections.deque[bytes] = collections.deque(maxlen=PENDING_OBJECTS_LIMIT)
        self._task: asyncio.Task | None = None
        self._changed_in_resync: set[str] = set()  # objects changed while a resync reads the db
        self._resyncing = False
        self._closing = False
        self._was_up: bool | None = None  # for logging each transition once
        self.reconnects = 0
        if not log.isEnabledFor(logging.DEBUG) and _client_log.level == logging.NOTSET:
            _client_log.setLevel(logging.CRITICAL)
        self._backoff = BACKOFF_MIN_S
        self._last_beat = 0.0
        self._register_metrics(shard.metrics.registry)

    def _register_metrics(self, registry) -> None:
        """The link's figures on the shard's /metrics."""
        registry.add(Gauge("worldsmith_mqtt_connected", "1 while the MQTT world link is up.",
                           lambda: int(self.available)))
        registry.add(Gauge("worldsmith_mqtt_remote_players", "Players on the other shards.",
                           lambda: len(self.remote.players())))
        self.m_reconnects = registry.add(Counter("worldsmith_mqtt_reconnects_total",
                                                 "Times the MQTT world link came back after a loss."))
        self.m_sent = registry.add(Counter("worldsmith_mqtt_published_total",
                                           "Messages published to the world, by kind.", ("kind",)))
        self.m_received = registry.add(Counter("worldsmith_mqtt_received_total",
                                               "Messages received from the world, by kind.", ("kind",)))

    # -- the Relay seam -----------------------------------------------------------
    @property
    def available(self) -> bool:
        """True while the broker link is up and subscribed."""
        return self.connected.is_set()

    def find_player(self, target: str) -> tuple[str, str] | None:
        """(id, name) of a player on any shard; raises Unavailable if not here and the link is down."""
        found = super().find_player(target)
        if found is not None:
            return found
        if not self.available:
            raise Unavailable()
        remote = self.remote.find(target)
        return (remote[0], remote[1]) if remote else None

    def send_global(self, frame: bytes, skip: str | None = None) -> None:
        """Publish the line for the other shards, then deliver it here. Raises Unavailable
        (and delivers nothing) while the link is down."""
        self._publish(self.topics.chat_global, frame, qos=0)
        super().send_global(frame, skip)

    def send_private(self, pid: str, frame: bytes) -> None:
        """Deliver here if the player is here, else publish to the shard they are on."""
        if pid in self.shard.sessions.online:
            return super().send_private(pid, frame)
        remote = self.remote.find(pid)
        if remote is not None:
            self._publish(self.topics.private(remote[2], pid), frame, qos=0)
        # else: gone since find_player (same turn: only if their shard just died); lost, as offline

    def roster(self) -> list[dict]:
        """Players on every shard; raises Unavailable while the link is down."""
        if not self.available:
            raise Unavailable()
        return super().roster() + self.remote.players()

    def object_added(self, rec) -> None:
        """Tell the other shards about an object placed here (kept for later if the link is down)."""
        self._object_event(rec.id, cluster.object_added(rec))

    def object_removed(self, oid: str) -> None:
        """Tell the other shards an object was removed here."""
        self._object_event(oid, cluster.object_removed(oid))

    async def start(self) -> None:
        """Start the link task and wait (bounded) for the first connection. A broker that
        is not there yet is no error: the shard serves its players and keeps retrying."""
        self._task = asyncio.get_running_loop().create_task(self._link(), name="worldsmith-mqtt")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONNECT_WAIT_S):
                await self.connected.wait()

    async def close(self) -> None:
        """Clear this shard's presence (a clean leave), disconnect, and stop the link task."""
        self._closing = True  # the presence task must not republish after the clear below
        client = self._client
        if client is not None and self.available:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(2):
                    await client.publish(self.topics.my_presence, b"", qos=1, retain=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- publishing ---------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False) -> None:
        if not self.available:
            raise Unavailable()
        try:
            self._outbox.put_nowait((topic, payload, qos, retain))
        except asyncio.QueueFull:
            raise Unavailable("the link to the other shards is congested; try again soon") from None

    def _object_event(self, oid: str, payload: bytes) -> None:
        if self._resyncing:  # the resync's database snapshot may predate this change
            self._changed_in_resync.add(oid)
        if self.available:
            with contextlib.suppress(Unavailable):
                return self._publish(self.topics.objects, payload, qos=1)
        self._pending_objects.append(payload)  # sent on reconnect

    # -- the link -----------------------------------------------------------------
    async def _link(self) -> None:
        """Connect, serve, and reconnect with backoff, for as long as the relay lives."""
        while True:
            try:
                await self._session()
            except* aiomqtt.MqttError as group:
                self._went_down(group.exceptions[0])
            except* Exception as group:  # a bug here must not end cross-shard service for good
                log.error("MQTT link failed", exc_info=group.exceptions[0])
                self._went_down(group.exceptions[0])
            # Pacing the retries, not synchronisation: jitter keeps shards from retrying in step.
            await asyncio.sleep(self._backoff * random.uniform(0.8, 1.2))
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    async def _session(self) -> None:
        """One broker connection, from connect to failure."""
        a = self.address
        s = self.shard.settings
        will = aiomqtt.Will(self.topics.my_presence, b"", qos=1, retain=True)
        client = aiomqtt.Client(
            a.host, a.port, username=s.mqtt_user or a.username,
            password=s.mqtt_password or a.password,
            identifier=f"worldsmith-{s.shard}-{secrets.token_hex(4)}",
            protocol=aiomqtt.ProtocolVersion.V5, will=will, clean_start=True,
            keepalive=KEEPALIVE_S, timeout=CALL_TIMEOUT_S,
            # Small messages must not wait for Nagle's algorithm (up to ~40 ms on loopback).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            max_queued_incoming_messages=50_000, logger=_client_log)
        async with client:
            self._client = client
            try:
                self.remote.clear()
                no_local = SubscribeOptions(qos=1, noLocal=True)
                await client.subscribe([(self.topics.presence_all, SubscribeOptions(qos=1)),
                                        (self.topics.chat_global, SubscribeOptions(qos=0, noLocal=True)),
                                        (self.topics.my_private, SubscribeOptions(qos=0)),
                                        (self.topics.objects, no_local),
                                        (self.topics.my_beat, SubscribeOptions(qos=0)),
                                        (self.topics.my_replace, SubscribeOptions(qos=1))])
                self._drop_stale_outbox()
                self._came_up()
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._read(client))
                    tasks.create_task(self._write(client, tasks))
                    tasks.create_task(self._presence(client))
                    tasks.create_task(self._resync_objects())
                    tasks.create_task(self._heartbeat(client))
            finally:
                self._client = None
                self.connected.clear()

    def _came_up(self) -> None:
        for payload in self._pending_objects:
            self._outbox.put_nowait((self.topics.objects, payload, 1, False))
        self._pending_objects.clear()
        self.connected.set()
        self._backoff = BACKOFF_MIN_S
        if self._was_up is not None:
            self.reconnects += 1
            self.m_reconnects.inc()
        if self._was_up is not True:
            log.info("shard %s joined world %r through MQTT broker %s:%d",
                     self.shard.settings.shard, self.topics.prefix, self.address.host, self.address.port)
        self._was_up = True

    def _went_down(self, why) -> None:
        self.connected.clear()
        self.remote.clear()
        if self._was_up is not False:
            log.warning("MQTT broker %s:%d unreachable (%s): serving this shard's players only; "
                        "global chat, private lines to other shards and who answer 'unavailable' "
                        "until it is back", self.address.host, self.address.port, why)
        self._was_up = False

    def _drop_stale_outbox(self) -> None:
        """Lines queued before the link fell are not sent late; object events are kept."""
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            if item[0] == self.topics.objects:
                self._pending_objects.append(item[1])

    async def _write(self, client: aiomqtt.Client, tasks: asyncio.TaskGroup) -> None:
        while True:
            topic, payload, qos, retain = await self._outbox.get()
            self.m_sent.inc(self.topics.kind(topic))
            if qos == 0:
                await client.publish(topic, payload, qos=0, retain=retain)
            else:
                # Waiting for the broker's PUBACK here would hold every chat line behind
                # it; the acknowledgement is awaited aside (in order among themselves).
                tasks.create_task(client.publish(topic, payload, qos=qos, retain=retain))

    async def _presence(self, client: aiomqtt.Client) -> None:
        """Publish the local roster (retained) whenever it changes; at once on connect."""
        sent = None
        while True:
            online = self.shard.sessions.online
            now = frozenset(online)
            if now != sent and not self._closing:
                players = [(s.pid, s.name) for s in online.values()]
                await client.publish(self.topics.my_presence,
                                     cluster.presence_payload(self.shard.settings.shard, players, now_ms()),
                                     qos=1, retain=True)
                self.m_sent.inc("presence")
                if sent is not None:
                    self._replace_elsewhere(now - sent)
                sent = now
            await asyncio.sleep(PRESENCE_EVERY_S)  # a polling period, not synchronisation

    def _replace_elsewhere(self, arrived: frozenset[str]) -> None:
        """Players who just connected here while another shard still has them: that shard
        closes its (older) connection. Only new arrivals are checked, so the newer wins."""
        for pid in arrived:
            other = self.remote.find(pid)
            if other is not None and other[0] == pid:
                with contextlib.suppress(Unavailable):
                    self._publish(self.topics.replace(other[2], pid), b"", qos=1)

    def _replaced(self, pid: str) -> None:
        session = self.shard.sessions.online.get(pid)
        if session is not None:
            self.shard.metrics.closes.inc(str(REPLACED))
            self.shard.spawn(session.conn.close(REPLACED, "replaced by a newer connection on another shard"))

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        """Publish a beat to ourselves and fail the link when they stop coming back: a
        connection can die in ways the client library never reports (a half-open socket,
        an event-loop writer that was lost), and waiting on keepalive alone takes long."""
        loop = asyncio.get_running_loop()
        self._last_beat = loop.time()
        while True:
            if loop.time() - self._last_beat > BEAT_LOST_S:
                raise aiomqtt.MqttError(f"no heartbeat back from the broker in {BEAT_LOST_S:g} s")
            try:
                async with asyncio.timeout(BEAT_EVERY_S):  # a stuck publish must not stall the check
                    await client.publish(self.topics.my_beat, b"", qos=0)
            except TimeoutError:
                continue
            await asyncio.sleep(BEAT_EVERY_S)  # the beat's period, not synchronisation

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                self._on_message(message.topic.value, message.payload)
            except Exception:  # one bad message must not take the link down
                log.exception("ignored a bad message on %s", message.topic.value)

    def _on_message(self, topic: str, payload) -> None:
        payload = bytes(payload or b"")
        t = self.topics
        self.m_received.inc(t.kind(topic))
        if topic == t.chat_global:
            self.shard.send_to(list(self.shard.sessions.online), payload, "chat")
        elif topic == t.my_beat:
            self._last_beat = asyncio.get_running_loop().time()
        elif topic == t.objects:
            self._apply_object_event(*cluster.parse_object_event(payload))
        elif (pid := t.tail(topic, t.my_private)) is not None:
            self.shard.send_to([pid], payload, "chat")
        elif (pid := t.tail(topic, t.my_replace)) is not None:
            self._replaced(pid)
        elif (shard := t.tail(topic, t.presence_all)) is not None:
            if shard != self.shard.settings.shard:
                self.remote.update(shard, payload)

    def _apply_object_event(self, op: str, what) -> None:
        world = self.shard.world
        if self._resyncing:  # newer than the resync's database snapshot: the event wins
            self._changed_in_resync.add(what.id if op == "add" else what)
        if op == "add":
            if world.get(what.id) is None:
                world.add(objects.from_record(what))
        else:
            entity = world.get(what)
            if entity is not None and entity.kind == "object":
                world.remove(what)
                self.shard.placed_by.pop(what, None)

    async def _resync_objects(self) -> None:
        """After (re)connecting: take the world's objects from the shared database, which
        holds whatever other shards placed or removed while we could not hear them."""
        if self.reconnects == 0:
            return  # just started: the shard loaded the database a moment ago
        self._changed_in_resync.clear()
        self._resyncing = True
        try:
            stored = await self.shard.db.call(self.shard.store.load_objects)
        finally:
            self._resyncing = False
        keep = {rec.id for rec in stored}
        world = self.shard.world
        for rec in stored:
            if world.get(rec.id) is None and rec.id not in self._changed_in_resync:
                world.add(objects.from_record(rec))
        for entity in world.entities():
            if entity.kind != "object" or entity.id.startswith("o:w"):
                continue  # the world file's own objects are never stored
            if entity.id not in keep and entity.id not in self._changed_in_resync:
                world.remove(entity.id)
                self.shard.placed_by.pop(entity.id, None)
