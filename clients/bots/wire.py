"""A lean client WebSocket over a raw asyncio transport, for thousands of bots in one process.

The bots are a load generator: every microsecond spent framing is a microsecond not spent
measuring the shard. So this module speaks just enough of RFC 6455 for protocol v1
(a client handshake offering `world.v1`, unmasked text frames from the server, pings,
close) on a plain `asyncio.Protocol`, with no per-connection task and no compression.

It calls back into a listener object (a bot):
`on_open(conn)`, `on_text(payload: bytes, now: float)`, `on_close(code: int | None, why: str)`.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOL = "world.v1"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Close codes the bots themselves report when no close frame arrived.
NO_CLOSE_FRAME = 1006
MAX_HANDSHAKE = 16 * 1024
# A zero masking key: masking exists to stop browser scripts from poisoning proxy caches,
# which cannot happen between a load generator and a shard on loopback. The shard unmasks
# either way, so its cost is unchanged; ours drops to nothing.
_ZERO_MASK = b"\x00\x00\x00\x00"


class BotError(Exception):
    """Root of the bots' exceptions."""


class HandshakeError(BotError):
    """The server did not upgrade the connection to a `world.v1` WebSocket."""


class Counters:
    """Traffic counters shared by every connection of one swarm (plain ints: cheap)."""

    __slots__ = ("msgs_in", "msgs_out", "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """Return one final client frame (masked with a zero key) carrying `payload`."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + _ZERO_MASK + payload


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` value a server must answer to `key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class WsConnection(asyncio.Protocol):
    """One bot's WebSocket: handshake, then frames in and out on the raw transport."""

    def __init__(self, listener, host: str, port: int, path: str, counters: Counters) -> None:
        self.listener = listener
        self.counters = counters
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closing = False
        self.close_code: int | None = None
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self.closed = loop.create_future()  # resolved when TCP is gone, whoever closed it
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
        ).encode()
        self._buf = b""
        self._frag: list[bytes] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        """Send the upgrade request as soon as TCP is up."""
        self.transport = transport
        transport.write(self._request)
        self.counters.bytes_out += len(self._request)

    def data_received(self, data: bytes) -> None:
        """Feed bytes: finish the handshake, then parse every complete frame."""
        self.counters.bytes_in += len(data)
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if not self.open:
            data = self._handshake(data)
            if not data:
                return
        self._frames(data)

    def connection_lost(self, exc) -> None:
        """Report the close once, with the code the server sent (1006 when none came)."""
        was_open = self.open
        self.open = False
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(f"connection lost during handshake: {exc}"))
            return
        if was_open or self.close_code is not None:
            code = self.close_code if self.close_code is not None else NO_CLOSE_FRAME
            self.listener.on_close(code, "" if exc is None else str(exc))

    # -- sending ---------------------------------------------------------------------
    def send_text(self, payload: bytes) -> bool:
        """Send one text frame; False when the connection is no longer open."""
        if not self.open or self.closing:
            return False
        frame = encode_frame(OP_TEXT, payload)
        self.transport.write(frame)
        c = self.counters
        c.msgs_out += 1
        c.bytes_out += len(frame)
        return True

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; the server closes TCP after answering."""
        if self.transport is None or self.closing:
            return
        self.closing = True
        if self.open:
            self.transport.write(encode_frame(OP_CLOSE, code.to_bytes(2, "big")))
        else:
            self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection at once (used when a server never finishes closing)."""
        if self.transport is not None:
            self.transport.abort()

    # -- parsing ---------------------------------------------------------------------
    def _handshake(self, data: bytes) -> bytes:
        """Consume the HTTP 101 answer; return what follows it (the first frames)."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HANDSHAKE:
                self._fail_handshake("handshake answer too large")
            else:
                self._buf = data
            return b""
        lines = data[:end].decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(status) < 2 or status[1] != "101":
            self._fail_handshake(f"status {lines[0]!r}")
        elif headers.get("sec-websocket-accept") != accept_key(self._key):
            self._fail_handshake("bad Sec-WebSocket-Accept")
        elif headers.get("sec-websocket-protocol") != SUBPROTOCOL:
            self._fail_handshake(f"subprotocol {headers.get('sec-websocket-protocol')!r}")
        elif self.opened.done():  # the caller gave up waiting (timeout): drop the connection
            self.transport.abort()
        else:
            self.open = True
            self.opened.set_result(self)
            return data[end + 4:]
        return b""

    def _fail_handshake(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(why))
        self.transport.abort()

    def _frames(self, data: bytes) -> None:
        """Parse every complete frame in `data`; keep the incomplete tail for later."""
        pos, size = 0, len(data)
        now = time.monotonic()
        listener = self.listener
        while size - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(data[pos + 2:pos + 4], "big")
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2:pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4  # a masked server frame is a protocol error; tolerate and unmask
            end = pos + head + n
            if end > size:
                break
            payload = data[pos + head:end]
            if b1 & 0x80:
                payload = _unmask(data[pos + head - 4:pos + head], payload)
            pos = end
            opcode = b0 & 0x0F
            if opcode == OP_TEXT and b0 & 0x80:
                self.counters.msgs_in += 1
                listener.on_text(payload, now)
            else:
                self._control(opcode, b0 & 0x80, payload, now)
        if pos < size:
            self._buf = data[pos:]

    def _control(self, opcode: int, fin: int, payload: bytes, now: float) -> None:
        """Handle fragments, pings and close frames (rare: kept off the hot path)."""
        if opcode in (OP_TEXT, OP_BINARY):
            self._frag = [payload]
        elif opcode == OP_CONT and self._frag is not None:
            self._frag.append(payload)
            if fin:
                whole, self._frag = b"".join(self._frag), None
                self.counters.msgs_in += 1
                self.listener.on_text(whole, now)
        elif opcode == OP_PING:
            if not self.closing:
                self.transport.write(encode_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closing:
                self.closing = True
                self.transport.write(encode_frame(OP_CLOSE, payload[:2]))
            self.transport.close()


def _unmask(key: bytes, payload: bytes) -> bytes:
    """XOR `payload` with the 4-byte `key` (only for misbehaving servers)."""
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


async def connect(listener, host: str, port: int, path: str, counters: Counters,
                  timeout: float = 10.0) -> WsConnection:
    """Open TCP and upgrade it; return the open connection or raise `HandshakeError`/`OSError`."""
    loop = asyncio.get_running_loop()
    transport, conn = await asyncio.wait_for(
        loop.create_connection(lambda: WsConnection(listener, host, port, path, counters), host, port),
        timeout)
    try:
        return await asyncio.wait_for(conn.opened, timeout)
    except BaseException:
        transport.abort()
        raise
