"""Baseline: accounts, players, objects, chat log and settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Lengths are written out, not imported from `worldstate.tables`: a migration records the
schema as it was, and must not change when the tables module does.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite auto-assigns only INTEGER PRIMARY KEY; elsewhere the chat id is BIGINT.
_CHAT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the first five tables."""
    op.create_table(
        "accounts",
        sa.Column("name_key", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "players",
        sa.Column("name_key", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("z", sa.Float(), nullable=False),
        sa.Column("yaw", sa.Float(), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "objects",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("shape", sa.String(32), nullable=False),
        sa.Column("color", sa.String(16), nullable=True),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("z", sa.Float(), nullable=False),
        sa.Column("yaw", sa.Float(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_objects_created_ms", "objects", ["created_ms"])
    op.create_table(
        "chat_log",
        sa.Column("id", _CHAT_ID, primary_key=True, autoincrement=True),
        sa.Column("st_ms", sa.BigInteger(), nullable=False),
        sa.Column("shard", sa.String(64), nullable=False),
        sa.Column("sender_id", sa.String(64), nullable=False),
        sa.Column("sender_name", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("to", sa.String(64), nullable=True),
    )
    op.create_index("ix_chat_log_st_ms", "chat_log", ["st_ms"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(4096), nullable=False),
    )


def downgrade() -> None:
    """Drop them again (everything in them is lost)."""
    op.drop_table("settings")
    op.drop_index("ix_chat_log_st_ms", table_name="chat_log")
    op.drop_table("chat_log")
    op.drop_index("ix_objects_created_ms", table_name="objects")
    op.drop_table("objects")
    op.drop_table("players")
    op.drop_table("accounts")
