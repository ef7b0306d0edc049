"""NPC memory: what each NPC remembers of each player.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create npc_memory."""
    op.create_table(
        "npc_memory",
        sa.Column("npc_id", sa.String(64), primary_key=True),
        sa.Column("player_key", sa.String(64), primary_key=True),
        sa.Column("player_name", sa.String(64), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("turns_json", sa.Text(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    """Drop npc_memory."""
    op.drop_table("npc_memory")
