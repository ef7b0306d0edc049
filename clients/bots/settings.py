"""Settings for a bot run: one validated dataclass, and the command line that builds it."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

SCENARIOS = ("move", "chat", "npc", "idle", "mixed")


@dataclass(frozen=True)
class BotSettings:
    """Everything one run of the bots needs; invalid values raise `ValueError`."""

    url: str
    bots: int = 10
    duration: float = 10.0
    scenario: str = "move"
    rate: float = 10.0              # moves per second per moving bot
    area: tuple[float, float, float, float] | None = None  # x0,z0,x1,z1; None: the world bounds
    speed_fraction: float = 0.5     # walk at this share of the shard's speed limit
    chat_rate: float = 0.2          # chat lines per second per chatting bot
    npc_rate: float = 0.05          # NPC questions per second per talking bot
    ramp: float = 200.0             # new connections per second
    connect_concurrency: int = 64   # handshakes in flight at once
    connect_timeout: float = 10.0
    warmup: float = 1.0             # seconds after the ramp before samples count
    observers: int = 100            # bots that check every pose they receive (the rest read acks)
    probe_interval: float = 1.0     # each mover is probed for delivery about this often
    probe_timeout: float = 2.0      # a probed move not seen by then is a missed update
    lag_warn_ms: float = 25.0       # loop lag p99 above this: the bots are the bottleneck
    name_prefix: str = "bot"
    seed: int = 1
    progress: bool = True
    json_path: str | None = None
    plot_path: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "ws" or not parts.hostname or not parts.port:
            raise ValueError(f"url must look like ws://HOST:PORT/ws, got {self.url!r}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        if self.bots < 1:
            raise ValueError("bots must be at least 1")
        if not 0 < self.duration <= 24 * 3600:
            raise ValueError("duration must be in (0, 86400] seconds")
        if not 0 < self.rate <= 30:
            raise ValueError("rate must be in (0, 30] Hz (the shard drops moves beyond 30/s)")
        if not 0 < self.speed_fraction <= 1:
            raise ValueError("speed_fraction must be in (0, 1]")
        for name in ("chat_rate", "npc_rate", "ramp", "connect_timeout", "probe_interval",
                     "probe_timeout", "lag_warn_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")
        if self.connect_concurrency < 1 or self.observers < 0:
            raise ValueError("connect_concurrency must be >= 1 and observers >= 0")
        if self.area is not None:
            x0, z0, x1, z1 = self.area
            if not (x0 < x1 and z0 < z1):
                raise ValueError("area must be x0,z0,x1,z1 with x0 < x1 and z0 < z1")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,12}", self.name_prefix):
            raise ValueError("name_prefix must be 1-12 of A-Z a-z 0-9 _ - (names are at most 24)")
        if self.plot_path is not None and not self.plot_path.endswith(".png"):
            raise ValueError("plot path must end with .png")

    @property
    def host(self) -> str:
        """The shard's host name from the URL."""
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int:
        """The shard's port from the URL."""
        return urlsplit(self.url).port

    @property
    def path(self) -> str:
        """The WebSocket path from the URL (`/ws` by default)."""
        return urlsplit(self.url).path or "/ws"


def _area(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("area must be four numbers: x0,z0,x1,z1") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError("area must be four numbers: x0,z0,x1,z1")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The `python -m clients.bots` command line."""
    d = {f.name: f.default for f in fields(BotSettings)}
    p = argparse.ArgumentParser(
        prog="python -m clients.bots",
        description="Open N bots against a Worldsmith shard, run a scenario for a bounded time, "
                    "and report latency, staleness, completeness, traffic and the bots' own lag.")
    p.add_argument("url", help="the shard's WebSocket URL, e.g. ws://127.0.0.1:8765/ws")
    p.add_argument("-n", "--bots", type=int, default=d["bots"], help="number of bots")
    p.add_argument("--duration", type=float, default=d["duration"],
                   help="seconds of steady running after the connect ramp")
    p.add_argument("--scenario", choices=SCENARIOS, default=d["scenario"])
    p.add_argument("--rate", type=float, default=d["rate"], help="moves per second per bot")
    p.add_argument("--area", type=_area, default=None,
                   help="x0,z0,x1,z1: where the bots walk (default: the world's bounds)")
    p.add_argument("--speed-fraction", type=float, default=d["speed_fraction"],
                   help="walking speed as a share of the shard's speed limit")
    p.add_argument("--chat-rate", type=float, default=d["chat_rate"], help="chat lines/s per bot")
    p.add_argument("--npc-rate", type=float, default=d["npc_rate"], help="NPC questions/s per bot")
    p.add_argument("--ramp", type=float, default=d["ramp"], help="new connections per second")
    p.add_argument("--connect-concurrency", type=int, default=d["connect_concurrency"])
    p.add_argument("--warmup", type=float, default=d["warmup"],
                   help="seconds after the ramp before samples count")
    p.add_argument("--observers", type=int, default=d["observers"],
                   help="bots that check every received pose against ground truth")
    p.add_argument("--probe-timeout", type=float, default=d["probe_timeout"],
                   help="seconds after which an unseen probed move counts as missed")
    p.add_argument("--lag-warn-ms", type=float, default=d["lag_warn_ms"])
    p.add_argument("--name-prefix", default=d["name_prefix"])
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--json", dest="json_path", default=None, help="write the JSON report here")
    p.add_argument("--plot", dest="plot_path", default=None, help="draw latency to this PNG")
    return p


def settings_from_args(argv: list[str] | None = None) -> BotSettings:
    """Parse the command line into `BotSettings` (exits with a message on bad input)."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    ns["progress"] = not ns.pop("quiet")
    try:
        return BotSettings(**ns)
    except ValueError as e:
        parser.error(str(e))
