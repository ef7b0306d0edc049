"""Managed migrations: empty -> head, idempotent, in step with worldstate.tables, safe to race."""
from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from worldstate import migrate
from worldstate import tables  # noqa: F401  (registers the tables on the metadata)
from worldstate.records import ObjectRecord
from worldstate.store import Store

TABLES = {"accounts", "players", "objects", "chat_log", "settings", "npc_memory"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'world.db'}"
    return request.getfixturevalue("pg_url")


def _diff(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)


def test_upgrade_from_empty_creates_the_schema_tables_describe(db_url):
    """From an empty database, upgrade reaches head and the result matches worldstate.tables exactly."""
    engine = create_engine(db_url)
    try:
        assert migrate.upgrade(engine) == migrate.head()
        assert TABLES <= set(inspect(engine).get_table_names())
        assert _diff(engine) == []
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_keeps_data(db_url):
    """Opening a Store twice migrates once: the revision and the stored rows are unchanged."""
    store = Store(db_url)
    store.add_object(ObjectRecord("o:1", "ann", "box", None, None, 1.0, 0.0, 2.0, 0.0, 1))
    store.close()
    engine = create_engine(db_url)
    try:
        assert migrate.upgrade(engine) == migrate.head()
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        assert versions == [(migrate.head(),)]
    finally:
        engine.dispose()
    again = Store(db_url)
    try:
        assert [o.id for o in again.load_objects()] == ["o:1"]
    finally:
        again.close()


def test_downgrade_to_base_and_back(db_url):
    """Every revision's downgrade undoes its upgrade: base leaves no tables, head brings them all back."""
    engine = create_engine(db_url)
    try:
        migrate.upgrade(engine)
        assert migrate.downgrade(engine, "base") is None
        assert not TABLES & set(inspect(engine).get_table_names())
        assert migrate.upgrade(engine) == migrate.head()
        assert _diff(engine) == []
    finally:
        engine.dispose()


def test_database_made_by_create_all_is_adopted(db_url):
    """A database from before migrations (tables, no version row) is stamped, not re-created, and keeps its rows."""
    engine = create_engine(db_url)
    try:
        SQLModel.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO settings (key, value) VALUES ('k', 'v')"))
        assert migrate.upgrade(engine) == migrate.head()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT value FROM settings WHERE key = 'k'")).scalar() == "v"
    finally:
        engine.dispose()


def test_shards_opening_one_postgres_together_migrate_once(pg_url):
    """Four stores opened at once on one empty PostgreSQL schema all succeed (the advisory lock serialises them)."""
    errors: list[BaseException] = []
    stores: list[Store] = []
    start = threading.Barrier(4)

    def open_store() -> None:
        start.wait()
        try:
            stores.append(Store(pg_url))
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    for s in stores:
        s.close()
    assert errors == [] and len(stores) == 4
    engine = create_engine(pg_url)
    try:
        assert _diff(engine) == []
    finally:
        engine.dispose()


def test_cli_upgrades_and_prints_the_revision(tmp_path, capsys):
    """`python -m worldstate.migrate URL` upgrades an empty database and prints the head revision."""
    assert migrate.main([f"sqlite:///{tmp_path / 'cli.db'}"]) == 0
    assert capsys.readouterr().out.strip() == migrate.head()
