"""The browser client in a real headless Chromium against a real shard: joining, moving,
chat, building, the players list and the VR button, checked through the page's read-only
debug hook (window.worldsmith) and its visible text rather than pixels.

Most tests share one pair of joined pages (the `pair` fixture): joining costs seconds of
software-rendered WebGL, and each test asserts only what its own actions caused."""
from __future__ import annotations

import math

import pytest

from tests.clients.conftest import Pages, Player, failed, join, unique_name

# A stand-in for a headset-capable browser's navigator.xr: enough for the page to decide
# whether to offer the VR button (starting a session is not exercised).
FAKE_XR = """
Object.defineProperty(navigator, 'xr', { configurable: true, value: {
  isSessionSupported: (mode) => Promise.resolve(mode === 'immersive-vr'),
  requestSession: () => Promise.reject(new Error('no headset in tests')),
}});
"""

pytestmark = pytest.mark.timeout(90)


def pose_of(page, eid: str) -> dict | None:
    """The shard's latest pose of entity `eid` as `page` knows it."""
    return page.evaluate("(id) => window.worldsmith.entities.get(id) || null", eid)


def hold(page, key: str, ms: int) -> None:
    """Hold a key down for about `ms` milliseconds, as a player would."""
    page.keyboard.down(key)
    page.wait_for_timeout(ms)
    page.keyboard.up(key)


def wait_moved(page, eid: str, before: dict, metres: float) -> None:
    """Wait until `page` sees entity `eid` at least `metres` (x-z) from pose `before`."""
    page.wait_for_function(
        "([id, x, z, d]) => { const e = window.worldsmith.entities.get(id);"
        " return e && Math.hypot(e.x - x, e.z - z) >= d; }",
        arg=[eid, before["x"], before["z"], metres])


def say(page, text: str) -> None:
    """Type `text` into the chat box and press Enter."""
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")


def wait_line(page, predicate_js: str, arg=None) -> None:
    """Wait until a chat line matching the JS predicate `l => ...` (given `arg`) is in the panel."""
    page.wait_for_function(f"(arg) => window.worldsmith.chatLines.some({predicate_js})", arg=arg)


def test_two_pages_see_each_other_move_when_keys_are_pressed(pair):
    """Two players join; each sees the other's avatar, and keys pressed on one page move that
    player on the other page to where the mover itself predicted it would be."""
    alice, bob = pair
    assert alice.id != bob.id and alice.id.startswith("p:") and bob.id.startswith("p:")
    for me, other in ((alice, bob), (bob, alice)):
        me.page.wait_for_function("(id) => window.worldsmith.drawn.includes(id)", arg=other.id)

    a0 = pose_of(bob.page, alice.id)
    hold(alice.page, "KeyW", 700)
    wait_moved(bob.page, alice.id, a0, 1.0)
    # Once alice stops, bob's copy converges on alice's own (predicted, then acknowledged) pose.
    alice.page.wait_for_function("() => window.worldsmith.ack === window.worldsmith.seq")
    mine = alice.page.evaluate("window.worldsmith.self")
    bob.page.wait_for_function(
        "([id, x, z]) => { const e = window.worldsmith.entities.get(id);"
        " return Math.hypot(e.x - x, e.z - z) < 0.05; }", arg=[alice.id, mine["x"], mine["z"]])
    assert alice.page.evaluate("window.worldsmith.ack") > 0

    b0 = pose_of(alice.page, bob.id)
    hold(bob.page, "ArrowDown", 500)
    wait_moved(alice.page, bob.id, b0, 0.7)


def test_chat_say_and_whisper_reach_the_other_page_and_errors_read_plainly(pair):
    """A line said on one page shows on the other (in the panel's text too), a /w whisper
    arrives as private, and whispering to nobody explains itself in plain words."""
    alice, bob = pair
    say(alice.page, "hello from the green")
    wait_line(bob.page, "l => l.kind === 'chat' && l.text === 'hello from the green' && l.name === arg",
              alice.name)
    assert "hello from the green" in bob.page.inner_text("#chat-log")

    say(alice.page, f"/w {bob.name} meet me at the well")
    wait_line(bob.page, "l => l.channel === 'private' && l.text === 'meet me at the well'")
    assert f"{alice.name} whispers:" in bob.page.inner_text("#chat-log")

    say(alice.page, "/w nobody_here are you there")
    wait_line(alice.page, "l => l.kind === 'error' && l.text.includes(arg)", "Nobody called nobody_here is online")
    # What the player typed was understood (and so cleared) even though the shard refused it.
    assert alice.page.input_value("#chat-input") == ""


