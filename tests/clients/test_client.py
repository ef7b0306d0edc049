"""The Python client (`clients.client.WorldClient`) against a real shard on loopback."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import math
import time
from pathlib import Path

import pytest

from clients.client import Closed, CloseCode, ErrorReply, WorldClient
from clients.events import Chat, Entity, State, Unknown, Welcome, Who, parse_event
from server.app import run_shard
from tests.server.conftest import shard_settings

_count = iter(range(1, 10**6))


def fresh(prefix: str = "c") -> str:
    """A player name unused in this test process."""
    return f"{prefix}{next(_count)}"


@pytest.fixture
def start(tmp_path):
    """Factory: `async with start(**settings) as shard` runs a real shard on port 0."""
    @contextlib.asynccontextmanager
    async def run(**overrides):
        async with run_shard(shard_settings(tmp_path, **overrides)) as s:
            yield s
    return run


@pytest.fixture
async def url(start):
    """The WebSocket URL of a running default shard."""
    async with start() as s:
        yield s.ws_url


async def test_connect_gives_welcome_and_own_entity(url):
    """connect() returns after hello/welcome/first state: identity, token and own pose known."""
    name = fresh()
    async with WorldClient.connect(url, name=name) as c:
        assert c.name == name and c.you.startswith("p:") and c.token
        assert isinstance(c.welcome, Welcome) and c.welcome.speed > 0
        assert c.pose is not None and c.pose.kind == "player" and c.ack == 0
        first = await c.next_event()
        second = await c.next_event()
        assert first == c.welcome and isinstance(second, State)
        assert c.you in {e.id for e in second.enter}


async def test_resume_with_token_is_same_player_at_same_pose(url):
    """connect(token=...) resumes the same player at the pose the shard last had."""
    async with WorldClient.connect(url, name=fresh()) as a:
        seq = await a.move(a.pose.x, a.pose.y, a.pose.z, 0.9)
        moved = await a.wait_ack(seq)
        token, you = a.token, a.you
    async with WorldClient.connect(url, token=token) as b:
        assert b.you == you and b.pose.yaw == moved.yaw == 0.9


async def test_wrong_password_raises_closed_auth_failed(url):
    """A wrong password surfaces as Closed(4001) carrying the `auth` ErrorReply."""
    name = fresh()
    async with WorldClient.connect(url, name=name, password="right-pw"):
        pass
    with pytest.raises(Closed) as info:
        await WorldClient.connect(url, name=name, password="wrong-pw")
    assert info.value.code == CloseCode.AUTH_FAILED and info.value.name == "AUTH_FAILED"
    assert info.value.error is not None and info.value.error.code == "auth"


async def test_replaced_connection_raises_closed_replaced(url):
    """When the same player connects again, the old client's iterator and calls raise REPLACED."""
    name = fresh()
    old = await WorldClient.connect(url, name=name, password="pw-pw-pw")
    try:
        async with WorldClient.connect(url, name=name, password="pw-pw-pw") as new:
            assert new.you == old.you
            with pytest.raises(Closed) as info:
                async for _ in old:
                    pass
            assert info.value.code == CloseCode.REPLACED
            with pytest.raises(Closed):
                await old.ping()
    finally:
        await old.close()


async def test_move_wait_ack_and_others_local_view(url):
    """move() + wait_ack() give the shard's pose, and another client's view follows it."""
    async with WorldClient.connect(url, name=fresh()) as a, \
            WorldClient.connect(url, name=fresh()) as b:
        start = a.pose
        seen = b.expect(lambda ev: isinstance(ev, State) and any(
            u.id == a.you and u.yaw == 0.3 for u in ev.upd))
        seq = await a.move(start.x + 0.1, start.y, start.z, 0.3)
        assert seq == 1
        mine = await a.wait_ack(seq)
        assert a.ack >= 1 and mine.yaw == 0.3 and mine.x == pytest.approx(start.x + 0.1)
        await asyncio.wait_for(seen, 3)
        assert b.entities[a.you] == mine


