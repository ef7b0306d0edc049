"""One client's connection as a plain asyncio.Protocol around websockets' sans-I/O core.

An idle player costs what it holds, nothing more: no task, no queue, no timer. Bytes go
into `websockets.server.ServerProtocol`; its events (the HTTP request, then frames) are
handled synchronously in `data_received`; its bytes out go straight to the transport.
A task is started only for work that must await (hello's account checks, place/remove);
frames that arrive meanwhile wait in a small backlog so each client's messages keep their
order. Hello timeouts, close timeouts and keepalive pings are the `Listener`'s one sweep.

An admitted player's core is parked between reads: whenever a fresh core would be in its
state (the usual case: waiting for the next frame with nothing held), it is dropped and
`PARKED` (`server.wscore`) stands in, ~1.2 KB less per idle player. Moves, pings and pongs
are handled without it; anything else (other frames, a close, an error to send) gets a fresh
one first.

This is the one place that maps exceptions to what the client sees:
ClientError -> `error` reply (and a charge on the abuse bucket; empty -> 4008);
CloseConnection -> optional `error`, then its close code; StoreError -> `busy`;
anything else -> 1011, logged with its traceback, and only this connection is affected.
"""
from __future__ import annotations

import asyncio
import collections
import logging

from websockets.datastructures import Headers
from websockets.frames import Opcode, apply_mask as _apply_mask
from websockets.protocol import State
from websockets.server import ServerProtocol

from server.errors import (BUSY, INTERNAL_ERROR, INVALID, PROTOCOL_VIOLATION, Abuse, ClientError,
                           CloseConnection)
from server.protocol import Hello, ProtocolError, encode, parse
from server.shard import MESSAGE_TYPES as _MESSAGE_TYPES
from server.wscore import PARKED, Parked, is_fresh, new_core, open_core, restart_frame_parser
from worldstate.records import StoreError

log = logging.getLogger("worldsmith.connection")

# Frames held while an awaiting job runs; past this the socket stops being read, as
# websockets' own max_queue would (the client's sends then back up in TCP).
BACKLOG_LIMIT = 16

_DATA = (Opcode.TEXT, Opcode.BINARY)
_NO_HEADERS = Headers()


