"""Token buckets and the per-connection Limits (no event loop, no shard)."""
from __future__ import annotations

import pytest

from server.ratelimit import Limits, TokenBucket
from server.settings import Settings


def test_bucket_spends_its_burst_then_refills_at_its_rate():
    """A bucket allows `burst` messages at once, then one per 1/rate seconds, never above burst."""
    b = TokenBucket(2.0, 3)
    t = b.stamp
    assert [b.take(t) for _ in range(4)] == [True, True, True, False]
    assert b.take(t + 0.5) and not b.take(t + 0.5)
    assert [b.take(t + 100) for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        TokenBucket(0.0, 3)
    with pytest.raises(ValueError):
        TokenBucket(1.0, 0.5)


def test_limits_make_each_bucket_on_first_use_and_keep_it():
    """An unused connection holds no bucket; each class gets its own, made once, with the settings' rates."""
    s = Settings(move_rate=7.0, move_burst=9.0, chat_lines=4.0, chat_window_s=8.0, action_rate=1.5,
                 action_burst=3.0, misc_rate=11.0, misc_burst=12.0, abuse_rate=5.0, abuse_burst=6.0)
    lim = Limits(s)
    assert lim.made() == 0
    assert lim.for_type("move") is lim.move and (lim.move.rate, lim.move.burst) == (7.0, 9.0)
    assert lim.made() == 1
    assert lim.for_type("chat") is lim.chat and (lim.chat.rate, lim.chat.burst) == (0.5, 4.0)
    assert lim.for_type("place") is lim.for_type("remove") is lim.action
    assert (lim.action.rate, lim.action.burst) == (1.5, 3.0)
    assert lim.for_type("ping") is lim.for_type("who") is lim.misc
    assert (lim.misc.rate, lim.misc.burst) == (11.0, 12.0)
    assert (lim.abuse.rate, lim.abuse.burst) == (5.0, 6.0)
    assert lim.made() == 5
    # State persists: a drained bucket stays drained.
    t = lim.move.stamp
    assert sum(lim.move.take(t) for _ in range(20)) == 9
    assert not lim.for_type("move").take(t)