async def test_wait_ack_raises_rate_limited_for_a_dropped_move(start):
    """A move the shard drops for rate makes wait_ack raise ErrorReply(rate_limited)."""
    async with start(move_rate=1.0, move_burst=1.0) as s:
        async with WorldClient.connect(s.ws_url, name=fresh()) as c:
            p = c.pose
            seqs = [await c.move(p.x, p.y, p.z, i / 10) for i in range(1, 4)]
            await c.wait_ack(seqs[0])
            with pytest.raises(ErrorReply) as info:
                await c.wait_ack(seqs[-1])
            assert info.value.code == "rate_limited"


async def test_chat_calls_return_own_copy_and_reach_others(url):
    """say/shout/global_/whisper return our copy; the other client receives each line."""
    async with WorldClient.connect(url, name=fresh()) as a, \
            WorldClient.connect(url, name=fresh()) as b:
        for call, channel in ((a.say, "say"), (a.shout, "shout"), (a.global_, "global")):
            heard = b.expect(lambda ev, ch=channel: isinstance(ev, Chat) and ev.channel == ch)
            line = await call(f"via {channel}")
            assert (line.channel, line.from_, line.text) == (channel, a.you, f"via {channel}")
            assert (await heard).text == f"via {channel}" and (await heard).re is None
        heard = b.expect(lambda ev: isinstance(ev, Chat) and ev.channel == "private")
        line = await a.whisper(b.name, "just you")
        assert line.channel == "private" and line.to == b.you
        assert (await heard).text == "just you"


async def test_whisper_to_nobody_raises_not_found(url):
    """whisper() to an unknown name raises ErrorReply(not_found)."""
    async with WorldClient.connect(url, name=fresh()) as c:
        with pytest.raises(ErrorReply) as info:
            await c.whisper("no-such-player", "hello?")
        assert info.value.code == "not_found"


async def test_place_and_remove_objects(url):
    """place() returns the new id seen by others; remove() by a stranger is forbidden."""
    async with WorldClient.connect(url, name=fresh()) as a, \
            WorldClient.connect(url, name=fresh()) as b:
        seen = b.expect(lambda ev: isinstance(ev, State) and any(
            e.kind == "object" and (e.props or {}).get("label") == "Crate" for e in ev.enter))
        oid = await a.place("box", a.pose.x + 1, 0.0, a.pose.z, color="#336699", label="Crate")
        assert oid.startswith("o:") and a.entities[oid].props["color"] == "#336699"
        await seen
        assert b.entities[oid].name == "Crate"
        with pytest.raises(ErrorReply) as info:
            await b.remove(oid)
        assert info.value.code == "forbidden" and oid in b.entities
        await a.remove(oid)
        assert oid not in a.entities


async def test_place_with_bad_color_raises_invalid_color(url):
    """place() with a colour that is not #rrggbb raises ErrorReply(invalid, field=color)."""
    async with WorldClient.connect(url, name=fresh()) as c:
        with pytest.raises(ErrorReply) as info:
            await c.place("box", c.pose.x, 0.0, c.pose.z, color="blue")
        assert (info.value.code, info.value.field) == ("invalid", "color")


async def test_remove_out_of_view_reports_errors_via_barrier(url):
    """remove() of an id not in view still raises the shard's error (here not_found)."""
    async with WorldClient.connect(url, name=fresh()) as c:
        with pytest.raises(ErrorReply) as info:
            await c.remove("o:missing")
        assert info.value.code == "not_found"


async def test_who_and_ping(url):
    """who() lists both players; ping() returns a positive round-trip time in seconds."""
    async with WorldClient.connect(url, name=fresh()) as a, \
            WorldClient.connect(url, name=fresh()) as b:
        who = await a.who()
        assert isinstance(who, Who) and who.total == 2
        assert {p.id for p in who.players} == {a.you, b.you}
        rtt = await a.ping()
        assert 0 < rtt < 5


