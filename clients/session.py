"""`Session`: the connection plumbing under `clients.client.WorldClient`.

One reader task owns the socket's input: it parses each frame into a typed event
(`clients.events`), keeps the local view of entities up to date from `state` diffs,
resolves the call that a reply answers (matched by `id` → `re`), and queues the event for
iteration. Calls raise `ErrorReply` for `error` answers and `Closed` once the connection
is gone (see `clients.errors`).
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from typing import Any, Callable

import orjson
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from clients.errors import Closed, CloseCode, ErrorReply, ProtocolViolation
from clients.events import (Entity, Error, Event, NpcEnd, NpcStart, NpcToken, State, Welcome,
                            parse_event)
from clients.replies import ReplyStream

log = logging.getLogger("worldsmith.client")

SUBPROTOCOL = "world.v1"
# Frames from the shard can be large (a full view on entering a crowded area).
MAX_INBOUND_FRAME = 16 * 1024 * 1024


class _Pending:
    """A request waiting for its reply: which reply types answer it, and the future."""

    __slots__ = ("types", "future")

    def __init__(self, types: tuple[str, ...]):
        self.types = types
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()


class _Connecting:
    """What `WorldClient.connect` returns: use it with `async with`, or await it."""

    def __init__(self, cls: type, url: str, hello: dict, options: dict):
        self._cls, self._url, self._hello, self._options = cls, url, hello, options
        self._client = None

    def __await__(self):
        return self._cls._open(self._url, self._hello, **self._options).__await__()

    async def __aenter__(self):
        self._client = await self._cls._open(self._url, self._hello, **self._options)
        return self._client

    async def __aexit__(self, *exc_info) -> None:
        await self._client.close()


class Session:
    """A connected player's session; `WorldClient` adds the world's calls on top.

    Attributes: `welcome` (the `Welcome`), `you` (own entity id), `name`, `token` (for
    resuming), `entities` (id → `Entity`, the local view kept from `state` diffs), `ack`
    (highest move `seq` the shard applied), `dropped_events` (events discarded because
    nobody iterated and the queue passed `event_limit`), `closed` (`Closed` once closed).
    """

    def __init__(self, ws, welcome: Welcome, *, timeout: float, event_limit: int):
        self._ws = ws
        self.welcome = welcome
        self.timeout = timeout
        self.entities: dict[str, Entity] = {}
        self.ack = 0
        self.dropped_events = 0
        self.closed: Closed | None = None
        self._events: collections.deque[Event] = collections.deque()
        self._event_limit = event_limit
        self._wakeup = asyncio.Event()
        self._ids = itertools.count(1)
        self._seq = 0
        self._pending: dict[str, _Pending] = {}
        self._expects: list[tuple[Callable[[Event], bool], asyncio.Future]] = []
        self._streams: dict[str, ReplyStream] = {}
        self._move_errors: dict[int, ErrorReply] = {}
        self._last_error: ErrorReply | None = None
        self._closing = False
        self._reader: asyncio.Task | None = None

    # ---- opening and closing -------------------------------------------------------------

    @classmethod
    def connect(cls, url: str, *, name: str = "", password: str | None = None,
                token: str | None = None, timeout: float = 10.0,
                event_limit: int = 10_000) -> _Connecting:
        """Open a session: WebSocket with subprotocol `world.v1`, `hello`, `welcome`.

        `password` claims `name` on first use and is required later; `token` (from an
        earlier `welcome`) resumes that player and makes name and password irrelevant.
        Returns once the first `state` (own entity included) is in `entities`.
        A name the shard rejects raises `ErrorReply` (`invalid`, field `name`).
        Use as `async with WorldClient.connect(...) as c`, or `c = await ...connect(...)`
        and `await c.close()`. Raises `Closed` (e.g. code 4001 with `.error` the `auth`
        error) when the shard refuses, `ProtocolViolation` when it breaks the contract,
        `TimeoutError` after `timeout` seconds. `timeout` is also the default for calls.
        """
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if event_limit < 1:
            raise ValueError("event_limit must be at least 1")
        hello: dict[str, Any] = {"t": "hello", "v": 1}
        if name or token is None:  # with a token the shard ignores the name anyway
            hello["name"] = name
        if password is not None:
            hello["password"] = password
        if token is not None:
            hello["token"] = token
        return _Connecting(cls, url, hello, {"timeout": timeout, "event_limit": event_limit})

    @classmethod
    async def _open(cls, url: str, hello: dict, *, timeout: float,
                    event_limit: int) -> "Session":
        ws = await ws_connect(url, subprotocols=[SUBPROTOCOL], proxy=None,
                              max_size=MAX_INBOUND_FRAME, open_timeout=timeout)
        try:
            if ws.subprotocol != SUBPROTOCOL:
                raise ProtocolViolation(f"shard selected subprotocol {ws.subprotocol!r}")
            await ws.send(orjson.dumps(hello).decode())
            welcome, first_state = await asyncio.wait_for(cls._handshake(ws), timeout)
        except BaseException:
            await ws.close()
            raise
        client = cls(ws, welcome, timeout=timeout, event_limit=event_limit)
        client._push(welcome)
        client._dispatch(first_state)
        client._reader = asyncio.create_task(client._read(), name=f"world client {welcome.you}")
        return client

    @staticmethod
    async def _handshake(ws) -> tuple[Welcome, dict]:
        """Read `welcome` and the `state` that follows it; map a refusal to `Closed`."""
        error: ErrorReply | None = None
        welcome: Welcome | None = None
        try:
            while True:
                msg = orjson.loads(await ws.recv())
                t = msg.get("t")
                if t == "error":
                    error = ErrorReply(msg.get("code", ""), msg.get("msg", ""), msg.get("field"))
                    if error.code == "invalid":
                        raise error  # a malformed hello: the shard waits for a better one
                elif t == "welcome" and welcome is None:
                    welcome = parse_event(msg)
                elif t == "state" and welcome is not None:
                    return welcome, msg
                elif t in ("welcome", "state"):
                    raise ProtocolViolation(f"{t!r} out of order during hello")
                # Anything else before the first state is a newer shard's addition: skip it.
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else CloseCode.ABNORMAL
            reason = exc.rcvd.reason if exc.rcvd else ""
            raise Closed(code, reason, error) from None

    async def close(self) -> None:
        """Close the connection normally (1000) and stop the reader. Safe to call twice."""
        self._closing = True
        await self._ws.close()
        if self._reader is not None:
            await self._reader

    # ---- who we are ----------------------------------------------------------------------

    @property
    def you(self) -> str:
        """Own entity id (`p:…`)."""
        return self.welcome.you

    @property
    def name(self) -> str:
        """Own player name."""
        return self.welcome.name

    @property
    def token(self) -> str:
        """Session token: pass it to `connect(token=...)` to resume this player."""
        return self.welcome.token

    @property
    def pose(self) -> Entity | None:
        """Own entity as the shard last reported it (the clamped truth), if in view."""
        return self.entities.get(self.you)

    # ---- reading -------------------------------------------------------------------------

    async def _read(self) -> None:
        """Reader task: dispatch every frame until the connection closes."""
        try:
            async for frame in self._ws:
                try:
                    msg = orjson.loads(frame)
                except orjson.JSONDecodeError:
                    continue  # a shard bug must not kill the client; nothing to dispatch
                if isinstance(msg, dict):
                    try:
                        self._dispatch(msg)
                    except Exception:  # a bug here must not silently kill the reader
                        log.exception("world client: failed to handle %.200r", msg)
        except ConnectionClosed:
            pass  # the close code is read below either way
        finally:
            code = self._ws.close_code if self._ws.close_code is not None else CloseCode.ABNORMAL
            self._on_closed(Closed(code, self._ws.close_reason or "", self._last_error))

    def _dispatch(self, msg: dict) -> None:
        """Apply one message: view, replies, streams, expectations, event queue."""
        try:
            event = parse_event(msg)
        except (KeyError, TypeError, ValueError, IndexError):
            return  # malformed by contract; skipping it keeps the client alive
        # An error right before a close explains it (e.g. `auth`); older ones do not.
        self._last_error = (ErrorReply(event.code, event.msg, event.field, event.re)
                            if isinstance(event, Error) else None)
        if isinstance(event, State):
            self._apply_state(event)
        elif isinstance(event, NpcToken):
            stream = self._streams.get(event.reply)
            if stream is not None:
                stream._piece(event.text)
        elif isinstance(event, NpcEnd):
            stream = self._streams.pop(event.reply, None)
            if stream is not None:
                stream._finish(event)
        re = msg.get("re")
        if re is not None:
            self._answer(str(re), msg.get("t"), event)
        for predicate, future in list(self._expects):
            if future.done():
                continue
            try:
                if predicate(event):
                    future.set_result(event)
            except Exception as exc:  # the caller's predicate failed: tell the caller
                future.set_exception(exc)
        self._expects = [(p, f) for p, f in self._expects if not f.done()]
        self._push(event)

    def _apply_state(self, state: State) -> None:
        for entity in state.enter:
            self.entities[entity.id] = entity
        for u in state.upd:
            old = self.entities.get(u.id)
            if old is not None:
                self.entities[u.id] = old.moved(u.x, u.y, u.z, u.yaw)
        for gone in state.leave:
            self.entities.pop(gone, None)
        self.ack = max(self.ack, state.ack)

    def _answer(self, re: str, t: str, event: Event) -> None:
        """Resolve the request that `re` names, if it is still waiting."""
        if isinstance(event, Error) and re.startswith("m") and re[1:].isdigit():
            self._move_errors[int(re[1:])] = ErrorReply(event.code, event.msg, event.field, re)
            while len(self._move_errors) > 256:  # bounded: old move errors are of no use
                del self._move_errors[next(iter(self._move_errors))]
        pending = self._pending.get(re)
        if pending is None or pending.future.done():
            return
        if isinstance(event, Error):
            pending.future.set_exception(ErrorReply(event.code, event.msg, event.field, re))
        elif t in pending.types:
            if isinstance(event, NpcStart):
                stream = ReplyStream(event)
                self._streams[event.reply] = stream
                pending.future.set_result(stream)
            else:
                pending.future.set_result(event)

    def _push(self, event: Event) -> None:
        if len(self._events) >= self._event_limit:
            self._events.popleft()
            self.dropped_events += 1
        self._events.append(event)
        self._wakeup.set()

    def _on_closed(self, closed: Closed) -> None:
        self.closed = closed
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(closed)
        for _, future in self._expects:
            if not future.done():
                future.set_exception(closed)
                future.exception()  # mark retrieved: an abandoned expect must not log noise
        for stream in self._streams.values():
            stream._fail(closed)
        self._streams.clear()
        self._wakeup.set()

    def __aiter__(self) -> "Session":
        return self

    async def __anext__(self) -> Event:
        """The next event, in arrival order. Ends after `close()`; raises `Closed` when the
        shard closed the connection (e.g. `REPLACED`, `SHUTTING_DOWN`)."""
        while not self._events:
            if self.closed is not None:
                if self._closing:
                    raise StopAsyncIteration
                raise self.closed
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._events.popleft()

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next queued event, waiting at most `timeout` seconds (default: the client's)."""
        return await asyncio.wait_for(self.__anext__(), timeout or self.timeout)

    def expect(self, predicate: Callable[[Event], bool]) -> asyncio.Future:
        """A future for the first event from now on for which `predicate` is true.

        Call it before doing what causes the event, then await it (with a timeout). It does
        not consume the event from the iterator. Fails with `Closed` if the connection closes.
        """
        future = asyncio.get_running_loop().create_future()
        if self.closed is not None:
            future.set_exception(self.closed)
        else:
            self._expects.append((predicate, future))
        return future

    async def wait_for(self, predicate: Callable[[Event], bool],
                       timeout: float | None = None) -> Event:
        """Wait for the next event matching `predicate` (see `expect`)."""
        return await asyncio.wait_for(self.expect(predicate), timeout or self.timeout)

    # ---- sending -------------------------------------------------------------------------

    async def send(self, msg: dict) -> None:
        """Send one raw message (a dict with `t`). Raises `Closed` if the connection is gone."""
        if self.closed is not None:
            raise self.closed
        try:
            await self._ws.send(orjson.dumps(msg).decode())
        except ConnectionClosed:
            if self._reader is not None:
                await self._reader  # sets self.closed with the real close code
            raise self.closed or Closed(CloseCode.ABNORMAL) from None

    async def request(self, msg: dict, answers: tuple[str, ...],
                      timeout: float | None = None) -> Any:
        """Send `msg` with a fresh `id` and return the first reply of a type in `answers`
        that carries it back as `re`. Raises `ErrorReply`, `Closed` or `TimeoutError`."""
        rid = f"r{next(self._ids)}"
        pending = self._pending[rid] = _Pending(answers)
        try:
            await self.send({**msg, "id": rid})
            return await asyncio.wait_for(pending.future, timeout or self.timeout)
        finally:
            del self._pending[rid]