class ShardConnection(asyncio.Protocol):
    """One socket on the shard's port: plain HTTP, or a WebSocket player at /ws."""

    __slots__ = ("listener", "transport", "protocol", "session", "task", "backlog", "parts",
                 "closing", "counted", "heard", "pinged")

    def __init__(self, listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.protocol: ServerProtocol | Parked = new_core(max_size=listener.max_frame,
                                                          logger=listener.ws_logger)
        self.session = None        # set once hello is admitted
        self.task: asyncio.Task | None = None  # the awaiting job in progress, if any
        self.backlog: collections.deque | None = None  # frames waiting on that job
        self.parts: list | None = None  # a fragmented message: [opcode, data, data...]
        self.closing = False       # no more frames are handled once set
        self.counted = False       # counted in shard.connections (an accepted upgrade)
        self.heard = True          # data since the last keepalive sweep
        self.pinged = False        # a keepalive ping is unanswered

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport) -> None:
        """Register with the listener (for its sweep and for shutdown)."""
        self.transport = transport
        self.listener.conns.add(self)

    def data_received(self, data: bytes) -> None:
        """Feed the bytes to the WebSocket core and handle every event they complete.

        A parked connection first handles the frames that need no core (`_plain_frames`);
        only bytes left over get a core. Afterwards the core is parked again if it can be.
        """
        self.heard = True
        if self.protocol is PARKED:
            data = self._plain_frames(data)
            if not data:
                self.flush()  # e.g. a 1007 close (`fail` queues it on a fresh core)
                return
        proto = self._unpark()
        proto.receive_data(data)
        try:
            self._handle_events()
        except Exception:  # a bug in a route or the layer: this socket only, never the loop
            log.exception("closing a connection after an unexpected error")
            if proto.state is State.CONNECTING:
                proto.send_response(proto.reject(500, "internal error\n"))
            else:
                self.close_with(CloseConnection(INTERNAL_ERROR, "internal error"))
        self.flush()
        self._park()

    def eof_received(self) -> None:
        """The client half-closed: let the core finish, then the transport closes."""
        self._unpark().receive_eof()
        self.flush()

    def connection_lost(self, exc) -> None:
        """The socket is gone: the player leaves the world (unless replaced) at once."""
        self.closing = True
        self._leave()
        self.listener.forget(self)
        if self.counted:
            self.counted = False
            self.listener.shard.connections -= 1

    # -- output ---------------------------------------------------------------------
    def flush(self) -> None:
        """Write what the WebSocket core has to send; its end-of-stream closes the socket."""
        proto = self.protocol
        if proto is PARKED:  # parked only with nothing queued; whatever sends unparks first
            return
        for data in proto.data_to_send():
            if data:
                self.transport.write(data)
            else:  # a server closes TCP once the closing handshake is done (RFC 6455 7.1.1)
                self.transport.close()

    def close_with(self, exc: CloseConnection) -> None:
        """Send the error (if any) and start the closing handshake with the exception's code.

        The player leaves the world first: others must not wait on this client's close.
        """
        if self.closing:
            return
        self.closing = True
        self._leave()
        self.listener.waiting.pop(self, None)
        proto = self._unpark()
        if proto.state is not State.OPEN:
            if proto.state is State.CONNECTING:  # still plain HTTP: nothing to say
                self.transport.close()
            return
        metrics = self.listener.shard.metrics
        if exc.error is not None:
            metrics.errors.inc(exc.error.code)
            metrics.messages_out.inc("error")
            proto.send_text(encode(exc.error.reply()))
        metrics.closes.inc(str(exc.close_code))
        proto.send_close(exc.close_code, exc.reason)
        self.flush()
        self.listener.closing_since(self)

    async def close(self, code: int, reason: str = "") -> None:
        """Close with `code` (e.g. 4002 when a newer connection replaced this one)."""
        self.close_with(CloseConnection(code, reason))

    def ping(self) -> None:
        """Send a keepalive ping (the listener's sweep decides when)."""
        if self.closing:
            return
        proto = self.protocol
        if proto is PARKED:  # the frame the core would write, without waking one for it
            self.transport.write(_EMPTY_PING)
        elif proto.state is State.OPEN:
            proto.send_ping(b"")
            self.flush()

    # -- input ----------------------------------------------------------------------
    def _handle_events(self) -> None:
        for event in self.protocol.events_received():
            if self.closing:
                return
            opcode = getattr(event, "opcode", None)
            if opcode is None:
                self._request(event)
            elif opcode in _DATA:
                if event.fin:
                    self._message(event.data, opcode)
                else:
                    self.parts = [opcode, event.data]
            elif opcode is Opcode.CONT:
                self.parts.append(event.data)  # the core refuses a CONT without a start
                if event.fin:
                    parts, self.parts = self.parts, None
                    self._message(b"".join(parts[1:]), parts[0])
            elif opcode is Opcode.CLOSE:
                # The core answered the close; the player leaves now, not when TCP ends.
                self.closing = True
                self._leave()
        if self.protocol.parser_exc is not None and not self.closing:
            # The core failed the connection (1009 over max_frame, bad framing): it has
            # queued its close; the player leaves at once.
            self.closing = True
            self._leave()
            if self.protocol.close_sent is not None:
                self.listener.shard.metrics.closes.inc(str(self.protocol.close_sent.code))

    def _plain_frames(self, data: bytes) -> bytes:
        """Handle the whole, small, masked frames at the start of `data` that need no core.

        Called while parked, i.e. where a core would be open, at a frame boundary with nothing
        buffered and no fragmented message in progress, and would do nothing with such a frame
        but yield it: a player's moves (text frames; the core's generator-based parser costs
        several times what handling a move does) and an idle client's pings and pongs. A ping
        is answered here as the core would, with a pong carrying its payload (RFC 6455 5.5.2);
        a pong asks for nothing but the `heard` any data sets (5.5.3). Frames over max_frame
        are left to the core. Returns the bytes left for a core: anything else (other frames,
        fragments, a frame split across reads, or everything after a close began).
        """
        pos, n = 0, len(data)
        limit = self.listener.max_frame
        while n - pos >= 6 and not self.closing:
            first = data[pos]
            if first != _FIN_TEXT and first != _FIN_PING and first != _FIN_PONG:
                break
            length = data[pos + 1] ^ 0x80  # the mask bit must be set: client frames are masked
            if length < 126:
                start = pos + 6
            elif length == 126 and first == _FIN_TEXT:  # a control frame carries <= 125 bytes
                if n - pos < 8:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 8
            else:  # a 64-bit length, an unmasked frame, a long control frame: the core decides
                break
            end = start + length
            if end > n or length > limit:
                break
            payload = _apply_mask(data[start:end], data[start - 4:start])
            pos = end
            if first == _FIN_TEXT:
                self._message(payload, Opcode.TEXT)
            elif first == _FIN_PING:
                self.transport.write(bytes((_FIN_PONG, length)) + payload)  # unmasked, <= 125
        return data[pos:] if pos else data

    def _request(self, request) -> None:
        """The opening HTTP request: a plain page, a refusal, or the WebSocket upgrade."""
        listener = self.listener
        response = listener.routes(self, request)
        if response is None:
            response = self.protocol.accept(request)
            if response.status_code == 101:
                # Counted from here until the socket is gone, whatever happens in between.
                self.counted = True
                listener.shard.connections += 1
                listener.hello_due(self)
        self.protocol.send_response(response)
        # The core's suspended parser still holds the request (a local of its generator) for
        # as long as the socket lives: drop its headers, ~2.8 KB per idle player. Nothing
        # reads them once the response is sent.
        request.headers = _NO_HEADERS
        if response.status_code == 101:
            restart_frame_parser(self.protocol)

    def _message(self, data: bytes, opcode: Opcode) -> None:
        """One complete client message: handled now, or queued behind an awaiting job."""
        if opcode is Opcode.TEXT:
            try:
                data = data.decode()
            except UnicodeDecodeError as exc:  # RFC 6455 8.1: fail the connection, 1007
                self._unpark().fail(1007, f"{exc.reason} at position {exc.start}")
                self.closing = True
                self._leave()
                return
        # Binary frames stay bytes: parsing answers them with bad_json.
        if self.task is not None or self.backlog:
            if self.backlog is None:
                self.backlog = collections.deque()
            self.backlog.append(data)
            if len(self.backlog) >= BACKLOG_LIMIT:
                self.transport.pause_reading()
            return
        self._handle(data)

    def _handle(self, data: str | bytes) -> None:
        """One frame's text: the hello before admission, a game message after it."""
        try:
            if self.session is None:
                self._hello(data)
            else:
                self._play(data)
        except BaseException as exc:  # noqa: BLE001 - mapped to a reply or a close
            self._failed(exc, None)

    def _hello(self, data: str | bytes) -> None:
        """Before the hello is admitted: a valid hello starts admission; anything else 4000."""
        shard = self.listener.shard
        shard.metrics.bytes_in.inc("hello", by=len(data))
        try:
            msg = _parse(shard, data)
        except ProtocolError as exc:
            if exc.kind == "hello":  # a malformed hello: say why and let the client try again
                shard.metrics.errors.inc(exc.code)
                self.protocol.send_text(encode(exc.reply()))
                return
            raise CloseConnection(PROTOCOL_VIOLATION, "hello must be the first message", exc) from None
        if not isinstance(msg, Hello):
            raise CloseConnection(PROTOCOL_VIOLATION, "hello must be the first message",
                                  ClientError(INVALID, "hello must be the first message",
                                              field="t", re=msg.id))
        shard.metrics.messages_in.inc("hello")
        self.listener.waiting.pop(self, None)  # the hello timeout no longer applies
        restart_frame_parser(self.protocol)  # frees the hello frame (an idle player's last)
        self._start(self._admit(msg), msg.id)

    async def _admit(self, hello: Hello) -> None:
        shard = self.listener.shard
        try:
            session = await shard.admit(self, hello)
        except StoreError:
            # Accounts can't be checked: say so (the client may retry) rather than 1011 alone.
            log.exception("database error while admitting a player")
            raise CloseConnection(INTERNAL_ERROR, "database unavailable",
                                  ClientError(BUSY, "the database is unavailable; try again",
                                              re=hello.id)) from None
        self.session = session
        if self.closing:  # the socket went while admission awaited
            self._leave()

    def _play(self, data: str | bytes) -> None:
        """A message from an admitted player: parse, count, and dispatch."""
        session = self.session
        if session.conn is not self:
            return  # replaced: discard until the 4002 close completes
        shard = self.listener.shard
        metrics = shard.metrics
        try:
            msg = _parse(shard, data)
        except ProtocolError:
            metrics.messages_in.inc("invalid")
            metrics.bytes_in.inc("invalid", by=len(data))
            raise
        kind = _MESSAGE_TYPES[type(msg)]
        metrics.messages_in.inc(kind)
        metrics.bytes_in.inc(kind, by=len(data))
        try:
            job = shard.handle(session, msg)
        except (ClientError, StoreError) as exc:
            self._failed(exc, msg.id, kind)
            return
        if job is not None:
            self._start(job, msg.id, kind)

    # -- awaiting jobs ----------------------------------------------------------------
    def _start(self, job, msg_id, kind: str = "hello") -> None:
        self.task = self.listener.spawn(self._run(job, msg_id, kind))

    async def _run(self, job, msg_id, kind: str) -> None:
        try:
            await job
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - mapped to a reply or a close
            self._failed(exc, msg_id, kind)
        finally:
            self.task = None
        self.flush()
        self._drain()

    def _drain(self) -> None:
        """Handle the frames that waited on the job, until the next job or the end."""
        backlog = self.backlog
        while backlog and self.task is None and not self.closing:
            self._handle(backlog.popleft())
        if not backlog:
            self.backlog = None
            if not self.closing and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        self.flush()
        self._park()

    # -- the one exception ladder ---------------------------------------------------------
    def _failed(self, exc: BaseException, msg_id, kind: str | None = None) -> None:
        """Map an exception from handling a message to a reply or a close code."""
        session = self.session
        if isinstance(exc, StoreError):
            # The database refused or failed: the message changed nothing; say so.
            log.error("database error while handling %s from %s", kind, session and session.pid,
                      exc_info=exc)
            exc = ClientError(BUSY, "the database is unavailable; try again", re=msg_id)
        if isinstance(exc, ClientError):
            if exc.re is None:  # raised where the id is unknown (e.g. the MQTT relay)
                exc.re = msg_id
            if session is None:
                exc = CloseConnection(PROTOCOL_VIOLATION, "hello must be the first message", exc)
            else:
                if session.conn is self:  # a replaced connection's client is told nothing
                    self.listener.shard.reply_error(session, exc)
                if session.limits.abuse.take():
                    return
                exc = Abuse()
        if isinstance(exc, CloseConnection):
            self.close_with(exc)
            return
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        log.error("closing %s after an unexpected error", session.pid if session else "a client",
                  exc_info=exc)
        self.close_with(CloseConnection(INTERNAL_ERROR, "internal error"))

    def _leave(self) -> None:
        if self.session is not None:
            self.listener.shard.leave(self.session, self)

    # -- parking the core -----------------------------------------------------------------
    def _park(self) -> None:
        """Drop an admitted player's core while a fresh one would be in its state.

        Called after each read and each job; an idle player's core then holds nothing a new
        one lacks, and dropping it frees ~1.2 KB per player (its parser generator, stream
        reader and buffers, event and write lists). `_unpark` makes the new one when needed.
        """
        proto = self.protocol
        if (proto is PARKED or self.session is None or self.closing or self.parts is not None
                or not is_fresh(proto)):
            return
        self.protocol = PARKED

    def _unpark(self) -> ServerProtocol:
        """The connection's core: its own, or a fresh OPEN one if it was parked."""
        proto = self.protocol
        if proto is PARKED:
            proto = self.protocol = open_core(max_size=self.listener.max_frame,
                                              logger=self.listener.ws_logger)
        return proto


_FIN_TEXT = 0x81  # FIN, no RSV bits (no extensions are negotiated), opcode text
_FIN_PING = 0x89  # the same, opcode ping
_FIN_PONG = 0x8A  # the same, opcode pong
_EMPTY_PING = bytes((_FIN_PING, 0))  # a server's keepalive ping: unmasked, no payload


def _parse(shard, frame: bytes):
    s = shard.settings
    return parse(frame, max_chat=s.max_chat, name_pattern=s.name_pattern)
