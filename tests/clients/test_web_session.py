"""The browser client reconnecting in real Chromium: the shard goes away and comes back on the
same port and database, and the page rejoins by itself with its session token."""
from __future__ import annotations

import pytest

from tests.clients.conftest import join, unique_name

pytestmark = pytest.mark.timeout(90)


def test_page_says_reconnecting_and_rejoins_with_its_token_after_the_shard_restarts(own_shard, open_page):
    """While the shard is down the page says it is reconnecting; when the shard is back it
    rejoins with its session token as the same player where it stood, and says so."""
    page = open_page()
    you = join(page, own_shard.http_url, unique_name("dora"), password="pw-dora")
    page.keyboard.down("KeyW")
    page.wait_for_timeout(400)
    page.keyboard.up("KeyW")
    # Wait until the shard has the pose this page predicted (acked, and caught up if clamped).
    page.wait_for_function("() => { const w = window.worldsmith, e = w.entities.get(w.you), s = w.self;"
                           " return w.seq > 0 && w.ack === w.seq && Math.hypot(e.x - s.x, e.z - s.z) < 0.01; }")
    before = page.evaluate("(id) => window.worldsmith.entities.get(id)", you)

    own_shard.stop()
    page.wait_for_function("() => window.worldsmith.status === 'reconnecting'")
    banner = page.inner_text("#banner")
    assert "Reconnecting" in banner
    # A clean shutdown closes 1001 ("restarting"); on a starved machine the closing handshake
    # can time out and the page sees the connection simply lost (1006). Either way it says so.
    code = page.evaluate("window.worldsmith.dropClose.code")
    assert (code, "restarting" in banner) in ((1001, True), (1006, False)), (code, banner)
    assert not page.evaluate("window.worldsmith.connected")

    own_shard.start()
    page.wait_for_function("() => window.worldsmith.reconnects === 1 && window.worldsmith.connected"
                           " && window.worldsmith.entities.has(window.worldsmith.you)")
    assert page.evaluate("window.worldsmith.statusLog")[-1] == "connected"
    assert page.evaluate("window.worldsmith.resumedWithToken")
    assert page.evaluate("window.worldsmith.you") == you
    after = page.evaluate("(id) => window.worldsmith.entities.get(id)", you)
    assert abs(after["x"] - before["x"]) < 0.01 and abs(after["z"] - before["z"]) < 0.01
    assert "Reconnected" in page.inner_text("#banner")
    assert any("Reconnected to the world" in line["text"]
               for line in page.evaluate("window.worldsmith.chatLines"))
