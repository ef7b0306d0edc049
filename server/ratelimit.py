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
    """The buckets of one connection, by message class."""

    __slots__ = ("move", "chat", "action", "misc", "abuse")

    def __init__(self, settings) -> None:
        s = settings
        self.move = TokenBucket(s.move_rate, s.move_burst)
        # "5 lines per 10 s with bursts": the whole allowance may be spent at once.
        self.chat = TokenBucket(s.chat_lines / s.chat_window_s, s.chat_lines)
        self.action = TokenBucket(s.action_rate, s.action_burst)
        self.misc = TokenBucket(s.misc_rate, s.misc_burst)
        self.abuse = TokenBucket(s.abuse_rate, s.abuse_burst)

    def for_type(self, kind: str) -> TokenBucket:
        """The bucket that meters messages of type `kind`."""
        if kind == "move":
            return self.move
        if kind == "chat":
            return self.chat
        if kind in ("place", "remove"):
            return self.action
        return self.misc
