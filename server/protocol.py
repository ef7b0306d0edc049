"""Protocol v1 at the edge: inbound frames -> typed immutable messages; outbound encoders.

`parse(frame)` either returns one of the message classes below or raises `ProtocolError`
carrying the error code, the offending field and the message's `id` (as `re`). Nothing
past this module looks at raw JSON.
"""
from __future__ import annotations

import math
import re as _re
from typing import NamedTuple

import orjson

from server.errors import BAD_JSON, INVALID, UNKNOWN_TYPE, ClientError

MsgId = str | int | None
_COLOR = _re.compile(r"#[0-9a-fA-F]{6}")
_SHAPE = _re.compile(r"[a-z][a-z0-9_-]{0,23}")
CHANNELS = ("say", "shout", "global", "private")


class ProtocolError(ClientError):
    """An inbound frame that is not a valid protocol v1 message.

    `kind` is the frame's `t` when the frame got that far (e.g. "hello" with a bad name).
    """

    kind: str | None = None


# Messages are NamedTuples: typed and immutable like frozen dataclasses, but several times
# cheaper to build, which matters at tens of thousands of moves per second.


class Hello(NamedTuple):
    """`hello`: who the client says it is (name, password, or a token that decides alone)."""

    v: int
    name: str | None
    password: str | None
    token: str | None
    id: MsgId = None


class Move(NamedTuple):
    """`move`: the player's requested pose; `seq` grows with every move."""

    seq: int
    x: float
    y: float
    z: float
    yaw: float
    id: MsgId = None


class Ping(NamedTuple):
    """`ping`: `ct` is echoed back in `pong`."""

    ct: object
    id: MsgId = None


class Chat(NamedTuple):
    """`chat`: a line on a channel, or to a player or NPC when `to` is set."""

    text: str
    channel: str
    to: str | None
    id: MsgId = None


class Place(NamedTuple):
    """`place`: a new persistent object at a pose."""

    shape: str
    x: float
    y: float
    z: float
    yaw: float
    color: str | None
    label: str | None
    id: MsgId = None


class Remove(NamedTuple):
    """`remove`: delete the object `target` (owner or admin only)."""

    target: str
    id: MsgId = None


class Who(NamedTuple):
    """`who`: list the players online."""

    id: MsgId = None


class NpcCancel(NamedTuple):
    """`npc_cancel`: stop the NPC answer `reply`."""

    reply: str
    id: MsgId = None


Message = Hello | Move | Ping | Chat | Place | Remove | Who | NpcCancel


class _Fields:
    """Typed access to one decoded object's fields; each failure names the field."""

    def __init__(self, obj: dict, msg_id: MsgId) -> None:
        self.obj = obj
        self.re = msg_id

    def fail(self, name: str, why: str):
        """Raise `invalid` naming the field."""
        raise ProtocolError(INVALID, f"{name}: {why}", field=name, re=self.re)

    def number(self, name: str, default: float | None = None) -> float:
        """A finite number (bools refused)."""
        value = self.obj.get(name, default)
        if value is None:
            self.fail(name, "required number")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(name, "must be a finite number")
        return float(value)

    def integer(self, name: str) -> int:
        """A non-negative integer below 2**53 (exact in every JSON reader)."""
        value = self.obj.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, "must be an integer")
        if not 0 <= value < 2**53:
            self.fail(name, "out of range")
        return value

    def text(self, name: str, *, required: bool, max_len: int, min_len: int = 0) -> str | None:
        """A string of min_len..max_len characters, or None when absent and not required."""
        value = self.obj.get(name)
        if value is None:
            if required:
                self.fail(name, "required string")
            return None
        if not isinstance(value, str):
            self.fail(name, "must be a string")
        if not min_len <= len(value) <= max_len:
            self.fail(name, f"length must be {min_len}..{max_len}")
        return value


def _msg_id(obj: dict) -> MsgId:
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or len(str(value)) > 64:
        raise ProtocolError(INVALID, "id must be a string or integer of at most 64 characters",
                            field="id")
    return value


def parse(frame: str | bytes, *, max_chat: int = 500, name_pattern: str = r"[A-Za-z0-9_-]{1,24}") -> Message:
    """Decode one inbound frame into a typed message. Raises ProtocolError."""
    if isinstance(frame, bytes):
        raise ProtocolError(BAD_JSON, "frames must be UTF-8 text frames, not binary")
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError(BAD_JSON, "frame is not valid JSON") from None
    if type(obj) is not dict:  # orjson makes exact dicts
        raise ProtocolError(BAD_JSON, "frame must be a JSON object")
    msg_id = _msg_id(obj)
    kind = obj.get("t")
    if kind == "move":  # the hot path: most frames are moves
        move = _fast_move(obj, msg_id)
        if move is not None:
            return move
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        if not isinstance(kind, str):
            raise ProtocolError(INVALID, "t: required string", field="t", re=msg_id)
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}", re=msg_id)
    try:
        return decoder(_Fields(obj, msg_id), max_chat, name_pattern)
    except ProtocolError as exc:
        exc.kind = kind
        raise


_NUMBER_TYPES = (float, int)  # exact types: bool is an int subclass and is refused
_isfinite = math.isfinite


