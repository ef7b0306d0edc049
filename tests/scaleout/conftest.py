"""Fixtures for scale-out tests: a real mosquitto (tests.broker) and a fresh PostgreSQL schema."""
from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from tests.broker import mosquitto, mosquitto_factory  # noqa: F401  (fixtures)

PG_URL = os.environ.get("WORLDSMITH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def schema_url(schema: str) -> str:
    """PG_URL with its search_path pinned to `schema`, so runs never see each other's rows."""
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def pg_url():
    """A URL to an empty PostgreSQL schema made for this test and dropped after it."""
    admin = create_engine(PG_URL)
    schema = f"ws_scale_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as e:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {e.orig}")
    try:
        yield schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