async def test_talk_to_far_npc_raises_too_far(url):
    """talk() to an NPC beyond talking range raises ErrorReply(too_far)."""
    async with WorldClient.connect(url, name=fresh()) as c:
        npcs = [e for e in c.entities.values() if e.kind == "npc"]
        far = max(npcs, key=lambda e: (e.x - c.pose.x) ** 2 + (e.z - c.pose.z) ** 2)
        with pytest.raises(ErrorReply) as info:
            await c.talk(far.id, "hello there")
        assert info.value.code == "too_far"


async def test_shutdown_ends_iteration_with_shutting_down(start):
    """When the shard shuts down, iteration raises Closed(1001) and calls raise Closed."""
    async with start() as s:
        c = await WorldClient.connect(s.ws_url, name=fresh())
    with pytest.raises(Closed) as info:
        async for _ in c:
            pass
    assert info.value.code == CloseCode.SHUTTING_DOWN
    with pytest.raises(Closed):
        await c.say("anyone?")
    await c.close()


async def test_close_ends_iteration_quietly(url):
    """After our own close(), iteration drains queued events and then stops."""
    c = await WorldClient.connect(url, name=fresh())
    await c.close()
    events = [ev async for ev in c]
    assert isinstance(events[0], Welcome) and c.closed.code == CloseCode.NORMAL


async def test_event_queue_is_bounded(url):
    """Unread events beyond event_limit are dropped oldest first and counted."""
    async with WorldClient.connect(url, name=fresh(), event_limit=3) as c:
        for _ in range(5):
            await c.ping()
        assert c.dropped_events >= 4 and len(c._events) == 3


def test_events_are_frozen_and_unknown_types_survive():
    """parse_event builds immutable typed events; an unknown type becomes Unknown."""
    state = parse_event({"t": "state", "tick": 3, "st": 1, "ack": 2,
                         "enter": [{"id": "p:1", "kind": "player", "name": "a", "x": 1,
                                    "y": 0, "z": 2, "yaw": 0}],
                         "upd": [["p:2", 1, 2, 3, 0.5]]})
    assert state.enter[0] == Entity("p:1", "player", "a", 1.0, 0.0, 2.0, 0.0)
    assert state.upd[0].id == "p:2" and state.leave == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.ack = 5
    assert parse_event({"t": "weather", "rain": 1}) == Unknown("weather", {"t": "weather",
                                                                         "rain": 1})


def test_connect_rejects_bad_options():
    """connect() validates its options before touching the network."""
    with pytest.raises(ValueError):
        WorldClient.connect("ws://127.0.0.1:1/ws", name="x", timeout=0)
    with pytest.raises(ValueError):
        WorldClient.connect("ws://127.0.0.1:1/ws", name="x", event_limit=0)


async def test_bad_name_raises_invalid_name(url):
    """A name outside the shard's pattern raises ErrorReply(invalid, field=name) at once."""
    with pytest.raises(ErrorReply) as info:
        await WorldClient.connect(url, name="no spaces allowed!", timeout=3)
    assert (info.value.code, info.value.field) == ("invalid", "name")


async def test_long_chat_is_invalid_and_huge_frame_closes_too_big(url):
    """Chat over 500 characters is `invalid` (field text); a frame over 16 KiB closes 1009."""
    async with WorldClient.connect(url, name=fresh()) as c:
        with pytest.raises(ErrorReply) as info:
            await c.say("x" * 501)
        assert (info.value.code, info.value.field) == ("invalid", "text")
        with pytest.raises(Closed) as info:
            await c.say("x" * 20_000)
        assert info.value.code == CloseCode.TOO_BIG and c.closed is info.value


