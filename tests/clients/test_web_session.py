"""The browser client's session in real Chromium: the shard goes away and comes back on the
same port and database and the page rejoins by itself with its session token; then the same
player joins from a second tab and the first one retires quietly.

The module has one shard of its own (it gets restarted) and one player, dora, whose page both
tests use: joining costs seconds of software-rendered WebGL."""
from __future__ import annotations

import pytest

from tests.clients.conftest import (Pages, ShardThread, _shard_settings, _web_client_installed, failed,
                                    join, unique_name)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def session_shard(tmp_path_factory):
    """A real shard that these tests may stop and restart."""
    if not _web_client_installed():
        pytest.fail("three.js is not installed: run `npm install` in clients/web (scripts/setup.sh does)")
    s = ShardThread(_shard_settings(tmp_path_factory.mktemp("web-session")))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def _dora(chromium, session_shard):
    pages = Pages(chromium)
    page = pages.open()
    page.player_name = unique_name("dora")
    page.player_id = join(page, session_shard.http_url, page.player_name, password="pw-dora")
    yield pages, page
    pages.snapshot("dora-at-end")
    pages.close()


@pytest.fixture
def dora(_dora, request):
    """Dora's page, joined with a claimed name (shared by this module's tests)."""
    pages, page = _dora
    yield page
    if failed(request):
        pages.snapshot(request.node.name + "-FAILED")
    assert not pages.errors(), f"uncaught errors in the page: {pages.errors()}"


def test_page_says_reconnecting_and_rejoins_with_its_token_after_the_shard_restarts(session_shard, dora):
    """While the shard is down the page says it is reconnecting; when the shard is back it
    rejoins with its session token as the same player where it stood, and says so."""
    page, you = dora, dora.player_id
    page.keyboard.down("KeyW")
    page.wait_for_timeout(400)
    page.keyboard.up("KeyW")
    # Wait until the shard has the pose this page predicted (acked, and caught up if clamped).
    page.wait_for_function("() => { const w = window.worldsmith, e = w.entities.get(w.you), s = w.self;"
                           " return w.seq > 0 && w.ack === w.seq && Math.hypot(e.x - s.x, e.z - s.z) < 0.01; }")
    before = page.evaluate("(id) => window.worldsmith.entities.get(id)", you)

    session_shard.stop()
    page.wait_for_function("() => window.worldsmith.status === 'reconnecting'")
    banner = page.inner_text("#banner")
    assert "Reconnecting" in banner
    # A clean shutdown closes 1001 ("restarting"); on a starved machine the closing handshake
    # can time out and the page sees the connection simply lost (1006). Either way it says so.
    code = page.evaluate("window.worldsmith.dropClose.code")
    assert (code, "restarting" in banner) in ((1001, True), (1006, False)), (code, banner)
    assert not page.evaluate("window.worldsmith.connected")

    session_shard.start()
    page.wait_for_function("() => window.worldsmith.reconnects === 1 && window.worldsmith.connected"
                           " && window.worldsmith.entities.has(window.worldsmith.you)")
    assert page.evaluate("window.worldsmith.statusLog")[-1] == "connected"
    assert page.evaluate("window.worldsmith.resumedWithToken")
    assert page.evaluate("window.worldsmith.you") == you
    after = page.evaluate("(id) => window.worldsmith.entities.get(id)", you)
    assert abs(after["x"] - before["x"]) < 0.01 and abs(after["z"] - before["z"]) < 0.01
    # The banner says "Reconnected." for a few seconds; the chat panel keeps a line of it.
    assert page.evaluate("window.worldsmith.statusText") == "Reconnected."
    assert any("Reconnected to the world" in line["text"]
               for line in page.evaluate("window.worldsmith.chatLines"))


def test_joining_from_a_second_tab_retires_the_first_without_a_tug_of_war(session_shard, dora, open_page):
    """The same claimed name joining in another tab takes the player over (same id); the first
    tab says why it was disconnected and does not reconnect (which would kick the new tab)."""
    second = open_page()
    assert join(second, session_shard.http_url, dora.player_name, password="pw-dora") == dora.player_id
    dora.wait_for_function("() => window.worldsmith.status === 'closed'")
    assert dora.evaluate("window.worldsmith.lastClose.code") == 4002
    assert "another window" in dora.inner_text("#banner")
    # A retry would have moved the first tab to 'reconnecting' at once, in the same close event.
    assert dora.evaluate("window.worldsmith.statusLog")[-1] == "closed"
    assert second.evaluate("window.worldsmith.connected")
