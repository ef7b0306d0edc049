"""Two (and three) shard processes joined by a real mosquitto and one real PostgreSQL schema.

The shards, broker and schema are shared by the whole module (starting a shard costs
seconds here); the tests run in file order and the broker-outage test, last, leaves the
broker running again.
"""
from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
from tests.broker import Broker
from tests.pg import fresh_schema
from tests.scaleout.shards import ShardProcess
from tests.server.wire import close_all, join, unique_name, write_world

WAIT_S = 10.0
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A broker, a fresh PostgreSQL schema and shards `a` and `b` of one world (module-wide)."""
    tmp = tmp_path_factory.mktemp("world")
    with fresh_schema("ws_scale") as db:
        broker = Broker(tmp / "broker")
        broker.start()
        w = {"broker": broker, "db": db, "tmp": tmp, "world": write_world(tmp / "field.toml", npcs=())}
        shards = []
        try:
            for name in ("a", "b"):
                shards.append(ShardProcess(name, cwd=tmp, mqtt=broker.url, db=w["db"], world=w["world"]))
            w["a"], w["b"] = shards
            yield w
        finally:
            for s in shards:
                s.stop()
            broker.close()


async def ask(wire, msg: dict) -> dict:
    """Send `msg` with a fresh id and return the reply or error that carries it back."""
    mid = f"q{next(_ids)}"
    await wire.send({**msg, "id": mid})
    return await wire.recv_until(lambda m: m.get("re") == mid and m.get("t") in (msg["t"], "error"))


async def who_until(wire, pred, timeout: float = WAIT_S) -> dict:
    """Ask `who` until its answer satisfies `pred` (presence travels asynchronously)."""
    async def poll() -> dict:
        while True:
            answer = await ask(wire, {"t": "who"})
            if answer["t"] == "who" and pred(answer):
                return answer
            await asyncio.sleep(0.05)  # pacing the polls, under the misc rate limit
    return await asyncio.wait_for(poll(), timeout)


def names(who: dict) -> dict[str, str]:
    """name -> shard from a `who` answer."""
    return {p["name"]: p["shard"] for p in who["players"]}


async def test_global_chat_private_and_who_cross_shards(world):
    """A global line and a private line (by name and by id) reach a player on the other shard, and `who` lists both shards' players."""
    an, bo = unique_name("an"), unique_name("bo")
    alice, bob = await join(world["a"].ws, an), await join(world["b"].ws, bo)
    try:
        roster = await who_until(alice, lambda m: bo in names(m))
        assert names(roster)[an] == "a" and names(roster)[bo] == "b"
        assert roster["total"] == len(roster["players"])
        assert names(await who_until(bob, lambda m: an in names(m)))[an] == "a"

        await alice.send({"t": "chat", "text": "hello world", "channel": "global"})
        got = await bob.recv_type("chat", text="hello world")
        assert (got["from"], got["name"], got["channel"]) == (alice.you, an, "global")

        await alice.send({"t": "chat", "text": "psst", "to": bo})
        got = await bob.recv_type("chat", text="psst")
        assert (got["channel"], got["to"], got["from"]) == ("private", bob.you, alice.you)
        await bob.send({"t": "chat", "text": "back", "to": alice.you})
        got = await alice.recv_type("chat", text="back")
        assert (got["channel"], got["to"]) == ("private", alice.you)

        missing = await ask(alice, {"t": "chat", "text": "x", "to": "nobody-here"})
        assert (missing["t"], missing["code"]) == ("error", "not_found")
        # The sender heard their own global line exactly once (no echo back from the broker).
        await alice.barrier()
        assert sum(1 for m in alice.seen if m.get("text") == "hello world") == 1
        # A player who leaves shard a is gone from `who` on shard b.
        await alice.close()
        assert bo in names(await who_until(bob, lambda m: an not in names(m)))
    finally:
        await close_all(alice, bob)


async def test_object_placed_on_one_shard_appears_on_the_other(world):
    """An object placed on shard a enters the view of a player on shard b, and leaves it when removed."""
    owner, viewer = unique_name("own"), unique_name("view")
    alice = await join(world["a"].ws, owner, password="pw-123456")
    bob = await join(world["b"].ws, viewer)
    label = f"crate-{uuid.uuid4().hex[:6]}"
    try:
        await alice.send({"t": "place", "shape": "box", "x": 2.0, "y": 0.0, "z": 2.0, "label": label})
        state = await bob.state_where(lambda m: any((e.get("props") or {}).get("label") == label
                                                    for e in m.get("enter", ())))
        oid = next(e["id"] for e in state["enter"] if (e.get("props") or {}).get("label") == label)
        assert next(e for e in state["enter"] if e["id"] == oid)["props"]["owner"] == owner
        await alice.send({"t": "remove", "target": oid})
        await bob.state_where(lambda m: oid in m.get("leave", ()))
    finally:
        await close_all(alice, bob)


