"""The web client's rules that need no network: prediction and reconciliation of your own pose,
interpolation of others, chat commands, NPC addressing and reconnect backoff. The modules are
imported into a real Chromium page served by a real shard and driven with made-up messages."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)

WELCOME = {"t": "welcome", "v": 1, "you": "p:me", "name": "me", "token": "x", "shard": "s",
           "tick_hz": 20, "aoi": 30, "speed": 5, "st": 0, "bounds": [-10, -10, 10, 10], "spawn": [0, 0, 0]}
ME = {"id": "p:me", "kind": "player", "name": "me", "x": 0, "y": 0, "z": 0, "yaw": 0}


@pytest.fixture(scope="module")
def modules_page(chromium, web_shard):
    """A page of the client (not joined) in which its ES modules can be imported."""
    ctx = chromium.new_context()
    page = ctx.new_page()
    page.goto(web_shard.http_url)
    yield page
    ctx.close()


def run(page, body: str, arg=None):
    """Evaluate `body` (JS statements; `W` is world.js, `T` words.js, `N` net.js) and return its result."""
    return page.evaluate(
        "async (arg) => { const W = await import('./world.js'), T = await import('./words.js'),"
        f" N = await import('./net.js'); {body} }}", arg)


def test_prediction_walks_at_under_the_speed_limit_inside_the_bounds(modules_page):
    """Walking predicts 90% of the shard's speed along the facing direction (yaw 0 faces -z),
    and never past the world's bounds."""
    out = run(modules_page, """
        const m = new W.WorldModel(); m.welcome(arg.w); m.applyState({t: 'state', ack: 0, enter: [arg.me]}, 0);
        m.walk(1, 0, 0, 1.0); const ahead = {...m.self};
        m.walk(0, 1, 0, 1.0); const right = {...m.self};
        for (let i = 0; i < 10; i++) m.walk(1, 0, 0, 1.0);
        return {ahead, right, edge: {...m.self}};
    """, {"w": WELCOME, "me": ME})
    assert out["ahead"]["z"] == pytest.approx(-4.5) and out["ahead"]["x"] == pytest.approx(0)
    assert out["right"]["x"] == pytest.approx(4.5)
    assert out["edge"]["z"] == pytest.approx(-10)


def test_reconciliation_follows_the_shards_clamped_pose(modules_page):
    """A move the shard clamps by more than half a metre shifts the prediction by the same
    amount; a small lag is re-sent as the same target once acked, and after three tries the
    shard's pose wins."""
    out = run(modules_page, """
        const m = new W.WorldModel(); m.welcome(arg.w); m.applyState({t: 'state', ack: 0, enter: [arg.me]}, 0);
        m.walk(1, 0, 0, 1.0); const first = m.nextMove(0);
        m.walk(1, 0, 0, 0.2); const second = m.nextMove(100);
        const waiting = m.nextMove(150);
        m.applyState({t: 'state', ack: first.seq, upd: [['p:me', 0, 0, -2.5, 0]]}, 150);
        const corrected = {...m.self, corrections: m.corrections, pending: m.pending.length};
        const third = m.nextMove(200);
        m.applyState({t: 'state', ack: second.seq, upd: [['p:me', 0, 0, -3.2, 0]]}, 250);
        // The shard stays at -3.2: each re-send is acked without the pose moving.
        const resends = [];
        for (let i = 0; i < 5; i++) {
          const r = m.nextMove(300 + 100 * i);
          resends.push(r);
          if (r) m.applyState({t: 'state', ack: r.seq}, 350 + 100 * i);
        }
        return {first, second, waiting, corrected, third, resends, final: {...m.self}, corrections: m.corrections};
    """, {"w": WELCOME, "me": ME})
    assert (out["first"]["seq"], out["second"]["seq"]) == (1, 2)
    assert set(out["first"]) == {"t", "seq", "x", "y", "z", "yaw"}
    assert out["first"]["z"] == pytest.approx(-4.5) and out["second"]["z"] == pytest.approx(-5.4)
    assert out["waiting"] is None
    # Acked 2.0 m short of move 1: the prediction and the unacked move 2 shift by 2.0 m;
    # nothing new goes out while move 2 is unanswered.
    assert out["corrected"]["z"] == pytest.approx(-3.4)
    assert out["corrected"]["corrections"] == 1 and out["corrected"]["pending"] == 1
    assert out["third"] is None
    # Move 2 acked at -3.2, under the threshold: the same target is re-sent (seq still grows)
    # three times; then the shard's pose is adopted and nothing more is sent.
    sent = [r for r in out["resends"] if r]
    assert [r["z"] for r in sent] == [pytest.approx(-3.4)] * 3
    assert [r["seq"] for r in sent] == [3, 4, 5]
    assert out["resends"][3:] == [None, None]
    assert out["final"]["z"] == pytest.approx(-3.2) and out["corrections"] == 2


