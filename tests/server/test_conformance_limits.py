"""Conformance: close codes for abuse (4008), a full shard (4013), shutdown (1001); HTTP."""
from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request

import orjson
from websockets.exceptions import ConnectionClosed

from tests.server.wire import close_all, join, open_wire


async def test_sustained_error_flood_closes_4008_promptly(start_shard):
    """A client flooding bad frames past the abuse budget is closed 4008 at once, even with
    far more frames unread than the WebSocket library queues; others are still served."""
    async with start_shard(abuse_rate=1.0, abuse_burst=5.0) as s:
        bystander = await join(s.ws_url)
        w = await join(s.ws_url)
        with contextlib.suppress(ConnectionClosed):  # the close may overtake our sending
            for _ in range(100):
                await w.send("][")
        started = time.monotonic()
        code, _ = await w.closed()
        assert code == 4008
        assert time.monotonic() - started < 3.0  # not the shard's 10 s close timeout
        assert any(m.get("code") == "bad_json" for m in w.seen)  # errors came first
        await bystander.send({"t": "ping", "ct": 1})
        await bystander.recv_type("pong")  # everyone else is still served
        await bystander.close()


async def test_full_shard_closes_4013(start_shard):
    """A player beyond max_players is closed 4013; the ones inside stay."""
    async with start_shard(max_players=1) as s:
        inside = await join(s.ws_url)
        extra = await open_wire(s.ws_url)
        await extra.send({"t": "hello", "v": 1, "name": "latecomer"})
        code, _ = await extra.closed()
        assert code == 4013
        assert not any(m.get("t") == "welcome" for m in extra.seen)
        await inside.send({"t": "ping", "ct": 2})
        await inside.recv_type("pong")
        await inside.close()


async def test_shutdown_closes_clients_1001(start_shard):
    """Stopping the shard closes every connected client with 1001."""
    async with start_shard() as s:
        w = await join(s.ws_url)
    assert (await w.closed())[0] == 1001


def _get(url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    with opener.open(url, timeout=5) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


async def test_http_on_the_same_port(shard):
    """The WebSocket port answers GET / (a page), /healthz (200 JSON) and /metrics (text)."""
    status, ctype, body = await asyncio.to_thread(_get, shard.http_url.rstrip("/") + "/healthz")
    assert status == 200 and isinstance(orjson.loads(body), dict)
    status, ctype, body = await asyncio.to_thread(_get, shard.http_url.rstrip("/") + "/metrics")
    assert status == 200 and ctype.startswith("text/plain") and b"# TYPE" in body
    status, ctype, body = await asyncio.to_thread(_get, shard.http_url.rstrip("/") + "/")
    assert status == 200 and "html" in ctype


async def test_cross_shard_features_unavailable_while_broker_is_down(start_shard):
    """With the MQTT broker unreachable, global/who/unknown-private answer `unavailable`
    and are not delivered, while local chat and private lines to local players still work."""
    async with start_shard(mqtt="mqtt://127.0.0.1:1") as s:  # port 1: connection refused
        a = await join(s.ws_url)
        b = await join(s.ws_url)
        for i, msg in enumerate(({"t": "chat", "text": "to all", "channel": "global"},
                                 {"t": "who"},
                                 {"t": "chat", "text": "psst", "to": "somebody-elsewhere"})):
            await a.send({**msg, "id": i})
            err = await a.error()
            assert (err["code"], err["re"]) == ("unavailable", i)
        await a.send({"t": "chat", "text": "psst local", "to": b.welcome["name"]})
        assert (await b.recv_type("chat", text="psst local"))["channel"] == "private"
        await b.barrier()
        assert [m["text"] for m in b.seen if m.get("t") == "chat"] == ["psst local"]
        await close_all(a, b)