def test_placed_object_appears_on_the_other_page_and_its_owner_can_remove_it(pair):
    """The build tool places an object with the chosen shape, colour and label that the other
    page sees and draws; the owner's Remove button takes it out of the other page's view."""
    alice, bob = pair
    alice.page.select_option("#build-shape", "sphere")
    alice.page.fill("#build-color", "#22aa44")
    alice.page.fill("#build-label", "Green globe")
    alice.page.click("#build-place")
    find = ("() => [...window.worldsmith.entities.values()].find("
            "e => e.kind === 'object' && e.props.label === 'Green globe') || null")
    bob.page.wait_for_function(find)
    obj = bob.page.evaluate(find)
    assert obj["props"]["shape"] == "sphere"
    assert obj["props"]["color"] == "#22aa44"
    assert obj["props"]["owner"].lower() == alice.name.lower()
    bob.page.wait_for_function("(id) => window.worldsmith.drawn.includes(id)", arg=obj["id"])
    # Only the owner gets a Remove button for it.
    alice.page.wait_for_selector(f'#build-mine button[data-target="{obj["id"]}"]')
    assert bob.page.locator(f'#build-mine button[data-target="{obj["id"]}"]').count() == 0
    alice.page.click(f'#build-mine button[data-target="{obj["id"]}"]')
    bob.page.wait_for_function("(id) => !window.worldsmith.entities.has(id)"
                               " && !window.worldsmith.drawn.includes(id)", arg=obj["id"])


def test_bad_colour_and_far_npc_are_explained_in_plain_words(pair):
    """A colour the shard refuses and a line to an NPC out of talking range each produce a
    plain-language message naming the problem, and @Name finds an NPC by its full name."""
    page = pair[1].page
    # An <input type=color> only holds valid colours, but the shard's refusal still needs
    # words (another client, or a future picker, may send anything): feed one through.
    page.evaluate("document.querySelector('#build-color').type = 'text'")
    page.fill("#build-color", "green")
    page.click("#build-place")
    wait_line(page, "l => l.kind === 'error' && l.text.includes('colour is not valid')")
    page.evaluate("document.querySelector('#build-color').type = 'color'")

    # Barnaby Quill keeps his stall about 40 m from the spawn: in view, out of talking range.
    page.wait_for_function("() => [...window.worldsmith.entities.values()]"
                           ".some(e => e.kind === 'npc' && e.name === 'Barnaby Quill')")
    say(page, "@Barnaby Quill what do you sell?")
    wait_line(page, "l => l.kind === 'error' && l.text.includes('too far from Barnaby Quill')")
    say(page, "@Nobodyatall hello")
    wait_line(page, "l => l.kind === 'error' && l.text.includes('nobody called Nobodyatall nearby')")


def test_players_list_shows_everyone_online(pair):
    """Opening the Players panel asks `who` and lists both players, marking your own name;
    /who in the chat box asks again."""
    alice, bob = pair
    bob.page.click("#players summary")
    bob.page.wait_for_function("(n) => { const w = window.worldsmith.who;"
                               " return w && w.players.some(p => p.name === n); }", arg=alice.name)
    replies = bob.page.evaluate("window.worldsmith.whoReplies")
    say(bob.page, "/who")
    bob.page.wait_for_function("(n) => window.worldsmith.whoReplies > n", arg=replies)
    text = bob.page.inner_text("#players-list")
    assert alice.name in text and bob.name in text
    assert bob.page.inner_text("#players-list li.me").startswith(bob.name)
    assert "players online" in bob.page.inner_text("#players-total")


def test_taken_name_with_wrong_password_goes_back_to_the_prompt(pair, web_shard, open_page):
    """Joining as an online player's claimed name with the wrong password returns to the name
    prompt with an explanation, does not keep retrying, and leaves the player undisturbed."""
    alice = pair[0]
    page = open_page()
    page.goto(web_shard.http_url + "?quality=low")
    page.fill("#login-name", alice.name)
    page.fill("#login-password", "wrong-one")
    page.click("#login-join")
    page.wait_for_function("() => window.worldsmith && window.worldsmith.status === 'closed'")
    assert page.is_visible("#login")
    assert "password is wrong" in page.inner_text("#login-message")
    assert page.evaluate("window.worldsmith.lastClose.code") == 4001
    assert page.evaluate("window.worldsmith.statusLog") == ["connecting", "closed"]
    assert alice.page.evaluate("window.worldsmith.connected")


