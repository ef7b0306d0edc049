"""Typed, immutable events parsed from the shard's messages (protocol v1).

`parse_event(msg)` turns one decoded JSON object into one of the frozen dataclasses below.
Unknown message types become `Unknown` so that a newer shard never breaks an older client.
Fields the contract marks optional default to `None` (or an empty tuple).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity as the client sees it: a player (`p:`), an NPC (`n:`) or an object (`o:`)."""

    id: str
    kind: str
    name: str
    x: float
    y: float
    z: float
    yaw: float = 0.0
    props: dict | None = field(default=None, hash=False, compare=True)

    @classmethod
    def from_wire(cls, d: dict) -> "Entity":
        """Build an entity from its wire object (`{"id","kind","name","x","y","z","yaw"}`)."""
        return cls(
            id=d["id"], kind=d["kind"], name=d.get("name", ""),
            x=float(d["x"]), y=float(d["y"]), z=float(d["z"]), yaw=float(d.get("yaw", 0.0)),
            props=d.get("props"),
        )

    def moved(self, x: float, y: float, z: float, yaw: float) -> "Entity":
        """A copy of this entity at a new pose (used when an `upd` arrives)."""
        return Entity(self.id, self.kind, self.name, x, y, z, yaw, self.props)


@dataclass(frozen=True, slots=True)
class Welcome:
    """The shard accepted our `hello`: who we are, our token and the world's rules."""

    you: str
    name: str
    token: str
    shard: str
    tick_hz: float
    aoi: float
    speed: float
    st: int
    bounds: tuple[float, float, float, float]
    spawn: tuple[float, float, float]
    v: int = 1


@dataclass(frozen=True, slots=True)
class Update:
    """One `upd` row: an entity already in view moved to this pose."""

    id: str
    x: float
    y: float
    z: float
    yaw: float


@dataclass(frozen=True, slots=True)
class State:
    """A view diff for one tick: `ack` is the highest move `seq` the shard has applied."""

    tick: int
    st: int
    ack: int
    enter: tuple[Entity, ...] = ()
    upd: tuple[Update, ...] = ()
    leave: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Chat:
    """A chat line we heard (our own lines included); `re` is set on our own copy only."""

    from_: str
    name: str
    text: str
    channel: str
    st: int
    to: str | None = None
    re: Any = None


@dataclass(frozen=True, slots=True)
class NpcStart:
    """An NPC starts answering a line addressed to it; pieces follow under `reply`."""

    reply: str
    npc: str
    name: str
    to: str
    re: Any = None


@dataclass(frozen=True, slots=True)
class NpcToken:
    """The next piece of an NPC's answer."""

    reply: str
    text: str


@dataclass(frozen=True, slots=True)
class NpcEnd:
    """An NPC's answer is complete: the full `text`, why it ended, and its token count."""

    reply: str
    text: str
    reason: str
    tokens: int


@dataclass(frozen=True, slots=True)
class Presence:
    """One online player in a `who` answer."""

    id: str
    name: str
    shard: str


@dataclass(frozen=True, slots=True)
class Who:
    """The players online on every shard of the world."""

    players: tuple[Presence, ...]
    total: int
    re: Any = None


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a `ping`: our `ct` echoed, with the shard's clock `st`."""

    ct: Any
    st: int
    re: Any = None


@dataclass(frozen=True, slots=True)
class Error:
    """An `error` message from the shard (see `clients.errors.ErrorReply` for raised ones)."""

    code: str
    msg: str = ""
    field: str | None = None
    re: Any = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message whose type this client does not know (a newer shard's addition)."""

    t: str
    data: dict = field(hash=False)


Event = Union[Welcome, State, Chat, NpcStart, NpcToken, NpcEnd, Who, Pong, Error, Unknown]


def _welcome(m: dict) -> Welcome:
    return Welcome(
        you=m["you"], name=m["name"], token=m["token"], shard=m.get("shard", ""),
        tick_hz=m.get("tick_hz", 0), aoi=m.get("aoi", 0), speed=m.get("speed", 0),
        st=m.get("st", 0), bounds=tuple(m.get("bounds", (0, 0, 0, 0))),
        spawn=tuple(m.get("spawn", (0, 0, 0))), v=m.get("v", 1),
    )


def _state(m: dict) -> State:
    return State(
        tick=m.get("tick", 0), st=m.get("st", 0), ack=m.get("ack", 0),
        enter=tuple(Entity.from_wire(e) for e in m.get("enter", ())),
        upd=tuple(Update(u[0], float(u[1]), float(u[2]), float(u[3]), float(u[4]))
                  for u in m.get("upd", ())),
        leave=tuple(m.get("leave", ())),
    )


def _chat(m: dict) -> Chat:
    return Chat(from_=m["from"], name=m.get("name", ""), text=m["text"],
                channel=m.get("channel", ""), st=m.get("st", 0), to=m.get("to"), re=m.get("re"))


def _who(m: dict) -> Who:
    players = tuple(Presence(p["id"], p.get("name", ""), p.get("shard", ""))
                    for p in m.get("players", ()))
    return Who(players=players, total=m.get("total", len(players)), re=m.get("re"))


_PARSERS = {
    "welcome": _welcome,
    "state": _state,
    "chat": _chat,
    "npc_start": lambda m: NpcStart(m["reply"], m["npc"], m.get("name", ""), m.get("to", ""),
                                    m.get("re")),
    "npc_token": lambda m: NpcToken(m["reply"], m["text"]),
    "npc_end": lambda m: NpcEnd(m["reply"], m.get("text", ""), m.get("reason", ""),
                                m.get("tokens", 0)),
    "who": _who,
    "pong": lambda m: Pong(m.get("ct"), m.get("st", 0), m.get("re")),
    "error": lambda m: Error(m.get("code", ""), m.get("msg", ""), m.get("field"), m.get("re")),
}


def parse_event(msg: dict) -> Event:
    """Turn one decoded shard message into its typed event.

    Raises `KeyError`/`TypeError`/`ValueError` when a known type lacks a field the
    contract requires; the caller treats that as a protocol violation.
    """
    t = msg.get("t")
    parser = _PARSERS.get(t)
    if parser is None:
        return Unknown(t=str(t), data=msg)
    return parser(msg)