async def test_kill_9_of_a_shard_clears_its_players_from_who(world):
    """When a shard is killed outright, the broker's last will removes its players from `who` on the others."""
    c = ShardProcess("c", cwd=world["tmp"], mqtt=world["broker"].url, db=world["db"], world=world["world"])
    carol_name = unique_name("cy")
    watcher = await join(world["a"].ws)
    try:
        carol = await join(c.ws, carol_name)
        seen = await who_until(watcher, lambda m: carol_name in names(m))
        assert names(seen)[carol_name] == "c"
        c.kill()
        await who_until(watcher, lambda m: carol_name not in names(m) and "c" not in names(m).values())
        await close_all(carol)
    finally:
        if c.proc.poll() is None:
            c.kill()
        await close_all(watcher)


async def test_an_account_works_on_every_shard(world):
    """A name claimed on shard a logs in on shard b with its password, and a token from a resumes the same player on b."""
    name = unique_name("acct")
    first = await join(world["a"].ws, name, password="pw-abcdef")
    you, token = first.you, first.welcome["token"]
    await first.close()
    by_password = await join(world["b"].ws, name, password="pw-abcdef")
    assert (by_password.you, by_password.welcome["shard"]) == (you, "b")
    await by_password.close()
    by_token = await join(world["b"].ws, token=token)
    try:
        assert (by_token.you, by_token.welcome["name"]) == (you, name)
    finally:
        await close_all(by_token)


async def test_broker_outage_answers_unavailable_and_recovers_without_dropping_players(world):
    """With the broker down, cross-shard features answer `unavailable` while local chat works; after it returns, the same connections reach each other again."""
    a, b, broker = world["a"], world["b"], world["broker"]
    an, bo, cy = unique_name("an"), unique_name("bo"), unique_name("cy")
    alice, bob, cat = await join(a.ws, an), await join(b.ws, bo), await join(a.ws, cy)
    try:
        await who_until(alice, lambda m: bo in names(m))
        mark_a, mark_b = len(a.lines), len(b.lines)
        broker.stop()
        a.wait_for("MQTT broker .* unreachable", WAIT_S * 2, after=mark_a)
        b.wait_for("MQTT broker .* unreachable", WAIT_S * 2, after=mark_b)

        for msg in ({"t": "chat", "text": "anyone?", "channel": "global"},
                    {"t": "chat", "text": "psst", "to": bo},
                    {"t": "who"}):
            answer = await ask(alice, msg)
            assert (answer["t"], answer["code"]) == ("error", "unavailable"), answer
        # This shard's own players are still served: a private line to a local player works.
        await alice.send({"t": "chat", "text": "still here", "to": cy})
        assert (await cat.recv_type("chat", text="still here"))["channel"] == "private"

        mark_a, mark_b = len(a.lines), len(b.lines)
        broker.start()
        a.wait_for("joined world", WAIT_S * 2, after=mark_a)
        b.wait_for("joined world", WAIT_S * 2, after=mark_b)
        # The broker kept nothing (no persistence): presence is published again on reconnect.
        await who_until(alice, lambda m: bo in names(m))
        await alice.send({"t": "chat", "text": "back again", "channel": "global"})
        assert (await bob.recv_type("chat", text="back again"))["from"] == alice.you
        assert len([ln for ln in a.lines[mark_a:] if "unreachable" in ln]) == 0
    finally:
        if not broker.running:
            broker.start()
        await close_all(alice, bob, cat)


async def test_connecting_on_another_shard_replaces_the_older_connection(world):
    """A claimed player who connects on shard b while still connected on shard a keeps the new connection; the old one is closed 4002."""
    name = unique_name("mv")
    old = await join(world["a"].ws, name, password="pw-moving1")
    watcher = await join(world["b"].ws)
    try:
        await who_until(watcher, lambda m: name in names(m))
        new = await join(world["b"].ws, name, password="pw-moving1")
        code, _ = await old.closed(timeout=WAIT_S)
        assert code == 4002
        roster = await who_until(watcher, lambda m: names(m).get(name) == "b")
        assert sum(1 for p in roster["players"] if p["name"] == name) == 1
        await new.barrier()  # the new connection is still served
        assert not any(m.get("t") == "error" for m in new.seen)
    finally:
        await close_all(old, watcher, new)
