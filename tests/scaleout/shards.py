"""Shards as real processes (`python -m server --mqtt ... --db ...`) for scale-out tests.

Synchronous on purpose (Popen and a reader thread), so one set of shards can serve a whole
test module whatever event loop each test runs on. Readiness is the shard's own ready line.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"Worldsmith shard (?P<shard>\S+) ready: .*WebSocket (?P<ws>ws://\S+/ws);")
START_TIMEOUT_S = 60.0  # a cold Python start on a loaded 2-core machine takes seconds


class ShardProcess:
    """One `python -m server` process; `ws` is its WebSocket URL once started."""

    def __init__(self, name: str, *, cwd: Path, mqtt: str | None, db: str,
                 world: str | None = None, extra: tuple[str, ...] = ()) -> None:
        args = [sys.executable, "-m", "server", "--shard", name, "--host", "127.0.0.1",
                "--port", "0", "--db", db, *extra]
        if mqtt:
            args += ["--mqtt", mqtt]
        if world:
            args += ["--world", world]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDSMITH_")}
        env["PYTHONPATH"] = str(REPO)
        self.name = name
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.ws: str | None = None
        threading.Thread(target=self._pump, name=f"shard-{name}", daemon=True).start()
        self.ws = self.wait_for(READY, START_TIMEOUT_S).group("ws")

    def _pump(self) -> None:
        # Always drained: a full stderr pipe would block the shard.
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<exited>")
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern | str, timeout: float = 10.0, *, after: int = 0) -> re.Match:
        """The first log line (from index `after`) matching `pattern`; AssertionError on timeout."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        seen = after
        with self._cond:
            ok = self._cond.wait_for(lambda: self._match(rx, seen) is not None
                                     or "<exited>" in self.lines[seen:], timeout)
            found = self._match(rx, seen)
        if not ok or found is None:
            raise AssertionError(f"shard {self.name}: no log line like {rx.pattern!r}:\n"
                                 + "\n".join(self.lines[-30:]))
        return found

    def _match(self, rx: re.Pattern, start: int) -> re.Match | None:
        for line in self.lines[start:]:
            m = rx.search(line)
            if m:
                return m
        return None

    def kill(self) -> None:
        """SIGKILL: no clean leave, no goodbye to the broker."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=10)