def _fast_move(obj: dict, msg_id: MsgId) -> Move | None:
    """A well-formed move without per-field bookkeeping; None sends it the slow way
    (which names the offending field)."""
    get = obj.get
    seq, x, y, z, yaw = get("seq"), get("x"), get("y"), get("z"), get("yaw", 0.0)
    num = _NUMBER_TYPES
    if (type(seq) is int and 0 <= seq < 2**53
            and type(x) in num and type(y) in num and type(z) in num and type(yaw) in num
            and _isfinite(x + y + z + yaw)):  # all finite (or a huge sum: the slow way decides)
        return Move(seq, float(x), float(y), float(z), float(yaw), msg_id)
    return None


def _hello(f: _Fields, max_chat: int, name_pattern: str) -> Hello:
    v = f.obj.get("v", 1)
    if v != 1 or isinstance(v, bool):
        f.fail("v", "only protocol version 1 is spoken here")
    token = f.text("token", required=False, max_len=1024, min_len=1)
    name = f.text("name", required=False, max_len=64)
    if token is None and name is None:
        f.fail("name", "required string (or a token)")
    if name is not None and token is None and not _re.fullmatch(name_pattern, name):
        f.fail("name", f"must match {name_pattern}")
    password = f.text("password", required=False, max_len=256, min_len=1)
    return Hello(1, name, password, token, f.re)


def _move(f: _Fields, max_chat: int, name_pattern: str) -> Move:
    return Move(f.integer("seq"), f.number("x"), f.number("y"), f.number("z"),
                f.number("yaw", 0.0), f.re)


def _ping(f: _Fields, max_chat: int, name_pattern: str) -> Ping:
    ct = f.obj.get("ct")
    if ct is not None and (isinstance(ct, bool) or not isinstance(ct, (int, float, str))):
        f.fail("ct", "must be a number")
    return Ping(ct, f.re)


def _chat(f: _Fields, max_chat: int, name_pattern: str) -> Chat:
    text = f.text("text", required=True, max_len=max_chat, min_len=1)
    if not text.strip():
        f.fail("text", "must not be blank")
    channel = f.text("channel", required=False, max_len=16) or "say"
    if channel not in CHANNELS:
        f.fail("channel", "must be say, shout, global or private")
    to = f.text("to", required=False, max_len=64, min_len=1)
    if channel == "private" and to is None:
        f.fail("to", "a private line needs a recipient")
    return Chat(text, channel, to, f.re)


def _place(f: _Fields, max_chat: int, name_pattern: str) -> Place:
    shape = f.text("shape", required=True, max_len=24, min_len=1)
    if not _SHAPE.fullmatch(shape):
        f.fail("shape", "must be a lowercase shape name such as box or sphere")
    color = f.text("color", required=False, max_len=7)
    if color is not None and not _COLOR.fullmatch(color):
        f.fail("color", "must be #rrggbb")
    label = f.text("label", required=False, max_len=64)
    return Place(shape, f.number("x"), f.number("y"), f.number("z"), f.number("yaw", 0.0),
                 color.lower() if color else None, label or None, f.re)


def _remove(f: _Fields, max_chat: int, name_pattern: str) -> Remove:
    return Remove(f.text("target", required=True, max_len=64, min_len=1), f.re)


def _who(f: _Fields, max_chat: int, name_pattern: str) -> Who:
    return Who(f.re)


def _npc_cancel(f: _Fields, max_chat: int, name_pattern: str) -> NpcCancel:
    return NpcCancel(f.text("reply", required=True, max_len=64, min_len=1), f.re)


_DECODERS = {"hello": _hello, "move": _move, "ping": _ping, "chat": _chat, "place": _place,
             "remove": _remove, "who": _who, "npc_cancel": _npc_cancel}


# ---- outbound -------------------------------------------------------------------------

def encode(message: dict) -> bytes:
    """One outbound message as the bytes of a text frame."""
    return orjson.dumps(message)


def with_re(message: dict, msg_id: MsgId) -> dict:
    """`message` plus `re` when the triggering message had an `id`."""
    if msg_id is not None:
        message["re"] = msg_id
    return message


def text_frame(payload: bytes) -> bytes:
    """`payload` as one unmasked, unfragmented WebSocket text frame (server to client)."""
    return frame_header(len(payload)) + payload


def frame_header(n: int) -> bytes:
    """The header of an unmasked, unfragmented WebSocket text frame of `n` payload bytes."""
    if n < 126:
        return _SHORT_HEADERS[n]
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big")
    return bytes((0x81, 127)) + n.to_bytes(8, "big")


_SHORT_HEADERS = [bytes((0x81, n)) for n in range(126)]


def state_frame(tick: int, st: int, ack: int, enter: list[bytes], upd: list[bytes],
                leave: list[bytes]) -> bytes:
    """A `state` frame joined from fragments each already encoded once for this tick."""
    parts = [b'{"t":"state","tick":%d,"st":%d,"ack":%d' % (tick, st, ack)]
    if enter:
        parts += (b',"enter":[', b",".join(enter), b"]")
    if upd:
        parts += (b',"upd":[', b",".join(upd), b"]")
    if leave:
        parts += (b',"leave":[', b",".join(leave), b"]")
    parts.append(b"}")
    return b"".join(parts)
