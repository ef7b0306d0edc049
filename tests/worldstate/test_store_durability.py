"""Everything the store acknowledged survives the writing process being killed with SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from tests.worldstate.test_store import FAST, store_url  # noqa: F401  (store_url is a fixture)
from worldstate.store import Store

# The child claims accounts and places objects forever, printing an ACK only after each
# call returned (= committed). It is killed while still writing.
CHILD = r"""
import sys
from worldstate.passwords import ScryptCost
from worldstate.store import ObjectRecord, Store, StoreSettings
s = Store(sys.argv[1], settings=StoreSettings(kdf=ScryptCost(n=2**8)))
i = 0
while True:
    s.create_account(f"user{i}", "pw")
    print(f"ACK a:user{i}", flush=True)
    s.add_object(ObjectRecord(f"o:{i}", f"user{i}", "box", "#123456", None,
                              float(i), 0.0, 0.0, 0.0, 1_700_000_000_000 + i))
    print(f"ACK o:{i}", flush=True)
    i += 1
"""
ACKS_BEFORE_KILL = 40


def _run_and_kill(url: str) -> list[str]:
    """Start the child, SIGKILL it after enough ACKs, and return every ACK it printed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[str] = []
    # readline blocks; the watchdog kills a child that hangs so the test fails, not stalls.
    watchdog = threading.Timer(60, child.kill)
    watchdog.start()
    try:
        while len(acked) < ACKS_BEFORE_KILL:
            line = child.stdout.readline()
            if not line:
                raise AssertionError(f"child exited early: {child.stderr.read()}")
            acked.append(line.split()[1])
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    # Lines it printed between our last read and its death were acknowledged too.
    acked += [ln.split()[1] for ln in rest.splitlines() if ln.startswith("ACK ")]
    return acked


def test_acknowledged_writes_survive_sigkill(store_url):  # noqa: F811
    """Every account and object a SIGKILLed writer acknowledged is in the database after reopening."""
    acked = _run_and_kill(store_url)
    assert len(acked) >= ACKS_BEFORE_KILL
    s = Store(store_url, settings=FAST)
    try:
        objects = {o.id: o for o in s.load_objects()}
        for ack in acked:
            if ack.startswith("a:"):
                assert s.has_account(ack[2:]), f"acknowledged account {ack} lost"
                assert s.check_password(ack[2:], "pw") is True
            else:
                assert ack in objects, f"acknowledged object {ack} lost"
                assert objects[ack].owner == f"user{ack[2:]}"
        # The store is still writable after the crash (no stale lock left behind).
        s.create_account("after_crash", "pw")
        assert s.has_account("after_crash")
    finally:
        s.close()
