"""Fixtures for scale-out tests: a real mosquitto (tests.broker) and a fresh PostgreSQL schema."""
from __future__ import annotations

import pytest

from tests.broker import mosquitto, mosquitto_factory  # noqa: F401  (fixtures)
from tests.pg import PG_URL, fresh_schema, schema_url  # noqa: F401  (re-exported for the scale-out tests)


@pytest.fixture
def pg_url():
    """A URL to an empty PostgreSQL schema made for this test and dropped after it."""
    with fresh_schema("ws_scale") as url:
        yield url
