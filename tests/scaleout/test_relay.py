"""The MQTT relay in-process (two shards in one event loop, one SQLite file): start-up
without a broker, password-protected brokers, and objects converging after an outage."""
from __future__ import annotations

import asyncio
import contextlib
import urllib.request

import pytest

import server.mqtt
from server.app import run_shard
from server.settings import Settings
from tests.broker import Broker
from tests.scaleout.test_cross_shard import ask, names, who_until
from tests.server.wire import close_all, join, unique_name, write_world

WAIT_S = 10.0


def _get(url: str) -> str:
    """GET over loopback without proxies (the body as text)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=WAIT_S) as resp:
        return resp.read().decode()


def settings(tmp_path, name: str, mqtt: str, **extra) -> Settings:
    """A loopback shard on a free port, sharing one SQLite file and world file with its peers."""
    world = tmp_path / "field.toml"
    if not world.exists():
        write_world(world, npcs=())
    return Settings(host="127.0.0.1", port=0, shard=name, db=f"sqlite:///{tmp_path / 'world.db'}",
                    world=str(world), mqtt=mqtt, **extra)


async def wait_connected(shard, timeout: float = WAIT_S) -> None:
    """Until the shard's relay is connected to the broker."""
    await asyncio.wait_for(shard.relay.connected.wait(), timeout)


async def test_shard_starts_without_broker_and_joins_when_it_appears(tmp_path, monkeypatch):
    """With the broker absent a shard still starts and serves, `who` answers unavailable, and it joins once the broker starts."""
    monkeypatch.setattr(server.mqtt, "CONNECT_WAIT_S", 0.2)
    broker = Broker(tmp_path / "broker")
    try:
        async with run_shard(settings(tmp_path, "a", broker.url)) as a:
            w = await join(a.ws_url)
            try:
                answer = await ask(w, {"t": "who"})
                assert (answer["t"], answer["code"]) == ("error", "unavailable")
                assert "re" in answer
                broker.start()
                await wait_connected(a)
                assert w.you in {p["id"] for p in (await ask(w, {"t": "who"}))["players"]}
            finally:
                await close_all(w)
    finally:
        broker.close()


async def test_password_protected_broker(tmp_path):
    """A shard given --mqtt-user/--mqtt-password joins a broker that refuses anonymous clients."""
    broker = Broker(tmp_path / "broker", users={"shard": "s3cret-pw"})
    broker.start()
    try:
        async with run_shard(settings(tmp_path, "a", broker.url, mqtt_user="shard",
                                      mqtt_password="s3cret-pw")) as a:
            assert a.relay.available
            # The link's figures are on /metrics.
            text = await asyncio.to_thread(_get, a.http_url + "metrics")
            assert "worldsmith_mqtt_connected 1" in text
            assert "# TYPE worldsmith_mqtt_published_total counter" in text
    finally:
        broker.close()


async def test_objects_converge_after_an_outage(tmp_path):
    """An object placed while the broker is down reaches the other shard once it is back (pending event and database resync)."""
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(run_shard(settings(tmp_path, "a", broker.url)))
            b = await stack.enter_async_context(run_shard(settings(tmp_path, "b", broker.url)))
            alice = await join(a.ws_url, unique_name("al"))
            bob = await join(b.ws_url, unique_name("bo"))
            stack.push_async_callback(close_all, alice, bob)
            broker.stop()
            await asyncio.wait_for(_until(lambda: not a.relay.available and not b.relay.available), WAIT_S)
            await alice.send({"t": "place", "shape": "sphere", "x": 3.0, "y": 0.0, "z": 3.0,
                              "label": "while-down"})
            state = await alice.state_where(lambda m: any(e.get("name") == "while-down"
                                                          for e in m.get("enter", ())))
            oid = next(e["id"] for e in state["enter"] if e.get("name") == "while-down")
            assert b.world.get(oid) is None
            broker.start()
            got = await bob.state_where(lambda m: any(e["id"] == oid for e in m.get("enter", ())),
                                        timeout=WAIT_S * 2)
            assert next(e for e in got["enter"] if e["id"] == oid)["kind"] == "object"
            roster = await who_until(alice, lambda m: m["total"] == 2)
            assert set(names(roster).values()) == {"a", "b"}
    finally:
        broker.close()


async def _until(pred) -> None:
    """Wait until `pred()` holds, checking every few milliseconds (state set by another task)."""
    while not pred():
        await asyncio.sleep(0.02)


async def test_clean_shutdown_clears_presence(tmp_path):
    """A shard that stops cleanly leaves no retained presence: its players disappear from `who` elsewhere and nothing of it lingers."""
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        async with run_shard(settings(tmp_path, "a", broker.url)) as a:
            alice = await join(a.ws_url, unique_name("al"))
            try:
                async with run_shard(settings(tmp_path, "b", broker.url)) as b:
                    bob_name = unique_name("bo")
                    bob = await join(b.ws_url, bob_name)
                    await who_until(alice, lambda m: bob_name in names(m))
                    await close_all(bob)
                roster = await who_until(alice, lambda m: "b" not in names(m).values())
                assert bob_name not in names(roster)
                assert "b" not in a.relay.remote.by_shard
            finally:
                await close_all(alice)
    finally:
        broker.close()


async def test_wrong_broker_password_leaves_the_shard_serving_locally(tmp_path, monkeypatch):
    """A shard refused by the broker still serves its players, and cross-shard requests answer unavailable."""
    monkeypatch.setattr(server.mqtt, "CONNECT_WAIT_S", 0.2)
    broker = Broker(tmp_path / "broker", users={"shard": "right-pw"})
    broker.start()
    try:
        async with run_shard(settings(tmp_path, "a", broker.url, mqtt_user="shard",
                                      mqtt_password="wrong-pw")) as a:
            w = await join(a.ws_url)
            try:
                answer = await ask(w, {"t": "chat", "text": "hi all", "channel": "global"})
                assert (answer["t"], answer["code"]) == ("error", "unavailable")
                said = await ask(w, {"t": "chat", "text": "hi here", "channel": "say"})
                assert (said["t"], said["text"]) == ("chat", "hi here")
            finally:
                await close_all(w)
    finally:
        broker.close()
