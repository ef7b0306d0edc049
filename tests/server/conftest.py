"""Fixtures that start a real shard on loopback, port 0, with a real SQLite file."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from server.app import run_shard
from server.settings import Settings


def shard_settings(tmp_path: Path, **overrides) -> Settings:
    """Settings for a test shard: loopback, a free port, a SQLite file under tmp_path."""
    # NPCs stay silent unless a test asks for a model (loading one costs seconds).
    base = dict(host="127.0.0.1", port=0, db=f"sqlite:///{tmp_path / 'world.db'}", shard="test",
                npc_model="none")
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
async def shard(tmp_path):
    """A running shard with default settings; shut down cleanly after the test."""
    async with run_shard(shard_settings(tmp_path)) as s:
        yield s


@pytest.fixture
def start_shard(tmp_path):
    """Factory: `async with start_shard(**overrides) as s:` starts a shard with other settings."""

    @contextlib.asynccontextmanager
    async def start(**overrides):
        async with run_shard(shard_settings(tmp_path, **overrides)) as s:
            yield s

    return start
