"""What shards and NPC workers say to each other over MQTT: topics, settings, payloads.

No I/O here; `npc.remote.link` moves the bytes. The topic layout is documented once, in
the `npc.remote` package docstring.
"""
from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from server.cluster import check_prefix, parse_broker_url

SHARE_GROUP = "npc-workers"  # the MQTT 5 shared-subscription group every worker joins
RECENT_IDS = 20_000  # ids remembered to drop duplicate deliveries
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(kind: str, name: str) -> None:
    """Raise ValueError unless `name` can be one topic level (letters, digits, _ . -)."""
    if not _NAME.match(name):
        raise ValueError(f"{kind} must be 1-64 of letters, digits, '_', '.', '-': {name!r}")


class NpcTopics:
    """Every NPC topic of one world, built from its prefix."""

    def __init__(self, prefix: str) -> None:
        check_prefix(prefix)
        self.prefix = prefix
        self.requests = f"{prefix}/npc/requests"
        self.shared_requests = f"$share/{SHARE_GROUP}/{self.requests}"
        self.workers_all = f"{prefix}/npc/workers/+"
        self.gone_all = f"{prefix}/npc/gone/+"
        self._reply = f"{prefix}/npc/reply/"

    def reply(self, shard: str) -> str:
        """Where workers send the answers to `shard`'s requests."""
        return self._reply + shard

    def is_reply(self, topic: str) -> bool:
        """True if `topic` is some shard's reply topic (what a request may name)."""
        tail = topic[len(self._reply):] if topic.startswith(self._reply) else ""
        return bool(_NAME.match(tail))

    def gone(self, instance: str) -> str:
        """The last-will topic of one RemoteEngine instance (`SHARD.N` of its reply topic)."""
        return f"{self.prefix}/npc/gone/{instance}"

    def instance_of(self, topic: str) -> str | None:
        """The instance named by a `gone` topic, else None."""
        head = self.gone_all[:-1]
        tail = topic[len(head):] if topic.startswith(head) else ""
        return tail if _NAME.match(tail) else None

    def cancel(self, worker: str) -> str:
        """Where a shard sends cancels for answers that `worker` is generating."""
        return f"{self.prefix}/npc/cancel/{worker}"

    def load(self, worker: str) -> str:
        """The retained load report (and liveness) of `worker`."""
        return f"{self.prefix}/npc/workers/{worker}"

    def worker_of(self, topic: str) -> str | None:
        """The worker id of a load-report topic, else None."""
        head = self.workers_all[:-1]
        if not topic.startswith(head):
            return None
        tail = topic[len(head):]
        return tail if _NAME.match(tail) else None


def _check_link(url: str, prefix: str) -> None:
    parse_broker_url(url)
    check_prefix(prefix)


@dataclass(frozen=True)
class RemoteSettings:
    """The shard side: where the broker is and how long to wait on workers.

    Bounds: an answer whose worker dies ends with `error` within `worker_lost_s` plus
    `check_every_s` (at once when the broker delivers the worker's last will); a request
    no worker has accepted within `accept_timeout_s` is offered again, `max_attempts`
    times in all.
    """

    url: str                        # mqtt://[user[:password]@]host[:port]
    world_prefix: str = "worldsmith"
    shard: str = ""                 # names this shard's reply topic; "" picks a random one
    username: str | None = None
    password: str | None = None
    accept_timeout_s: float = 2.0   # no `accepted` by then: offer the request again
    worker_lost_s: float = 3.0      # no load report from a worker for this long: it is gone
    cancel_grace_s: float = 1.0     # a cancelled answer the worker doesn't end by then ends here
    deadline_grace_s: float = 2.0   # past its deadline plus this, an answer ends here as cancelled
    max_attempts: int = 3           # offers of one request before it ends busy
    check_every_s: float = 0.1      # how often the timeouts above are checked

    def __post_init__(self) -> None:
        _check_link(self.url, self.world_prefix)
        if self.shard:
            check_name("shard", self.shard)
        for name in ("accept_timeout_s", "worker_lost_s", "cancel_grace_s", "deadline_grace_s",
                     "check_every_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")


@dataclass(frozen=True)
class WorkerLinkSettings:
    """The worker side: where the broker is, how replies are batched and load reported."""

    url: str
    world_prefix: str = "worldsmith"
    worker_id: str = ""             # "" picks a random one
    username: str | None = None
    password: str | None = None
    coalesce_ms: float = 5.0        # pieces after an answer's first wait this long to share a message
    load_every_s: float = 0.5       # load report period (the heartbeat); keep well under worker_lost_s
    drain_s: float = 30.0           # on shutdown, answers in flight get this long to finish

    def __post_init__(self) -> None:
        _check_link(self.url, self.world_prefix)
        if self.worker_id:
            check_name("worker_id", self.worker_id)
        if not 0 <= self.coalesce_ms <= 1000:
            raise ValueError("coalesce_ms must be in [0, 1000]")
        if not 0 < self.load_every_s <= 60:
            raise ValueError("load_every_s must be in (0, 60]")
        if self.drain_s < 0:
            raise ValueError("drain_s must be >= 0")


@dataclass(frozen=True)
class WorkerLoad:
    """One worker's last load report."""

    worker: str
    running: int
    waiting: int
    in_flight: int
    capacity: int
    tokens_per_s: float
    completion_tokens: int
    model: str
    state: str          # serving | draining
    sent_ms: int
    max_model_len: int = 0  # prompt plus answer tokens it can hold (0: not reported)

    def to_payload(self) -> bytes:
        """The retained message."""
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_payload(cls, worker: str, payload: bytes) -> "WorkerLoad":
        """Parse a report; raises ValueError when malformed."""
        try:
            d = orjson.loads(payload)
            return cls(worker, int(d["running"]), int(d["waiting"]), int(d["in_flight"]),
                       int(d["capacity"]), float(d["tokens_per_s"]), int(d["completion_tokens"]),
                       str(d["model"]), str(d["state"]), int(d["sent_ms"]), int(d.get("max_model_len", 0)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad load report from {worker}: {e}") from None


def reply_batch(worker: str, messages: list[dict[str, Any]]) -> bytes:
    """Several queue messages for one shard in one MQTT message."""
    return orjson.dumps({"w": worker, "m": messages})


def parse_reply_batch(payload: bytes) -> tuple[str, list[Any]]:
    """(worker id, messages) of a reply batch; raises ValueError when malformed."""
    try:
        d = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"reply batch is not JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("w"), str) or not isinstance(d.get("m"), list):
        raise ValueError("reply batch must be {\"w\": worker, \"m\": [messages]}")
    return d["w"], d["m"]


def now_ms() -> int:
    """Wall-clock milliseconds (reports cross machines)."""
    return int(time.time() * 1000)


class RecentIds:
    """A bounded set that forgets its oldest members first."""

    def __init__(self, limit: int = RECENT_IDS) -> None:
        self._order: collections.deque[str] = collections.deque()
        self._set: set[str] = set()
        self._limit = limit

    def add(self, rid: str) -> None:
        """Remember `rid` (forgetting the oldest past the limit)."""
        if rid in self._set:
            return
        if len(self._order) >= self._limit:
            self._set.discard(self._order.popleft())
        self._order.append(rid)
        self._set.add(rid)

    def __contains__(self, rid: object) -> bool:
        return rid in self._set
