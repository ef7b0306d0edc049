"""Alembic's environment: runs migrations on the connection `worldstate.migrate` hands in.

`alembic -c worldstate/migrations/alembic.ini -x db=URL upgrade head` works too: then the
URL comes from `-x db=...` (or `sqlalchemy.url`) and a connection is made here.
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from worldstate import tables  # noqa: F401  (registers every table on the metadata)
from sqlmodel import SQLModel

config = context.config
target_metadata = SQLModel.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      # SQLite cannot ALTER most things in place; batch mode copies tables.
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    """Upgrade (or downgrade) on the given connection, or on one made from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("db") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("name the database: alembic -x db=URL ... (or set sqlalchemy.url)")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


run()
