"""A real Mosquitto broker on a free loopback port, for tests.

Use the pytest fixture::

    from tests.broker import mosquitto   # noqa: F401  (makes the fixture visible)

    async def test_something(mosquitto):
        url = mosquitto.url            # "mqtt://127.0.0.1:PORT"
        mosquitto.stop()               # broker down (same port kept for restart)
        mosquitto.start()              # back up on the same port
        mosquitto.restart()            # stop + start
        mosquitto.kill()               # SIGKILL, no clean shutdown

Or without pytest: ``with Broker(tmp_dir) as b: ...``. The broker is Debian's
``mosquitto`` (``/usr/sbin/mosquitto``); readiness is taken from its own log line,
so no sleeps are involved.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One mosquitto process bound to 127.0.0.1; keeps its port across stop/start."""

    def __init__(self, workdir: str | os.PathLike | None = None, *, port: int | None = None,
                 persistence: bool = False, users: dict[str, str] | None = None):
        """Prepare (not start) a broker; `users` turns on password auth, `persistence` keeps
        retained messages and sessions across restarts."""
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.users = dict(users or {})
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        self._conf = self._write_conf()

    @property
    def url(self) -> str:
        """The broker's URL for `--mqtt`."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def _write_conf(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 100000",
            # Nagle's algorithm against delayed ACKs holds small messages up to ~40 ms;
            # chat lines are small and latency is what we measure.
            "set_tcp_nodelay true",
            # Started as root, mosquitto would drop to user "mosquitto", which cannot read
            # files under a private pytest tmp dir; stay the user we are.
            f"user {getpass.getuser()}",
        ]
        if self.users:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password],
                               check=True, capture_output=True)
            # mosquitto >= 2.0.14 refuses world-readable password files; keep it private.
            pwfile.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        """Start mosquitto and return once it logs that it is listening and running."""
        if self.running:
            return
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self._conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        ready = threading.Event()
        proc = self.proc

        def pump() -> None:
            # Read the log for as long as the process lives, so its pipe never fills.
            for line in proc.stderr:
                self.log.append(line.rstrip())
                if " running" in line and "mosquitto version" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, name=f"mosquitto-{self.port}", daemon=True).start()
        if not ready.wait(START_TIMEOUT_S) or proc.poll() is not None:
            tail = "\n".join(self.log[-20:])
            self.stop()
            raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        """Stop mosquitto cleanly (SIGTERM); the port is kept for a later start()."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill mosquitto with SIGKILL (no clean shutdown, nothing flushed)."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def _end(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def close(self) -> None:
        """Stop the broker and remove its directory if we made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Broker":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def mosquitto(tmp_path):
    """A running mosquitto on a free 127.0.0.1 port (anonymous, no persistence); stopped after."""
    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def mosquitto_factory(tmp_path):
    """Factory for brokers with options: `mosquitto_factory(users={...}, persistence=True)`."""
    made: list[Broker] = []

    def make(**kwargs) -> Broker:
        broker = Broker(tmp_path / f"mosquitto-{len(made)}", **kwargs)
        made.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in made:
            broker.close()
