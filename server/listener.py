"""The shard's port: accepts sockets, sweeps timeouts and keepalive, closes all at shutdown.

One sweep task serves every connection (hello timeouts, close timeouts, keepalive pings),
so a connected player costs no timer and no task of its own (see `server.wsconn`). The
`Listener` owns that sweep and the connections' awaiting jobs, and cancels them on close.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from server.errors import GOING_AWAY, INTERNAL_ERROR, PROTOCOL_VIOLATION, CloseConnection
from server.wsconn import ShardConnection

log = logging.getLogger("worldsmith.listener")

# A client that sends nothing for KEEPALIVE_S gets a ping; silent for another KEEPALIVE_S,
# it is closed 1011 (websockets' own defaults: ping_interval=20, ping_timeout=20).
KEEPALIVE_S = 20.0
# How long a closing handshake may take before the socket is cut.
CLOSE_TIMEOUT_S = 3.0
# Pending TCP connections the kernel holds for accept(): thousands of players may connect
# within a second (asyncio's default of 100 drops SYNs and stalls them for seconds).
ACCEPT_BACKLOG = 4096


class Listener:
    """Serves one shard's port: HTTP routes and WebSocket players, no task per connection."""

    def __init__(self, shard, routes, *, keepalive_s: float = KEEPALIVE_S) -> None:
        self.shard = shard
        self.routes = routes           # (conn, request) -> Response | None (see server.http)
        self.max_frame = shard.settings.max_frame
        self.ws_logger = logging.getLogger("websockets.server")
        self.keepalive_s = keepalive_s
        self.conns: set[ShardConnection] = set()
        self.waiting: dict[ShardConnection, float] = {}   # upgraded, no hello yet: deadline
        self.closing: dict[ShardConnection, float] = {}   # closing handshake: deadline
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._all_gone: asyncio.Future | None = None

    @property
    def sockets(self):
        """The listening sockets."""
        return self.server.sockets

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port and start the sweep."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ShardConnection(self), host, port,
                                               backlog=ACCEPT_BACKLOG)
        self._sweeper = loop.create_task(self._sweep(), name="worldsmith-sweep")

    # -- bookkeeping the connections call ------------------------------------------------
    def spawn(self, coro) -> asyncio.Task:
        """Run one connection's awaiting job (owned here: cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def hello_due(self, conn: ShardConnection) -> None:
        """The upgrade is accepted: hello must follow within hello_timeout_s."""
        self.waiting[conn] = asyncio.get_running_loop().time() + self.shard.settings.hello_timeout_s

    def closing_since(self, conn: ShardConnection) -> None:
        """A close frame went out: the socket is cut if the client doesn't answer in time."""
        self.closing[conn] = asyncio.get_running_loop().time() + CLOSE_TIMEOUT_S

    def forget(self, conn: ShardConnection) -> None:
        """The socket is gone."""
        self.conns.discard(conn)
        self.waiting.pop(conn, None)
        self.closing.pop(conn, None)
        if not self.conns and self._all_gone is not None and not self._all_gone.done():
            self._all_gone.set_result(None)

    # -- the one sweep ------------------------------------------------------------------
    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        # Fine enough for the hello timeout (a quarter of it), and at most once a second.
        period = min(1.0, self.shard.settings.hello_timeout_s / 4, CLOSE_TIMEOUT_S / 4)
        next_keepalive = loop.time() + self.keepalive_s
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            try:
                self._expire(now)
                if now >= next_keepalive:
                    next_keepalive = now + self.keepalive_s
                    self._keepalive()
            except Exception:  # the sweep must outlive any one connection's trouble
                log.exception("connection sweep failed")

    def _expire(self, now: float) -> None:
        late = [c for c, deadline in self.waiting.items() if deadline <= now]
        for conn in late:
            conn.close_with(CloseConnection(PROTOCOL_VIOLATION, "no hello in time"))
        stuck = [c for c, deadline in self.closing.items() if deadline <= now]
        for conn in stuck:
            del self.closing[conn]
            conn.transport.abort()

    def _keepalive(self) -> None:
        """Ping who was silent since the last round; close who stayed silent after a ping."""
        for conn in list(self.conns):
            if conn.heard:
                conn.heard = conn.pinged = False
            elif not conn.pinged:
                conn.pinged = True
                conn.ping()
            else:
                conn.close_with(CloseConnection(INTERNAL_ERROR, "keepalive ping timeout"))

    # -- shutdown -------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop accepting, close every client 1001, wait (bounded) for them, cancel jobs."""
        if self.server is None:
            return
        self.server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        loop = asyncio.get_running_loop()
        self._all_gone = loop.create_future()
        for conn in list(self.conns):
            conn.close_with(CloseConnection(GOING_AWAY, "shard shutting down"))
        if self.conns:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._all_gone
        for conn in list(self.conns):
            conn.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Aborted transports report connection_lost on the next loop turns.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.server.wait_closed()