async def test_talk_streams_an_answer_and_cancel_stops_one(tmp_path, capsys):
    """talk() streams pieces that add up to NpcEnd.text; a second line while one is in flight
    is rate_limited; cancel() ends an answer with reason `cancelled`; the documented example
    runs its whole tour (tiny random model)."""
    from npc.service import NpcService, NpcSettings
    from tests.server.wire import write_world

    guard = {"id": "guard", "name": "Guard", "x": 2.0, "y": 0.0, "z": 0.0,
             "persona": "A quiet test guard.", "reply_tokens": 24}
    sage = dict(guard, id="sage", name="Sage", x=-3.0, reply_tokens=400)
    world = write_world(tmp_path / "w.toml", npcs=(guard, sage))
    service = NpcService(NpcSettings(model="tiny", soft_stop=1.0, context_tokens=1024))
    async with run_shard(shard_settings(tmp_path, world=world), npcs=service) as s:
        await service.ready.wait()
        async with WorldClient.connect(s.ws_url, name=fresh(), timeout=20) as c:
            answer = await c.talk("n:guard", "hello guard")
            assert (answer.start.npc, answer.start.to) == ("n:guard", c.you)
            pieces = [piece async for piece in answer]
            assert pieces and "".join(pieces) == answer.end.text
            assert answer.end.reason in ("stop", "length") and answer.end.tokens >= 1

            long = await c.talk("n:sage", "tell me everything")
            with pytest.raises(ErrorReply) as info:
                await c.talk("n:guard", "me again")
            assert info.value.code == "rate_limited"
            await c.cancel(long)
            end = await long.wait_end(timeout=20)
            assert end.reason == "cancelled" and await long.text() == end.text

        await _run_example(s.ws_url)
        out = capsys.readouterr().out
        assert "joined " in out and "placed o:" in out and "invalid on color" in out
        assert "asking Guard" in out and " tokens)" in out


async def _run_example(url: str) -> None:
    """Import examples/client_example.py from its file and run its tour against `url`."""
    path = Path(__file__).resolve().parents[2] / "examples" / "client_example.py"
    spec = importlib.util.spec_from_file_location("client_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    await example.main(url, name=fresh("ex"))


async def test_walk_to_reaches_the_nearest_npc_at_the_speed_limit(url):
    """nearest() finds the closest NPC; walk_to() brings us there through acked moves."""
    async with WorldClient.connect(url, name=fresh()) as c:
        npc = c.nearest("npc")
        others = [e for e in c.entities.values() if e.kind == "npc" and e.id != npc.id]
        dist = lambda e: math.hypot(e.x - c.pose.x, e.z - c.pose.z)  # noqa: E731
        assert all(dist(npc) <= dist(e) for e in others) and c.nearest("npc", "nobody") is None
        started = time.monotonic()
        me = await c.walk_to(npc.x + 3.0, npc.z, within=0.5)
        assert math.hypot(me.x - npc.x - 3.0, me.z - npc.z) <= 0.5 + 1e-6
        assert me == c.entities[c.you] and c.ack == c._seq  # the shard's pose, every step acked
        assert time.monotonic() - started < 30


async def test_expect_predicate_errors_reach_the_caller_only(url):
    """A predicate that raises fails its own expect() future; the client keeps working."""
    async with WorldClient.connect(url, name=fresh()) as c:
        broken = c.expect(lambda ev: ev.no_such_field)
        assert await c.ping() > 0
        with pytest.raises(AttributeError):
            await broken
        assert isinstance(await c.who(), Who)


async def test_concurrent_requests_each_get_their_own_reply(url):
    """Many calls in flight at once are matched to their replies by id, and nothing leaks."""
    async with WorldClient.connect(url, name=fresh()) as c:
        results = await asyncio.gather(*(c.ping() for _ in range(10)),
                                       *(c.who() for _ in range(5)),
                                       *(c.say(f"line {i}") for i in range(3)))
        assert all(isinstance(r, float) for r in results[:10])
        assert all(isinstance(r, Who) and r.total == 1 for r in results[10:15])
        assert [r.text for r in results[15:]] == ["line 0", "line 1", "line 2"]
        assert c._pending == {}


async def test_request_timeout_raises_and_forgets_the_request(url):
    """A reply that never comes raises TimeoutError after the timeout and leaves no state."""
    async with WorldClient.connect(url, name=fresh()) as c:
        with pytest.raises(TimeoutError):
            # The timeout itself is under test: a pong is never an answer of type "nothing".
            await c.request({"t": "ping", "ct": 1}, ("nothing",), timeout=0.2)
        assert c._pending == {}
        assert await c.ping() > 0
