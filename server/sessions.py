"""Who is online: sessions, the name/id tables, the reconnect grace, and admission (hello).

A `Session` is one player's presence on this shard, bound to its current connection. A
second connection for the same player takes the session over (the old one is closed 4002);
a dropped player's pose is kept for `grace_s` so a token reconnect puts it back.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from server.auth import TokenError, TokenSigner
from server.errors import AuthFailed
from server.protocol import Hello
from server.ratelimit import Limits
from worldstate.entities import Pose
from worldstate.records import NameTaken


def now_ms() -> int:
    """The shard's clock: Unix epoch milliseconds."""
    return int(time.time() * 1000)


class Session:
    """One online player: identity, its current connection, and per-connection output state."""

    __slots__ = ("pid", "name", "claimed", "admin", "conn", "limits", "ack", "sent_ack",
                 "known", "stale", "over_since", "pose_dirty")

    def __init__(self, pid: str, name: str, claimed: bool, admin: bool, conn, settings) -> None:
        self.pid = pid
        self.name = name
        self.claimed = claimed
        self.admin = admin
        self.conn = conn
        self.limits = Limits(settings)
        self.ack = 0          # highest move.seq applied on this connection
        self.sent_ack = 0     # the ack the client last got in a state
        # While stale: the entity ids the client still holds (for the refresh's `leave`).
        # None while the client is in step with the world's view of it.
        self.known: set[str] | None = None
        self.stale = False    # skipped state while over the send-buffer limit
        self.over_since: float | None = None
        self.pose_dirty = False

    def rebind(self, conn, settings) -> None:
        """Take over a newer connection: acks and rate limits start again."""
        self.conn = conn
        self.limits = Limits(settings)
        self.ack = self.sent_ack = 0
        self.known = None
        self.stale = False
        self.over_since = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a hello says the player is, once its credentials are checked."""

    pid: str
    name: str
    claimed: bool


class SessionTable:
    """Online sessions by id and by (lower-cased) name, plus poses held for reconnects."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.online: dict[str, Session] = {}
        self.by_name: dict[str, str] = {}
        self.grace: dict[str, tuple[Pose, float]] = {}

    def __len__(self) -> int:
        return len(self.online)

    def find(self, target: str) -> Session | None:
        """The online session with this id (`p:…`) or name (any letter case)."""
        if target.startswith("p:") and target in self.online:
            return self.online[target]
        pid = self.by_name.get(target.lower())
        return self.online.get(pid) if pid else None

    def add(self, session: Session) -> None:
        """Register a newly admitted session."""
        self.online[session.pid] = session
        key = session.name.lower()
        # An all-lower-case name is its own key: one string a player, not two.
        self.by_name[session.name if key == session.name else key] = session.pid
        self.grace.pop(session.pid, None)

    def drop(self, session: Session, pose: Pose | None) -> None:
        """Forget an online session; keep its pose for the grace period."""
        if self.online.get(session.pid) is session:
            del self.online[session.pid]
        if self.by_name.get(session.name.lower()) == session.pid:
            del self.by_name[session.name.lower()]
        if pose is not None and self.grace_s > 0:
            self.grace[session.pid] = (pose, time.monotonic() + self.grace_s)

    def held_pose(self, pid: str) -> Pose | None:
        """The pose kept for a player dropped within the grace period, if any."""
        entry = self.grace.get(pid)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def expire(self) -> None:
        """Forget poses whose grace period is over."""
        now = time.monotonic()
        for pid in [p for p, (_, until) in self.grace.items() if until < now]:
            del self.grace[pid]


def guest_id(name: str) -> str:
    """A fresh id for a guest; '.' cannot occur in names so it never meets a claimed id."""
    return f"p:{name}.{secrets.token_hex(3)}"


def claimed_id(name: str) -> str:
    """The stable id of a claimed name (names are unique in any letter case)."""
    return f"p:{name.lower()}"


async def identify(hello: Hello, *, signer: TokenSigner, call, store, sessions: SessionTable) -> Identity:
    """Check a hello's credentials. Raises AuthFailed (4001) when they don't hold.

    Order per the contract: a token decides alone; else a password claims or proves the
    name; else the name is a guest's, refused when claimed or held by someone online.
    """
    if hello.token is not None:
        try:
            claims = signer.verify(hello.token)
        except TokenError as exc:
            raise AuthFailed(str(exc), re=hello.id) from None
        return Identity(claims.pid, claims.name, claims.claimed)
    name = hello.name
    holder = sessions.find(name)
    if hello.password is not None:
        if holder is not None and holder.pid != claimed_id(name):
            raise AuthFailed("that name is held by a guest online", re=hello.id)
        ok = await call(store.check_password, name, hello.password)
        if ok is None:
            try:
                await call(store.create_account, name, hello.password)
                ok = True
            except NameTaken:  # claimed meanwhile by a concurrent hello
                ok = await call(store.check_password, name, hello.password)
        if not ok:
            raise AuthFailed("wrong password for this name", re=hello.id)
        return Identity(claimed_id(name), name, True)
    if holder is not None:
        raise AuthFailed("that name is online; send its token or password", re=hello.id)
    if await call(store.has_account, name):
        raise AuthFailed("that name is claimed; send its password", re=hello.id)
    return Identity(guest_id(name), name, False)
