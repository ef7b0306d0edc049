"""One task per connection: the hello phase, then read -> parse -> dispatch until it ends.

This is the one place that maps exceptions to what the client sees:
ClientError -> `error` reply (and a charge on the abuse bucket; empty -> 4008);
CloseConnection -> optional `error`, then its close code; anything else -> 1011, logged
with its traceback, and only this connection is affected.
"""
from __future__ import annotations

import asyncio
import logging

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from server.errors import (BUSY, INTERNAL_ERROR, INVALID, PROTOCOL_VIOLATION, Abuse, ClientError,
                           CloseConnection)
from server.protocol import Hello, ProtocolError, encode, parse
from server.shard import message_type
from worldstate.records import StoreError

log = logging.getLogger("worldsmith.connection")

# How long a closing connection's leftover input is read and discarded.
CLOSE_DRAIN_S = 5.0


async def serve_connection(shard, conn) -> None:
    """The websockets handler for one client."""
    _forget_handshake(conn)
    session = None
    close: CloseConnection | None = None
    try:
        session = await _hello_phase(shard, conn)
        await _read_loop(shard, session, conn)
    except CloseConnection as exc:
        close = exc
    except ConnectionClosed:
        pass
    except Exception:
        log.exception("closing %s after an unexpected error", session.pid if session else "a client")
        close = CloseConnection(INTERNAL_ERROR, "internal error")
    finally:
        # Leave before the closing handshake: others must not wait on this client's close.
        if session is not None:
            shard.leave(session, conn)
    if close is not None:
        await _close(shard, conn, close)


# Stands in for every connection's handshake once it is done (see _forget_handshake).
_DONE_REQUEST = Request("/ws", Headers())
_DONE_RESPONSE = Response(101, "Switching Protocols", Headers())


def _forget_handshake(conn) -> None:
    """Drop the handshake's request and response (~4 KB of headers per idle player).

    websockets only tests `request is None` after the handshake, so a shared stand-in
    keeps it working; nothing in the shard reads the headers once the socket is open.
    """
    conn.request = _DONE_REQUEST
    conn.response = _DONE_RESPONSE


async def _close(shard, conn, exc: CloseConnection) -> None:
    """Send the error (if any) and close with the exception's code.

    Keeps reading (and discarding) meanwhile: with frames still queued unread, websockets
    stops reading the socket and would never see the client's answering close frame.
    """
    if exc.error is not None:
        shard.metrics.errors.inc(exc.error.code)
        shard.metrics.messages_out.inc("error")
        try:
            await conn.send(encode(exc.error.reply()).decode())
        except ConnectionClosed:
            return
    shard.metrics.closes.inc(str(exc.close_code))
    closer = asyncio.ensure_future(conn.close(exc.close_code, exc.reason))
    try:
        async with asyncio.timeout(CLOSE_DRAIN_S):
            async for _ in conn:
                pass
    except (ConnectionClosed, TimeoutError):
        pass
    await closer


def _parse(shard, frame):
    s = shard.settings
    return parse(frame, max_chat=s.max_chat, name_pattern=s.name_pattern)


async def _hello_phase(shard, conn):
    """Wait for a valid hello within hello_timeout_s; anything else first closes 4000."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + shard.settings.hello_timeout_s
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                frame = await conn.recv()
        except TimeoutError:
            raise CloseConnection(PROTOCOL_VIOLATION, "no hello in time") from None
        shard.metrics.bytes_in.inc("hello", by=len(frame))
        try:
            msg = _parse(shard, frame)
        except ProtocolError as exc:
            if exc.kind == "hello":
                shard.metrics.errors.inc(exc.code)
                await conn.send(encode(exc.reply()).decode())
                continue  # a malformed hello: say why and let the client try again
            raise CloseConnection(PROTOCOL_VIOLATION, "hello must be the first message", exc) from None
        if not isinstance(msg, Hello):
            raise CloseConnection(PROTOCOL_VIOLATION, "hello must be the first message",
                                  ClientError(INVALID, "hello must be the first message",
                                              field="t", re=msg.id))
        shard.metrics.messages_in.inc("hello")
        try:
            return await shard.admit(conn, msg)
        except StoreError:
            # Accounts can't be checked: say so (the client may retry) rather than 1011 alone.
            log.exception("database error while admitting a player")
            raise CloseConnection(INTERNAL_ERROR, "database unavailable",
                                  ClientError(BUSY, "the database is unavailable; try again",
                                              re=msg.id)) from None


async def _read_loop(shard, session, conn) -> None:
    metrics = shard.metrics
    async for frame in conn:
        if session.conn is not conn:
            continue  # replaced: discard until the 4002 close completes
        try:
            msg = _parse(shard, frame)
            kind = message_type(msg)
            metrics.messages_in.inc(kind)
            metrics.bytes_in.inc(kind, by=len(frame))
            try:
                await shard.dispatch(session, msg)
            except ClientError as exc:
                if exc.re is None:  # raised where the id is unknown (e.g. the MQTT relay)
                    exc.re = msg.id
                raise
            except StoreError:
                # The database refused or failed: the message changed nothing; say so.
                log.exception("database error while handling %s from %s", kind, session.pid)
                raise ClientError(BUSY, "the database is unavailable; try again", re=msg.id) from None
        except ClientError as exc:
            if isinstance(exc, ProtocolError):
                metrics.messages_in.inc("invalid")
                metrics.bytes_in.inc("invalid", by=len(frame))
            shard.reply_error(session, exc)
            if not session.limits.abuse.take():
                raise Abuse() from None