def test_others_are_drawn_interpolated_a_little_in_the_past(modules_page):
    """Another entity is drawn 100 ms behind, blended between its two updates around that
    time, turning the short way round, and held at its last pose when updates stop."""
    out = run(modules_page, """
        const m = new W.WorldModel(); m.welcome(arg.w);
        const other = {id: 'p:o', kind: 'player', name: 'o', x: 0, y: 0, z: 0, yaw: 3.0};
        m.applyState({t: 'state', ack: 0, enter: [arg.me, other]}, 1000);
        m.applyState({t: 'state', ack: 0, upd: [['p:o', 10, 0, 0, -3.0]]}, 1100);
        return {before: m.displayPose('p:o', 1050), mid: m.displayPose('p:o', 1150),
                after: m.displayPose('p:o', 5000), latest: m.entities.get('p:o').pose};
    """, {"w": WELCOME, "me": ME})
    assert out["before"]["x"] == 0
    assert out["mid"]["x"] == pytest.approx(5.0)
    # From 3.0 to -3.0 the short way passes pi, not 0.
    assert abs(out["mid"]["yaw"]) > 3.0
    assert out["after"]["x"] == 10 and out["latest"]["x"] == 10


def test_leave_and_a_new_welcome_forget_entities(modules_page):
    """`leave` removes an entity from view, and a new welcome (a reconnect) starts the view and
    the acks over."""
    out = run(modules_page, """
        const m = new W.WorldModel(); m.welcome(arg.w); const left = [];
        m.onLeave = (id) => left.push(id);
        const obj = {id: 'o:1', kind: 'object', name: 'box', x: 1, y: 0.5, z: 1, yaw: 0, props: {shape: 'box'}};
        m.applyState({t: 'state', ack: 4, enter: [arg.me, obj]}, 0);
        m.applyState({t: 'state', ack: 4, leave: ['o:1']}, 10);
        const afterLeave = [...m.entities.keys()];
        m.welcome(arg.w);
        return {left, afterLeave, afterWelcome: m.entities.size, ack: m.ack};
    """, {"w": WELCOME, "me": ME})
    assert out["afterLeave"] == ["p:me"]
    assert out["left"] == ["o:1", "p:me"]
    assert out["afterWelcome"] == 0 and out["ack"] == 0


def test_chat_commands_and_npc_addressing(modules_page):
    """Typed lines become say/shout/global/private/npc intents; @Name picks the nearest NPC
    whose full (multi-word) or first name matches, and the rest is the line."""
    out = run(modules_page, """
        const p = (s) => T.parseChatInput(s, 'say');
        const m = new W.WorldModel(); m.welcome(arg.w);
        const npc = (id, name, x) => ({id, kind: 'npc', name, x, y: 0, z: 0, yaw: 0});
        m.applyState({t: 'state', ack: 0, enter: [arg.me, npc('n:far', 'Wren', 9), npc('n:near', 'Wren', 2),
                                                  npc('n:bq', 'Barnaby Quill', 5)]}, 0);
        const addr = (s) => { const r = m.addressNpc(s); return r && [r.npc.id, r.text]; };
        return {
          plain: p('hello'), shout: p('/shout hey'), global: p('/g all'), whisper: p('/w Bob psst now'),
          at: p('@Wren, hi'), bad: p('/dance'), empty: p('/w Bob'), who: p('/who'),
          wren: addr('Wren, where is the well?'), full: addr('Barnaby Quill what do you sell'),
          first: addr('barnaby hello'), none: addr('Nobody hi'), nothingSaid: addr('Wren'),
        };
    """, {"w": WELCOME, "me": ME})
    assert out["plain"] == {"kind": "chat", "channel": "say", "text": "hello"}
    assert out["shout"]["channel"] == "shout" and out["global"]["channel"] == "global"
    assert out["whisper"] == {"kind": "private", "to": "Bob", "text": "psst now"}
    assert out["at"]["kind"] == "npc" and out["at"]["name"] == "Wren"
    assert out["bad"]["kind"] == "error" and "/help" in out["bad"]["message"]
    assert out["empty"]["kind"] == "error" and out["who"] == {"kind": "who"}
    assert out["wren"] == ["n:near", "where is the well?"]
    assert out["full"] == ["n:bq", "what do you sell"]
    assert out["first"] == ["n:bq", "hello"]
    assert out["none"] is None and out["nothingSaid"] is None


