"""The Shard: one world, its online players, and what each kind of message does to them.

Input arrives from each connection's protocol (`wsconn.py`); output to many players is
the tick loop's job (`ticker.py`). Everything here runs on the event loop and never awaits
a client: writes go straight to the connection's transport.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random

from websockets.protocol import State

from server import objects
from server.auth import TokenSigner
from server.chat import Relay, handle_chat
from server.errors import (BUSY, INVALID, NOT_FOUND, REPLACED, SHARD_FULL, AuthFailed,
                           ClientError, CloseConnection, RateLimited)
from server.metrics import ShardMetrics
from server.npcs import NpcHook, npc_entities
from server.protocol import (Chat, Hello, Move, NpcCancel, Ping, Place, Remove, Who, encode,
                             state_frame, text_frame, with_re)
from server.sessions import Session, SessionTable, identify, now_ms
from server.settings import Settings
from worldstate.entities import Entity, Pose
from worldstate.errors import WorldError
from worldstate.records import PlayerRecord, StoreError
from worldstate.world import World

log = logging.getLogger("worldsmith.shard")


class Shard:
    """A running shard. `host`, `port`, `http_url` and `ws_url` are set once it listens."""

    def __init__(self, settings: Settings, config, store, db, signer: TokenSigner,
                 npcs: NpcHook | None = None) -> None:
        self.settings = settings
        self.config = config
        self.store = store
        self.db = db
        self.signer = signer
        self.world = World(config)
        self.sessions = SessionTable(settings.grace_s)
        self.metrics = ShardMetrics(lambda: len(self.sessions), lambda: self.connections)
        self.npcs = npcs or NpcHook()
        self.relay = Relay(self)
        self.placed_by: dict[str, str] = {}  # object id -> guest pid that placed it
        self.admins = frozenset(n.lower() for n in settings.admins)
        self.tick_no = 0
        self.connections = 0  # WebSocket connections accepted and not yet gone (server.wsconn)
        self.listener = None  # the server.listener.Listener serving this shard's port
        self.due: set[str] = set()  # players the next tick must visit even without a view diff
        self.host = settings.host
        self.port = settings.port
        self._tasks: set[asyncio.Task] = set()
        self._places = [{"name": p.name, "x": p.x, "y": p.y, "z": p.z} for p in config.places]

    # -- addresses ------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """The page to open in a browser."""
        return f"http://{_url_host(self.host)}:{self.port}/"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint."""
        return f"ws://{_url_host(self.host)}:{self.port}/ws"

    # -- lifecycle ------------------------------------------------------------------
    def populate(self, stored_objects) -> None:
        """Put NPCs, the world file's objects and the stored objects into the world."""
        for entity in npc_entities(self.config) + objects.initial_objects(self.config):
            self.world.add(entity)
        for rec in stored_objects:
            if self.world.get(rec.id) is not None:
                continue
            try:
                self.world.add(objects.from_record(rec))
            except WorldError as exc:  # one bad row must not keep the shard from starting
                log.warning("skipping stored object %s: %s", rec.id, exc)

    def spawn(self, coro) -> asyncio.Task:
        """Run a small background job owned by the shard (awaited at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain_tasks(self) -> None:
        """Cancel and await the shard's background jobs."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def db_call(self, fn, *args):
        """A store call the client waits for (write-before-acknowledge); timed by the DbWriter."""
        return await self.db.call(fn, *args)

    # -- output ---------------------------------------------------------------------
    def write(self, session: Session, data: bytes, kind: str, frame: bytes | None = None) -> bool:
        """Queue one text frame on the session's transport without waiting; False if closed.

        `frame` is `data` already framed by `text_frame` (shared when fanning out).
        """
        conn = session.conn
        transport = conn.transport
        if conn.protocol.state is not State.OPEN or transport.is_closing():
            return False
        # Straight to the transport: no drain, no per-write protocol bookkeeping. Safe
        # because the shard never fragments, and websockets' own control frames are
        # written to the same transport in order.
        transport.write(frame or text_frame(data))
        if transport.get_write_buffer_size() > self.settings.send_buffer_limit:
            self.due.add(session.pid)  # the tick checks it against the stuck limit
        self.metrics.messages_out.inc(kind)
        self.metrics.bytes_out.inc(kind, by=len(data))
        return True

    def send_to(self, pids, message: bytes | dict, kind: str | None = None) -> None:
        """Send one message to several players; encoded once, whatever their number."""
        if isinstance(message, dict):
            kind = kind or message.get("t", "?")
            message = encode(message)
        framed = text_frame(message)
        online = self.sessions.online
        for pid in pids:
            session = online.get(pid)
            if session is not None:
                self.write(session, message, kind or "?", framed)

    def reply(self, session: Session, message: dict, msg_id=None) -> None:
        """Send a reply to one client, with `re` when its message had an `id`."""
        self.write(session, encode(with_re(message, msg_id)), message["t"])

    def reply_error(self, session: Session, error: ClientError) -> None:
        """Send an `error` reply and count it."""
        self.metrics.errors.inc(error.code)
        self.write(session, encode(error.reply()), "error")

    # -- sessions -------------------------------------------------------------------
    async def admit(self, conn, hello: Hello) -> Session:
        """Turn a hello into an online session: welcome it and send its full view.

        Raises AuthFailed (4001) or CloseConnection (4013 when full).
        """
        ident = await identify(hello, signer=self.signer, call=self.db_call, store=self.store,
                               sessions=self.sessions)
        pose = None
        if ident.pid not in self.sessions.online:
            pose = self.sessions.held_pose(ident.pid)
            if pose is None and ident.claimed:
                if self.db.pending:  # its last pose may still be queued (write-behind)
                    await self.db.flush()
                rec = await self.db_call(self.store.load_player, ident.name)
                pose = Pose(rec.x, rec.y, rec.z, rec.yaw) if rec else None
        # Re-check after the awaits: others may have come in meanwhile.
        existing = self.sessions.online.get(ident.pid)
        if existing is None:
            holder = self.sessions.find(ident.name)
            if holder is not None and hello.token is None:  # someone took the name meanwhile
                raise AuthFailed("that name is online; send its token or password", re=hello.id)
            if len(self.sessions) >= self.settings.max_players:
                raise CloseConnection(SHARD_FULL, "shard full",
                                      ClientError(BUSY, "the shard is full; try later", re=hello.id))
            session = Session(ident.pid, ident.name, ident.claimed,
                              ident.claimed and ident.name.lower() in self.admins, conn, self.settings)
            self.world.add(Entity(ident.pid, "player", ident.name, pose or self._spawn_pose()))
            self.world.watch(ident.pid)
            self.sessions.add(session)
        else:
            session = existing
            old = session.conn
            session.rebind(conn, self.settings)
            self.spawn(old.close(REPLACED, "replaced by a newer connection"))
            self.metrics.closes.inc(str(REPLACED))
        self._welcome(session, hello)
        return session

    def _welcome(self, session: Session, hello: Hello) -> None:
        c = self.config
        welcome = {"t": "welcome", "v": 1, "you": session.pid, "name": session.name,
                   "token": self.signer.issue(session.pid, session.name, session.claimed),
                   "shard": self.settings.shard, "tick_hz": _number(self.settings.tick_hz), "aoi": c.aoi,
                   "speed": c.speed, "st": now_ms(), "bounds": list(c.bounds), "spawn": list(c.spawn),
                   # Worldsmith's additions (optional fields): the world's name and its named places.
                   "world": c.name, "places": self._places}
        self.reply(session, welcome, hello.id)
        self.send_full_view(session)

    def send_full_view(self, session: Session) -> None:
        """A state entering everything in view and leaving whatever else the client held."""
        view = self.world.reset_view(session.pid)
        ids = {e.id for e in view}
        enter = [encode(e.to_wire()) for e in view]
        leave = [encode(i) for i in session.known - ids] if session.known else []
        session.known = None
        session.stale = False
        frame = state_frame(self.tick_no, now_ms(), session.ack, enter, [], leave)
        if self.write(session, frame, "state"):
            session.sent_ack = session.ack

    def leave(self, session: Session, conn) -> None:
        """The connection ended: take the player out of the world unless it was replaced."""
        if session.conn is not conn or self.sessions.online.get(session.pid) is not session:
            return
        entity = self.world.get(session.pid)
        pose = entity.pose if entity is not None else None
        self.world.unwatch(session.pid)
        self.world.remove(session.pid)
        self.sessions.drop(session, pose)
        self.npcs.player_left(session.pid)
        if session.claimed and pose is not None:
            try:
                self.db.queue_pose(_pose_record(session.name, pose))
            except StoreError as exc:  # the writer is closed: the player has left all the same
                log.warning("pose of %s not saved: %s", session.name, exc)

    def _spawn_pose(self) -> Pose:
        c = self.config
        angle = random.uniform(0, 2 * math.pi)
        r = c.spawn_radius * math.sqrt(random.random())
        minx, minz, maxx, maxz = c.bounds
        x = min(max(c.spawn[0] + r * math.cos(angle), minx), maxx)
        z = min(max(c.spawn[2] + r * math.sin(angle), minz), maxz)
        return Pose(x, c.spawn[1], z, 0.0)

    def queue_dirty_poses(self) -> None:
        """Write-behind: queue the poses of claimed players that moved since last time."""
        for session in self.sessions.online.values():
            if session.pose_dirty and session.claimed:
                entity = self.world.get(session.pid)
                if entity is not None:
                    self.db.queue_pose(_pose_record(session.name, entity.pose))
            session.pose_dirty = False

    # -- input ----------------------------------------------------------------------
    async def dispatch(self, session: Session, msg) -> None:
        """Apply one parsed message from `session`. Raises ClientError for an error reply."""
        job = self.handle(session, msg)
        if job is not None:
            await job

    def handle(self, session: Session, msg):
        """Apply one parsed message now; return a coroutine still to await, or None.

        Only messages that need the database (place, remove) return one: everything else is
        done before this returns, so a connection needs no task for it. Raises ClientError
        for an error reply.
        """
        if type(msg) is Move:  # most messages: checked first, without the dispatch below
            if not session.limits.move.take():
                raise RateLimited(re=msg.id)
            if msg.seq <= session.ack:
                raise ClientError(INVALID, "seq must grow with every move", field="seq", re=msg.id)
            self.world.move(session.pid, Pose(msg.x, msg.y, msg.z, msg.yaw), now_ms())
            session.ack = msg.seq
            self.due.add(session.pid)
            session.pose_dirty = True
            return None
        if not session.limits.for_type(MESSAGE_TYPES[type(msg)]).take():
            raise RateLimited(re=msg.id)
        if isinstance(msg, Ping):
            self.reply(session, {"t": "pong", "ct": msg.ct, "st": now_ms()}, msg.id)
        elif isinstance(msg, Chat):
            handle_chat(self, session, msg)
        elif isinstance(msg, Place):
            return objects.place(self, session, msg)
        elif isinstance(msg, Remove):
            return objects.remove(self, session, msg)
        elif isinstance(msg, Who):
            players = self.relay.roster()
            self.reply(session, {"t": "who", "players": players, "total": len(players)}, msg.id)
        elif isinstance(msg, NpcCancel):
            if not self.npcs.cancel(session.pid, msg.reply):
                raise ClientError(NOT_FOUND, f"no answer {msg.reply!r} of yours is running",
                                  field="reply", re=msg.id)
        elif isinstance(msg, Hello):
            raise ClientError(INVALID, "hello was already accepted on this connection",
                              field="t", re=msg.id)
        return None


# The wire type of each parsed message class (for metrics and rate limits).
MESSAGE_TYPES = {Move: "move", Ping: "ping", Chat: "chat", Place: "place", Remove: "remove",
                 Who: "who", NpcCancel: "npc_cancel", Hello: "hello"}


def _pose_record(name: str, pose: Pose) -> PlayerRecord:
    return PlayerRecord(name, pose.x, pose.y, pose.z, pose.yaw, now_ms())


def _number(value: float) -> int | float:
    """20.0 -> 20 on the wire; non-integral values as they are."""
    return int(value) if float(value).is_integer() else value


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
