"""Alembic migrations of Worldsmith's database; run them with `worldstate.migrate`."""