def test_errors_and_close_codes_read_as_plain_words(modules_page):
    """Each error code and close code a player can meet has a plain sentence, naming who or
    what it is about when the request is known."""
    out = run(modules_page, """
        const e = (code, intent, field) => T.describeError({code, field, msg: 'x'}, intent);
        return {
          tooFar: e('too_far', {kind: 'npc', name: 'Wren'}), nf: e('not_found', {kind: 'private', to: 'Zed'}),
          forbidden: e('forbidden', {kind: 'remove'}), colour: e('invalid', {kind: 'place'}, 'color'),
          npcBusy: T.describeNpcEnd('Wren', 'busy'), cancelled: T.describeNpcEnd('Wren', 'cancelled'),
          full: T.describeClose(4013), replaced: T.describeClose(4002), restart: T.describeClose(1001),
          backoff: [0, 1, 2, 3, 4, 10].map((n) => N.backoffMs(n, () => 0.5)),
        };
    """)
    assert out["tooFar"] == "You are too far from Wren to talk. Walk closer and try again."
    assert out["nf"] == "Nobody called Zed is online right now."
    assert "only remove objects that you placed" in out["forbidden"]
    assert "#ff8800" in out["colour"]
    assert "Wren is busy" in out["npcBusy"] and out["cancelled"] == "(stopped)"
    assert "full" in out["full"] and "another window" in out["replaced"] and "restarting" in out["restart"]
    # Exponential backoff from half a second, capped at ten.
    assert out["backoff"] == [500, 1000, 2000, 4000, 8000, 10000]


def test_chat_panel_renders_streams_busy_and_errors_from_shard_messages(modules_page):
    """The chat panel, fed shard messages through a real (unconnected) Connection, grows an NPC
    line piece by piece with a Stop button only for the speaker, replaces a `busy` answer by a
    plain sentence, and explains an error by what the request that caused it was for."""
    out = run(modules_page, """
        const C = await import('./chat.js');
        const box = document.createElement('div');
        box.innerHTML = '<div class="log"></div><form><input><select><option>say</option></select></form>';
        document.body.appendChild(box);
        const conn = new N.Connection({url: 'ws://127.0.0.1:9/ws', name: 'me'});
        const m = new W.WorldModel(); m.welcome(arg.w);
        const chat = new C.ChatPanel({conn, model: m, log: box.querySelector('.log'), form: box.querySelector('form'),
                                      input: box.querySelector('input'), channel: box.querySelector('select'), onWho: () => {}});
        const text = () => box.querySelector('.log').innerText;
        conn._emit('npc_start', {t: 'npc_start', reply: 'r:1', npc: 'n:w', name: 'Wren', to: 'p:me'});
        conn._emit('npc_token', {t: 'npc_token', reply: 'r:1', text: 'Hello '});
        const partial = text(), stops = box.querySelectorAll('button.stop').length;
        conn._emit('npc_token', {t: 'npc_token', reply: 'r:1', text: 'there.'});
        conn._emit('npc_end', {t: 'npc_end', reply: 'r:1', text: 'Hello there.', reason: 'stop', tokens: 2});
        const done = text(), stopsAfter = box.querySelectorAll('button.stop').length;
        conn._emit('npc_start', {t: 'npc_start', reply: 'r:2', npc: 'n:w', name: 'Wren', to: 'p:other'});
        const othersStops = box.querySelectorAll('button.stop').length;
        conn._emit('npc_end', {t: 'npc_end', reply: 'r:2', text: '', reason: 'busy', tokens: 0});
        const bystander = text();
        conn._emit('npc_start', {t: 'npc_start', reply: 'r:3', npc: 'n:w', name: 'Wren', to: 'p:me'});
        conn._emit('npc_end', {t: 'npc_end', reply: 'r:3', text: '', reason: 'busy', tokens: 0});
        chat.remember('c7', {kind: 'npc', name: 'Wren'});
        conn._emit('error', {t: 'error', code: 'too_far', msg: 'x', re: 'c7'});
        conn._emit('error', {t: 'error', code: 'rate_limited', msg: 'x'});
        const lines = chat.lines.map((l) => [l.kind, l.text]);
        box.remove();
        return {partial, stops, done, stopsAfter, othersStops, bystander, final: text(), lines};
    """, {"w": WELCOME})
    assert "Wren: Hello" in out["partial"] and "there." not in out["partial"]
    assert out["stops"] == 1 and out["stopsAfter"] == 0 and out["othersStops"] == 0
    assert "Wren: Hello there." in out["done"]
    # A busy answer to someone else vanishes quietly; one to you is explained.
    assert "busy" not in out["bystander"] and "(to " not in out["bystander"]
    assert [line for line in out["lines"] if "busy" in line[1]] == [
        ["error", "Wren is busy talking to others right now. Try again in a moment."]]
    assert ["error", "You are too far from Wren to talk. Walk closer and try again."] in out["lines"]
    assert ["error", "Slow down a little: you are sending messages too fast."] in out["lines"]
