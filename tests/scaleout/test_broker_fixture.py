"""The test broker helper: a real mosquitto that starts, stops, restarts and authenticates."""
from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from tests.broker import mosquitto, mosquitto_factory  # noqa: F401  (fixtures)


async def _roundtrip(port: int, **auth) -> bytes:
    async with aiomqtt.Client("127.0.0.1", port, **auth) as c:
        await c.subscribe("t/x")
        await c.publish("t/x", b"hi")
        async for msg in c.messages:
            return msg.payload


async def test_broker_serves_and_restarts_on_same_port(mosquitto):
    """A message round-trips, the broker refuses connections while stopped, and works again after restart on the same port."""
    port = mosquitto.port
    assert await asyncio.wait_for(_roundtrip(port), 5) == b"hi"
    mosquitto.stop()
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", port, timeout=2):
            pass
    mosquitto.start()
    assert mosquitto.port == port
    assert await asyncio.wait_for(_roundtrip(port), 5) == b"hi"


async def test_broker_with_users_refuses_anonymous(mosquitto_factory):
    """With users configured, the right password is accepted and an anonymous client is refused."""
    b = mosquitto_factory(users={"shard": "s3cret"})
    assert await asyncio.wait_for(_roundtrip(b.port, username="shard", password="s3cret"), 5) == b"hi"
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", b.port, timeout=2):
            pass
