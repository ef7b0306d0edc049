"""What shards of one world say to each other over MQTT: topics, payloads, and the roster
of players on the other shards. No I/O here; `server.mqtt` moves the bytes.

Topics (the one place they are defined; ``P`` is the world prefix, `--world-prefix`,
default ``worldsmith``)::

    P/presence/SHARD        retained, QoS 1. {"shard","players":[[id,name]…],"st"}: who is
                            on SHARD now. The shard's MQTT last will is an empty retained
                            message here, so the broker clears it when the shard dies.
    P/chat/global           QoS 0. The `chat` frame of a global line, exactly as players get
                            it; subscribed with MQTT 5 No Local, so a shard never hears
                            its own lines back (it delivered them itself).
    P/private/SHARD/PID     QoS 0. The `chat` frame of a private line for player PID, who is
                            on SHARD.
    P/beat/SHARD            QoS 0, empty. Each shard's own heartbeat through the broker:
                            a link that stops echoing it is torn down and reconnected.
    P/replace/SHARD/PID     QoS 1, empty. Player PID has just connected on another shard:
                            SHARD closes its older connection with 4002, as one shard
                            does when a player connects twice to it.
    P/objects               QoS 1, No Local. {"op":"add","obj":{…ObjectRecord…}} or
                            {"op":"remove","id"}: an object placed or removed on one shard
                            enters or leaves every other shard's world.

Payloads are JSON encoded with orjson. Chat frames travel verbatim, so relaying a line costs
no re-encoding on either side.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import orjson

from worldstate.records import ObjectRecord

_TOPIC_FORBIDDEN = set("+#\x00")


def check_prefix(prefix: str) -> None:
    """Raise ValueError unless `prefix` can start every topic (no wildcards, no edge '/')."""
    if not prefix or len(prefix) > 128:
        raise ValueError("world_prefix must be 1-128 characters")
    if _TOPIC_FORBIDDEN & set(prefix) or prefix.startswith(("/", "$")) or prefix.endswith("/"):
        raise ValueError(f"world_prefix must not contain + # or NUL, nor start with / or $, "
                         f"nor end with /: {prefix!r}")


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, parsed from ``mqtt://[user[:password]@]host[:port]``."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse an `--mqtt` URL; raises ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise ValueError(f"mqtt must be a URL like mqtt://host:1883, got {url!r}")
    try:
        port = parts.port or 1883
    except ValueError:
        raise ValueError(f"mqtt URL has a bad port: {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"mqtt URL has no host: {url!r}")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"mqtt URL takes no path or query: {url!r}")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return BrokerAddress(parts.hostname, port, user, password)


class Topics:
    """Every topic of one world, built from its prefix."""

    def __init__(self, prefix: str, shard: str) -> None:
        check_prefix(prefix)
        self.prefix = prefix
        self.shard = shard
        self.presence_all = f"{prefix}/presence/+"
        self.my_presence = f"{prefix}/presence/{shard}"
        self.chat_global = f"{prefix}/chat/global"
        self.my_private = f"{prefix}/private/{shard}/+"
        self.my_replace = f"{prefix}/replace/{shard}/+"
        self.objects = f"{prefix}/objects"
        self.my_beat = f"{prefix}/beat/{shard}"

    def private(self, shard: str, pid: str) -> str:
        """The topic that reaches player `pid` on `shard`."""
        return f"{self.prefix}/private/{shard}/{pid}"

    def kind(self, topic: str) -> str:
        """What a topic carries: global, private, objects, presence, beat (for metrics)."""
        if topic == self.chat_global:
            return "global"
        if topic == self.objects:
            return "objects"
        rest = topic[len(self.prefix) + 1:] if topic.startswith(self.prefix + "/") else ""
        head = rest.split("/", 1)[0]
        return head if head in ("private", "presence", "beat", "replace") else "other"

    def replace(self, shard: str, pid: str) -> str:
        """The topic that tells `shard` its connection of `pid` was replaced elsewhere."""
        return f"{self.prefix}/replace/{shard}/{pid}"

    def tail(self, topic: str, head: str) -> str | None:
        """The last level of `topic` if it is `head/<one level>`, else None."""
        start = head[:-1]  # drop the trailing '+'
        if not topic.startswith(start):
            return None
        rest = topic[len(start):]
        return rest if rest and "/" not in rest else None


def presence_payload(shard: str, players: list[tuple[str, str]], st: int) -> bytes:
    """The retained presence message of one shard."""
    return orjson.dumps({"shard": shard, "players": players, "st": st})


def object_added(rec: ObjectRecord) -> bytes:
    """The event announcing a placed object."""
    return orjson.dumps({"op": "add", "obj": dataclasses.asdict(rec)})


def object_removed(oid: str) -> bytes:
    """The event announcing a removed object."""
    return orjson.dumps({"op": "remove", "id": oid})


def parse_object_event(payload: bytes) -> tuple[str, ObjectRecord | str]:
    """("add", ObjectRecord) or ("remove", id); raises ValueError on anything else."""
    try:
        event = orjson.loads(payload)
        if event["op"] == "add":
            return "add", ObjectRecord(**event["obj"])
        if event["op"] == "remove" and isinstance(event["id"], str):
            return "remove", event["id"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"bad object event: {exc}") from None
    raise ValueError("bad object event: unknown op")


class RemoteRoster:
    """Players on the other shards, as their retained presence messages say."""

    def __init__(self) -> None:
        self.by_shard: dict[str, list[tuple[str, str]]] = {}
        self._by_id: dict[str, tuple[str, str, str]] = {}    # pid -> (pid, name, shard)
        self._by_name: dict[str, tuple[str, str, str]] = {}  # lower-cased name -> same

    def update(self, shard: str, payload: bytes) -> None:
        """Apply one presence message; an empty payload (last will, clean leave) clears it."""
        if not payload:
            self.by_shard.pop(shard, None)
        else:
            data = orjson.loads(payload)
            self.by_shard[shard] = [(str(pid), str(name)) for pid, name in data["players"]]
        self._reindex()

    def clear(self) -> None:
        """Forget everything (the link is down: what we knew may be stale)."""
        self.by_shard.clear()
        self._reindex()

    def _reindex(self) -> None:
        # Rebuilt whole on each change: presence changes are rare next to lookups.
        by_id, by_name = {}, {}
        for shard, players in sorted(self.by_shard.items()):
            for pid, name in players:
                entry = (pid, name, shard)
                by_id[pid] = entry
                by_name.setdefault(name.lower(), entry)
        self._by_id, self._by_name = by_id, by_name

    def find(self, target: str) -> tuple[str, str, str] | None:
        """(pid, name, shard) of a remote player by id or name (any letter case), or None."""
        return self._by_id.get(target) or self._by_name.get(target.lower())

    def players(self) -> list[dict]:
        """Every remote player as {id, name, shard}."""
        return [{"id": pid, "name": name, "shard": shard}
                for shard, players in sorted(self.by_shard.items()) for pid, name in players]
