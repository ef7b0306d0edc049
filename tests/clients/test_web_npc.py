"""NPC answers in the browser client: a real shard with our NPC service on the tiny test model
(random weights, so the words are nonsense, but they stream exactly like real ones), driven
from real Chromium by typing `@Name ...` into the chat box."""
from __future__ import annotations

import pytest

from tests.clients.conftest import Pages, ShardThread, failed, _shard_settings, _web_client_installed, join, unique_name

pytestmark = pytest.mark.timeout(120)

# Spawn at the origin between two NPCs in talking range: a terse guard and a sage whose
# answers are long enough to stop halfway.
WORLD = """
[world]
name = "WebTestField"
bounds = [-50.0, -50.0, 50.0, 50.0]
spawn = [0.0, 0.0, 0.0]
spawn_radius = 0.0
aoi = 30.0
shout_range = 40.0
talk_range = 6.0
speed = 6.0

[[npcs]]
id = "guard"
name = "Guard"
x = 2.0
y = 0.0
z = 0.0
persona = "A quiet test guard."
reply_tokens = 24

[[npcs]]
id = "sage"
name = "Old Sage"
x = -2.0
y = 0.0
z = 0.0
persona = "A test sage who never stops talking."
reply_tokens = 512
"""

# Records each text the NPC's line shows while it is still streaming, to prove the panel
# grows piece by piece rather than appearing whole at the end.
WATCH_STREAM = """
() => {
  window.__seenWhileStreaming = [];
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('#chat-log .line.npc.streaming .text')) {
      const seen = window.__seenWhileStreaming;
      if (el.textContent && seen[seen.length - 1] !== el.textContent) seen.push(el.textContent);
    }
  }).observe(document.querySelector('#chat-log'), {childList: true, subtree: true, characterData: true});
}
"""


@pytest.fixture(scope="module")
def npc_shard(tmp_path_factory):
    """A real shard whose NPCs answer through npc.service with the tiny model."""
    from npc.service import NpcService, NpcSettings

    if not _web_client_installed():
        pytest.fail("three.js is not installed: run `npm install` in clients/web (scripts/setup.sh does)")
    folder = tmp_path_factory.mktemp("web-npc")
    (folder / "world.toml").write_text(WORLD, encoding="utf-8")
    settings = _shard_settings(folder, world=str(folder / "world.toml"))
    # One torch thread: the browser and the shard share this CPU with the model.
    s = ShardThread(settings, npcs=lambda: NpcService(NpcSettings(model="tiny", soft_stop=1.0,
                                                                   context_tokens=1024, threads=1)))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def _npc_page(chromium, npc_shard):
    pages = Pages(chromium)
    page = pages.open()
    page.player_id = join(page, npc_shard.http_url, unique_name("ivy"))
    yield pages, page
    pages.snapshot("npc-at-end")
    pages.close()


@pytest.fixture
def npc_page(_npc_page, request):
    """A page joined next to the guard and the sage (shared by this module's tests)."""
    pages, page = _npc_page
    yield page
    if failed(request):
        pages.snapshot(request.node.name + "-FAILED")
    assert not pages.errors(), f"uncaught errors in the page: {pages.errors()}"


def npc_line(page, who: str) -> dict | None:
    """The latest NPC answer line from `who` in the page's chat panel."""
    return page.evaluate("(n) => window.worldsmith.chatLines.filter(l => l.kind === 'npc' && l.name === n).pop()"
                         " || null", who)


def test_npc_answer_streams_into_the_panel_piece_by_piece(npc_page):
    """`@Guard ...` reaches the guard by id; its answer shows in the panel as it streams, ends
    with the full text the shard sent, and its Stop button goes away when it is done."""
    page, you = npc_page, npc_page.player_id
    page.evaluate(WATCH_STREAM)
    page.fill("#chat-input", "@Guard hello, who goes there?")
    page.press("#chat-input", "Enter")
    page.wait_for_function("() => window.worldsmith.chatLines.some(l => l.kind === 'npc' && l.name === 'Guard'"
                           " && l.done)", timeout=60_000)
    said = page.evaluate("window.worldsmith.chatLines.filter(l => l.kind === 'chat' && l.to).pop()")
    assert said["to"] == "n:guard" and said["text"] == "hello, who goes there?"
    line = npc_line(page, "Guard")
    assert line["to"] == you and line["reason"] in ("stop", "length")
    assert line["pieces"] >= 2 and line["text"]
    seen = page.evaluate("window.__seenWhileStreaming")
    # Partial texts were on screen before the end, each a prefix of the final answer.
    assert len(seen) >= 2 and all(line["text"].startswith(s) for s in seen), seen
    # The random model's text may hold control characters: compare the DOM's raw text.
    assert page.locator("#chat-log .line.npc .text").last.text_content().startswith(line["text"])
    assert page.locator("#chat-log button.stop").count() == 0


# A player with quick fingers: presses an answer's Stop button as soon as the answer has
# started showing text (a real click on the real button, just sooner than a test driver could).
STOP_QUICKLY = """
() => new MutationObserver(() => {
  for (const line of document.querySelectorAll('#chat-log .line.npc.streaming')) {
    const stop = line.querySelector('button.stop');
    if (stop && !stop.dataset.pressed && line.querySelector('.text').textContent) {
      stop.dataset.pressed = '1';
      stop.click();
    }
  }
}).observe(document.querySelector('#chat-log'), {childList: true, subtree: true, characterData: true})
"""

# Lines sent from the chat box back to back, so a second one arrives while the first answer
# is surely still in flight.
ASK = """
(lines) => {
  const input = document.querySelector('#chat-input'), form = document.querySelector('#chat-form');
  for (const line of lines) { input.value = line; form.requestSubmit(); }
}
"""

QUESTIONS = ["tell me everything you know", "what happened here long ago?", "sing me the longest song",
             "describe every road in the valley", "who lived here before you?"]


def test_stop_button_cancels_an_answer_and_a_second_question_waits(npc_page):
    """A second @line while an answer is in flight is refused in plain words; the Stop button
    ends the answer as cancelled and the panel says it was stopped."""
    page = npc_page
    guard_lines = page.evaluate("window.worldsmith.chatLines.filter(l => l.kind === 'npc' && l.name === 'Guard').length")
    page.evaluate(STOP_QUICKLY)
    page.evaluate(ASK, [f"@Old Sage {QUESTIONS[0]}", "@Guard and you?"])
    page.wait_for_function("() => window.worldsmith.chatLines.some(l => l.kind === 'error'"
                           " && l.text.includes('still answering you'))", timeout=60_000)
    # The random model sometimes ends an answer on its own within a few pieces, before Stop
    # can land; ask again (the prompt, and so the answer, differs) until one is stopped.
    for attempt, question in enumerate(QUESTIONS):
        if attempt:
            page.evaluate(ASK, [f"@Old Sage {question}"])
        page.wait_for_function("(n) => window.worldsmith.chatLines.filter(l => l.kind === 'npc'"
                               " && l.name === 'Old Sage' && l.done).length > n", arg=attempt, timeout=60_000)
        line = npc_line(page, "Old Sage")
        if line["reason"] == "cancelled":
            break
    assert line["reason"] == "cancelled", line
    assert line["pieces"] >= 1
    assert "(stopped)" in page.inner_text("#chat-log")
    assert page.locator("#chat-log button.stop").count() == 0
    # The refused line to the guard got no answer.
    assert page.evaluate("window.worldsmith.chatLines.filter(l => l.kind === 'npc' && l.name === 'Guard')"
                         ".length") == guard_lines
