"""Fixtures for the web client's browser tests: a real shard on a background thread and a real
headless Chromium driven by Playwright.

The shard runs `server.app.run_shard` on its own event loop in a thread, so the tests can use
Playwright's synchronous API (which refuses to run inside an asyncio loop) while the shard
serves the page and its WebSocket on 127.0.0.1 with a SQLite file under a temporary folder.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.app import run_shard
from server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "clients" / "web"
ARTIFACTS = REPO / "artifacts" / "web"
CHROMIUM = "/usr/bin/chromium"
# Software WebGL (SwiftShader) only: CI machines have no GPU, and recent Chromium enables
# SwiftShader for WebGL only when told it may.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-gl=swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]
# Small viewports keep software rendering cheap on a shared CPU.
VIEWPORT = {"width": 900, "height": 620}
START_TIMEOUT_S = 20.0

_names = itertools.count(1)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def failed(request) -> bool:
    """True when the test that `request` belongs to failed in its call phase."""
    report = getattr(request.node, "report_call", None)
    return report is not None and report.failed


def unique_name(prefix: str) -> str:
    """A player name no other test in this run uses (names are claimed per database)."""
    return f"{prefix}{next(_names)}"


@dataclass
class ShardThread:
    """A shard served from a daemon thread; `restart()` brings it back on the same port and DB."""

    settings: Settings
    npcs: object = None       # a callable making a fresh NpcHook for each start, or None
    port: int = 0
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _error: BaseException | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        """Start the shard and return once it listens (raises what it raised when it could not)."""
        ready = threading.Event()
        self._error = None

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                hook = self.npcs() if self.npcs else None
                async with run_shard(self.settings, npcs=hook) as shard:
                    self.port = shard.port
                    if hook is not None and hasattr(hook, "ready"):
                        # NPCs answer `busy` until their engine has loaded.
                        await asyncio.wait_for(hook.ready.wait(), START_TIMEOUT_S)
                    ready.set()
                    await self._stop.wait()
            except BaseException as exc:  # reported to the test thread below
                self._error = exc
                ready.set()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="web-test-shard", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise TimeoutError("the shard did not start in time")
        if self._error is not None:
            raise self._error
        # Restarts reuse the port the first start was given, so pages can find it again.
        self.settings = dataclasses.replace(self.settings, port=self.port)

    def stop(self) -> None:
        """Shut the shard down cleanly (clients closed 1001, database flushed) and wait for it."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT_S)
        if self._thread.is_alive():
            raise TimeoutError("the shard did not stop in time")
        self._thread = None
        if self._error is not None:
            raise self._error

    def restart(self) -> None:
        """Stop, then start again on the same port with the same database."""
        self.stop()
        self.start()


def _web_client_installed() -> bool:
    return (WEB / "node_modules" / "three" / "build" / "three.module.js").is_file()


def _shard_settings(db_dir: Path, **overrides) -> Settings:
    """Settings for a web-test shard: loopback, a free port, SQLite under `db_dir`.

    The shard serves clients/web/ by default: the very files under test. Its NPCs answer
    nothing (npc_model "none") unless a test passes its own NPC service: loading the default
    model would cost these tests CPU they cannot spare, for answers they do not read.
    """
    base = dict(host="127.0.0.1", port=0, db=f"sqlite:///{db_dir / 'world.db'}", shard="web",
                log_level="WARNING", npc_model="none")
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="module")
def web_shard(tmp_path_factory):
    """A real shard serving clients/web/ for the tests of one module."""
    if not _web_client_installed():
        pytest.fail("three.js is not installed: run `npm install` in clients/web (scripts/setup.sh does)")
    s = ShardThread(_shard_settings(tmp_path_factory.mktemp("web-shard")))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def fresh_artifacts():
    """The screenshots left in artifacts/web/ should be this run's, not an older run's."""
    for old in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("figures.jsonl")]:
        old.unlink()


