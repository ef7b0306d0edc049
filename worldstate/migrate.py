"""Managed schema migrations (Alembic): the Store upgrades its database to the newest
revision every time it opens one.

The revisions live in `worldstate/migrations/versions/`, oldest first. To change the
schema, edit `worldstate.tables` and add a revision next to the others (by hand, or with
``alembic -c worldstate/migrations/alembic.ini -x db=URL revision --autogenerate -m "..."``
against a database at head); `tests/scaleout/test_migrations.py` fails while the tables and
the migrations disagree.

Several shards may open one PostgreSQL database at once: the upgrade runs under a
transaction-scoped advisory lock, so exactly one of them migrates and the others then find
the schema at head. A database made before migrations existed (tables, no version table)
is stamped with the revision its tables match, then upgraded from there.

Command line: ``python -m worldstate.migrate URL [--to REV]`` upgrades and prints the revision.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)
# Alembic says "Context impl ..." at INFO on every open; our own line says what changed.
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed 64-bit number; it names "Worldsmith schema migration" among advisory locks.
_PG_LOCK_KEY = 0x5753_4D49_4752_4154
# Databases from before migrations: the newest revision whose marker table they have.
_LEGACY = (("0002", "npc_memory"), ("0001", "accounts"))


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.lru_cache(maxsize=1)
def head() -> str:
    """The newest revision in `worldstate/migrations/versions`."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(connection: Connection) -> str | None:
    """The revision the database on `connection` is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the database behind `engine` to `revision` (default: the newest); returns
    the revision it is at afterwards. Cheap when it is already there.

    Raises alembic/SQLAlchemy errors as they come; the Store wraps them in StoreError.
    """
    target = head() if revision == "head" else revision
    with engine.connect() as conn:
        if current(conn) == target:
            conn.rollback()
            return target
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # Held until commit: shards opening one database together migrate one at a time.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY - 2**63})
        before = current(conn)
        if before is None:
            before = _stamp_legacy(conn)
        if before != target:
            command.upgrade(_config(conn), revision)
            log.info("database migrated from %s to %s", before or "empty", target)
        after = current(conn)
        conn.commit()
    return after


def downgrade(engine: Engine, revision: str) -> str | None:
    """Take the database back to `revision` ("base": nothing). For tests and rollbacks."""
    with engine.connect() as conn:
        command.downgrade(_config(conn), revision)
        after = current(conn)
        conn.commit()
    return after


def _stamp_legacy(conn: Connection) -> str | None:
    """Stamp a database made by `create_all` with the revision its tables match."""
    tables = set(inspect(conn).get_table_names())
    for revision, marker in _LEGACY:
        if marker in tables:
            command.stamp(_config(conn), revision)
            log.info("database had tables but no migration record: stamped %s", revision)
            return revision
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m worldstate.migrate URL [--to REV]`: upgrade a database and print its revision."""
    parser = argparse.ArgumentParser(prog="python -m worldstate.migrate",
                                     description="Upgrade a Worldsmith database's schema.")
    parser.add_argument("url", help="SQLAlchemy database URL")
    parser.add_argument("--to", default="head", help="target revision (default: head)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = create_engine(args.url)
    try:
        print(upgrade(engine, args.to))
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
