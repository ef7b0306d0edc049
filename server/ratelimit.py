"""Token buckets: one per message class per player, plus one that meters errors (abuse)."""
from __future__ import annotations

import time


class TokenBucket:
    """`burst` tokens at most, refilled at `rate` per second; each message takes one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """Spend one token if there is one; False means the message is over the rate."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Lazy:
    """A `Limits` attribute whose bucket is made on first use, from `settings` by `make`."""

    __slots__ = ("make", "slot")

    def __init__(self, make) -> None:
        self.make = make

    def __set_name__(self, owner, name: str) -> None:
        self.slot = owner.__dict__["_" + name]  # the slot descriptor that holds the bucket

    def __get__(self, limits, owner=None):
        if limits is None:
            return self
        bucket = self.slot.__get__(limits)
        if bucket is None:
            bucket = TokenBucket(*self.make(limits._settings))
            self.slot.__set__(limits, bucket)
        return bucket


class Limits:
    """The buckets of one connection, by message class, each made on first use.

    A bucket nobody used yet would be full anyway, so making it late changes nothing; an
    idle player then holds none of them (five buckets were ~0.6 KB a connection).
    """

    __slots__ = ("_settings", "_move", "_chat", "_action", "_misc", "_abuse")

    move = _Lazy(lambda s: (s.move_rate, s.move_burst))
    # "5 lines per 10 s with bursts": the whole allowance may go at once.
    chat = _Lazy(lambda s: (s.chat_lines / s.chat_window_s, s.chat_lines))
    action = _Lazy(lambda s: (s.action_rate, s.action_burst))  # place and remove
    misc = _Lazy(lambda s: (s.misc_rate, s.misc_burst))  # every other message type
    abuse = _Lazy(lambda s: (s.abuse_rate, s.abuse_burst))  # errors; running dry escalates to a close

    def __init__(self, settings) -> None:
        self._settings = settings
        self._move = self._chat = self._action = self._misc = self._abuse = None

    def made(self) -> int:
        """How many buckets exist yet (for footprint checks)."""
        return sum(b is not None for b in (self._move, self._chat, self._action, self._misc, self._abuse))

    def for_type(self, kind: str) -> TokenBucket:
        """The bucket that meters messages of type `kind`."""
        if kind == "move":
            return self.move
        if kind == "chat":
            return self.chat
        if kind in ("place", "remove"):
            return self.action
        return self.misc