@pytest.fixture(scope="module")
def chromium(fresh_artifacts):
    """Headless Debian Chromium under Playwright, shared by the tests of one module.

    Module scope, not session: Playwright's sync API keeps an event loop running in this
    thread while it is open, and every asyncio test after it would fail to start its own.
    """
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh --dev does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Pages:
    """Pages opened for a test (or a module), each in a fresh browser context of its own."""

    def __init__(self, browser) -> None:
        self.browser = browser
        self.contexts, self.pages = [], []

    def open(self, **context_options):
        """A new page; uncaught errors in it are collected in `page.page_errors`."""
        ctx = self.browser.new_context(**{"viewport": VIEWPORT, **context_options})
        page = ctx.new_page()
        page.set_default_timeout(15_000)
        page.page_errors = []
        page.on("pageerror", lambda exc: page.page_errors.append(str(exc)))
        self.contexts.append(ctx)
        self.pages.append(page)
        return page

    def snapshot(self, label: str) -> None:
        """Keep a screenshot of every page in artifacts/web/ as the run's evidence, and a line
        of figures per joined page in artifacts/web/figures.jsonl (join time, frame rate, RTT)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for i, page in enumerate(self.pages):
            try:
                page.screenshot(path=str(ARTIFACTS / f"{label}-{i}.png"))
                if hasattr(page, "joined_at"):
                    frames, rtt = page.evaluate("[window.worldsmith.frames, window.worldsmith.rttMs]")
                    frames -= page.frames_at_join
                    secs = time.monotonic() - page.joined_at
                    line = {"page": f"{label}-{i}", "join_s": round(page.join_s, 2), "seconds": round(secs, 1),
                            "fps": round(frames / secs, 1), "rtt_ms": rtt}
                    with open(ARTIFACTS / "figures.jsonl", "a", encoding="utf-8") as f:
                        f.write(json.dumps(line) + "\n")
            except Exception:  # a crashed page has no screenshot; the test already says why
                pass

    def errors(self) -> list[str]:
        return [e for page in self.pages for e in page.page_errors]

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def open_page(chromium, request):
    """Factory: `open_page()` gives a page in a fresh browser context (its own storage).

    Uncaught page errors fail the test; each page's screenshot is kept in artifacts/web/
    (named ...-FAILED when the test failed).
    """
    pages = Pages(chromium)
    yield pages.open
    pages.snapshot(request.node.name + ("-FAILED" if failed(request) else ""))
    errors = pages.errors()
    pages.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@dataclass
class Player:
    """A page joined to the shard as `name` (player id `id`)."""

    page: object
    name: str
    id: str


@pytest.fixture(scope="module")
def _pair(chromium, web_shard):
    pages = Pages(chromium)
    players = []
    for prefix in ("alice", "bob"):
        page = pages.open()
        name = unique_name(prefix)
        players.append(Player(page, name, join(page, web_shard.http_url, name, password=f"pw-{name}")))
    yield pages, players
    pages.snapshot("pair-at-end")
    pages.close()


@pytest.fixture
def pair(_pair, request):
    """Two players, alice and bob (claimed names), joined once per module and shared by its
    tests to keep browser time down. Screenshots when a test fails (and at the module's end);
    uncaught page errors fail the test."""
    pages, players = _pair
    yield players
    if failed(request):
        pages.snapshot(request.node.name + "-FAILED")
    errors = pages.errors()
    assert not errors, f"uncaught errors in the page: {errors}"


def join(page, url: str, name: str, password: str = "") -> str:
    """Open the client at `url`, join as `name`, wait until in the world; returns the player id.

    Pages run at the client's low drawing quality: software WebGL on a shared CPU.
    """
    started = time.monotonic()
    page.goto(url + "?quality=low")
    page.fill("#login-name", name)
    if password:
        page.fill("#login-password", password)
    page.click("#login-join")
    page.wait_for_function("() => window.worldsmith && window.worldsmith.connected"
                           " && window.worldsmith.entities.has(window.worldsmith.you)")
    page.joined_at = time.monotonic()
    page.join_s = page.joined_at - started
    page.frames_at_join = page.evaluate("window.worldsmith.frames")
    return page.evaluate("window.worldsmith.you")
