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


class Limits:
    """The buckets of one connection, by message class, each made on first use.

    A bucket nobody used yet would be full anyway, so making it late changes nothing; an
    idle player then holds none of them (five buckets were ~0.6 KB a connection).
    """

    __slots__ = ("_settings", "_move", "_chat", "_action", "_misc", "_abuse")

    def __init__(self, settings) -> None:
        self._settings = settings
        self._move = self._chat = self._action = self._misc = self._abuse = None

    @property
    def move(self) -> TokenBucket:
        """Meters `move`."""
        if self._move is None:
            s = self._settings
            self._move = TokenBucket(s.move_rate, s.move_burst)
        return self._move

    @property
    def chat(self) -> TokenBucket:
        """Meters `chat`: "5 lines per 10 s with bursts", the whole allowance may go at once."""
        if self._chat is None:
            s = self._settings
            self._chat = TokenBucket(s.chat_lines / s.chat_window_s, s.chat_lines)
        return self._chat

    @property
    def action(self) -> TokenBucket:
        """Meters `place` and `remove`."""
        if self._action is None:
            s = self._settings
            self._action = TokenBucket(s.action_rate, s.action_burst)
        return self._action

    @property
    def misc(self) -> TokenBucket:
        """Meters every other message type."""
        if self._misc is None:
            s = self._settings
            self._misc = TokenBucket(s.misc_rate, s.misc_burst)
        return self._misc

    @property
    def abuse(self) -> TokenBucket:
        """Meters errors; running dry escalates to a close."""
        if self._abuse is None:
            s = self._settings
            self._abuse = TokenBucket(s.abuse_rate, s.abuse_burst)
        return self._abuse

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