def test_mouse_look_turns_the_player_and_typing_in_chat_does_not_walk(pair):
    """Moving the mouse over the world (pointer locked, or dragging) turns the player the shard
    sees, and letters typed into the chat box do not walk."""
    page, you = pair[0].page, pair[0].id
    yaw0 = page.evaluate("window.worldsmith.self.yaw")
    page.mouse.move(450, 200)
    page.mouse.down()
    page.mouse.move(250, 200, steps=8)
    page.mouse.up()
    page.wait_for_function("(y) => window.worldsmith.self.yaw > y + 0.3", arg=yaw0)
    page.wait_for_function("([id, y]) => window.worldsmith.entities.get(id).yaw > y + 0.3", arg=[you, yaw0])

    # Enter opens the chat box (giving back a captured pointer); letters then type, not walk.
    at = page.evaluate("window.worldsmith.self")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.activeElement.id === 'chat-input' && !document.pointerLockElement")
    page.keyboard.type("wwwwssss", delay=40)
    assert page.input_value("#chat-input") == "wwwwssss"
    page.fill("#chat-input", "")
    now = page.evaluate("window.worldsmith.self")
    assert (now["x"], now["z"]) == (at["x"], at["z"])


@pytest.fixture(scope="module")
def _phone(chromium, web_shard):
    pages = Pages(chromium)
    page = pages.open(viewport={"width": 400, "height": 720}, is_mobile=True, has_touch=True)
    # Phones with WebXR (Android Chrome) offer immersive-vr; this one says it does.
    page.add_init_script(FAKE_XR)
    player = Player(page, unique_name("pia"), "")
    player.id = join(page, web_shard.http_url, player.name)
    yield pages, player
    pages.snapshot("phone-at-end")
    pages.close()


@pytest.fixture
def phone(_phone, request):
    """A touch-screen phone joined to the shard (shared by this module's tests)."""
    pages, player = _phone
    yield player
    if failed(request):
        pages.snapshot(request.node.name + "-FAILED")
    assert not pages.errors(), f"uncaught errors in the page: {pages.errors()}"


def test_vr_button_is_offered_only_where_immersive_vr_is_supported(pair, phone):
    """The Enter VR button stays hidden in a browser without WebXR VR and shows where
    navigator.xr reports immersive-vr support."""
    plain = pair[0].page
    assert not plain.evaluate("window.worldsmith.vrButtonShown")
    assert not plain.is_visible("#vr-button")
    phone.page.wait_for_function("() => window.worldsmith.vrButtonShown")
    assert phone.page.is_visible("#vr-button")


def test_phone_virtual_joystick_walks_and_right_thumb_turns(phone):
    """On a touch screen, pushing the left-thumb joystick up walks the player forward on the
    shard, and dragging the right thumb turns the view."""
    phone, you = phone.page, phone.id
    start = phone.evaluate("window.worldsmith.self")
    touch = phone.context.new_cdp_session(phone)

    def finger(kind: str, x: float, y: float, ident: int = 1) -> None:
        points = [] if kind == "touchEnd" else [{"x": x, "y": y, "id": ident}]
        touch.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    # Right thumb: drag 100 px to the left turns the view left (yaw grows).
    finger("touchStart", 300, 300, 2)
    finger("touchMove", 200, 300, 2)
    finger("touchEnd", 0, 0, 2)
    phone.wait_for_function("(y) => window.worldsmith.self.yaw > y + 0.3", arg=start["yaw"])
    turned = phone.evaluate("window.worldsmith.self.yaw")
    # Left thumb: press, push 60 px up (past the joystick's full throw), hold, let go.
    finger("touchStart", 80, 300)
    finger("touchMove", 80, 240)
    assert phone.is_visible("#joystick")
    phone.wait_for_function("([id, x, z]) => { const e = window.worldsmith.entities.get(id);"
                            " return Math.hypot(e.x - x, e.z - z) > 1.0; }", arg=[you, start["x"], start["z"]])
    finger("touchEnd", 0, 0)
    phone.wait_for_function("() => !window.worldsmith.connected || "
                            "document.querySelector('#joystick').hidden")
    moved = phone.evaluate("(id) => window.worldsmith.entities.get(id)", you)
    # Forward at yaw `turned` is (-sin yaw, -cos yaw) on x-z.
    dx, dz = moved["x"] - start["x"], moved["z"] - start["z"]
    assert dx * -math.sin(turned) + dz * -math.cos(turned) > 0.9 * math.hypot(dx, dz)
