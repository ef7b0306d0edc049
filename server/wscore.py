"""websockets' sans-I/O core as the shard keeps it: made, trimmed, and parked.

A `ServerProtocol` would live as long as its socket, and for an idle player most of what it
holds is dead weight: its frame parser is a generator suspended mid-`parse()` that keeps the
handshake request and the last frame reachable, and the core itself (that generator, its
stream reader and buffer, its event and write lists) is ~1.2 KB that a fresh core would hold
just the same. `restart_frame_parser` swaps in a fresh parser; `is_fresh` says when the whole
core may be dropped (its connection then holds `PARKED`) and `open_core` makes the core that
replaces it. Each is exact only while the core waits at a frame boundary with nothing
buffered, which `at_frame_boundary` reads off the suspended generators (websockets 17).
"""
from __future__ import annotations

import uuid

from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

SUBPROTOCOL = "world.v1"
_SUBPROTOCOLS = [SUBPROTOCOL]


class Parked:
    """Stands in for a parked connection's core: it is OPEN, and nothing more.

    `Shard.write` and `Ticker._write` check `conn.protocol.state` on every write (20,000 a
    second), so a parked connection must read OPEN there at no extra cost (a class attribute:
    ~20 ns against the core's property, ~43 ns). Anything else asked of it is an
    AttributeError: code that needs the core gets one first (`ShardConnection._unpark`).
    """

    __slots__ = ()
    state = State.OPEN


PARKED = Parked()


def new_core(*, max_size: int, logger, state: State = State.CONNECTING) -> ServerProtocol:
    """A core for one socket on the shard's port: world.v1, inbound frames up to max_size."""
    return ServerProtocol(subprotocols=_SUBPROTOCOLS, max_size=max_size, logger=logger,
                          state=state)


def open_core(*, max_size: int, logger) -> ServerProtocol:
    """A fresh core past the handshake: a parked connection's core as it was when parked.

    The handshake's other results (subprotocol, origin) are not restored: nothing reads them
    after the upgrade, and no extensions are offered, so frames parse and serialise the same.
    """
    proto = new_core(max_size=max_size, logger=logger, state=State.OPEN)
    restart_frame_parser(proto)  # the frame loop alone, without the handshake step around it
    return proto


def is_fresh(proto: ServerProtocol) -> bool:
    """True when `proto` is in the state `open_core` makes: open, its parser at a frame
    boundary with nothing buffered, no fragmented message either way, nothing to send or to
    hand over, no close sent or received, no parser error."""
    return (proto.state is State.OPEN and proto.current_size is None
            and not proto.expect_continuation_frame and not proto.writes and not proto.events
            and proto.close_sent is None and proto.close_rcvd is None
            and proto.parser_exc is None and at_frame_boundary(proto))


def restart_frame_parser(proto: ServerProtocol) -> None:
    """Give the core a fresh frame parser, when that is exact, to free what the old one holds.

    The parser is a generator suspended for the socket's life. After the handshake it still
    holds the request (a local of the handshake step), and after any frame that frame and
    its payload (~0.8 KB per idle player in all). A new `Protocol.parse` generator is the
    same state whenever the old one waits at a frame boundary with nothing buffered; when
    it doesn't (the client sent more already), the old one is kept.
    """
    if not at_frame_boundary(proto):
        return  # mid-frame, or more is buffered already
    proto.parser = Protocol.parse(proto)
    next(proto.parser)  # runs to its wait for the next frame, as the old one was
    proto.id = _NO_ID  # a fresh uuid per connection, read only by websockets' debug logs


def at_frame_boundary(proto: Protocol) -> bool:
    """True when the core's frame parser waits for a new frame with nothing buffered."""
    frames = proto.parser
    if frames.gi_code is _SERVER_PARSE:  # the handshake step delegating to the frame loop
        frames = frames.gi_yieldfrom
    if frames is None or frames.gi_code is not _FRAME_PARSE or proto.reader.buffer:
        return False
    waiting = frames.gi_yieldfrom
    return waiting is not None and waiting.gi_code is _AT_EOF


_SERVER_PARSE = ServerProtocol.parse.__code__
_FRAME_PARSE = Protocol.parse.__code__
_AT_EOF = StreamReader.at_eof.__code__
_NO_ID = uuid.UUID(int=0)
