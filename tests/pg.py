"""A fresh PostgreSQL schema per test (or module), dropped afterwards, so runs never collide.

The database is the local server named by WORLDSMITH_TEST_PG_URL (`scripts/test.sh` sets
it). Unreachable is a failure, not a skip: these tests are the suite's PostgreSQL coverage.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

PG_URL = os.environ.get("WORLDSMITH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def schema_url(schema: str) -> str:
    """PG_URL with its search_path pinned to `schema`."""
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_schema(prefix: str = "ws_test") -> Iterator[str]:
    """Create an empty schema, yield a URL whose search_path is it, drop it afterwards."""
    admin = create_engine(PG_URL)
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as e:
        admin.dispose()
        pytest.fail(f"PostgreSQL not reachable at {PG_URL}: {e.orig}")
    try:
        yield schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
