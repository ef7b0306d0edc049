"""Every database table Worldsmith keeps, in one place (SQLModel, SQLAlchemy 2).

These row classes never leave `worldstate.store`: callers get frozen records instead.
Millisecond timestamps are BIGINT because they overflow PostgreSQL's 32-bit INTEGER.
String lengths here are the hard ceiling; the store validates against the same numbers
before writing, so an oversize value is a typed error rather than a driver exception.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, Text
from sqlmodel import Field, SQLModel

MAX_NAME = 64
MAX_OBJECT_ID = 64
MAX_SHAPE = 32
MAX_COLOR = 16
MAX_LABEL = 200
MAX_SHARD = 64
MAX_ENTITY_ID = 64
MAX_CHANNEL = 32
MAX_CHAT_TEXT = 4000
MAX_HASH = 256
MAX_SETTING_KEY = 64
MAX_SETTING_VALUE = 4096

# SQLite only auto-assigns INTEGER PRIMARY KEY, so the chat id is BIGINT elsewhere only.
_CHAT_ID = BigInteger().with_variant(Integer, "sqlite")


class AccountRow(SQLModel, table=True):
    """A claimed name and its password hash; `name_key` is the lower-cased name."""

    __tablename__ = "accounts"

    name_key: str = Field(primary_key=True, max_length=MAX_NAME)
    name: str = Field(max_length=MAX_NAME)
    password_hash: str = Field(max_length=MAX_HASH)
    created_ms: int = Field(sa_type=BigInteger)


class PlayerRow(SQLModel, table=True):
    """A player's last known pose, keyed by lower-cased name."""

    __tablename__ = "players"

    name_key: str = Field(primary_key=True, max_length=MAX_NAME)
    name: str = Field(max_length=MAX_NAME)
    x: float
    y: float
    z: float
    yaw: float
    last_seen_ms: int = Field(sa_type=BigInteger)


class ObjectRow(SQLModel, table=True):
    """A persistent placed object (`o:…` id)."""

    __tablename__ = "objects"

    id: str = Field(primary_key=True, max_length=MAX_OBJECT_ID)
    owner: str | None = Field(default=None, max_length=MAX_NAME)
    shape: str = Field(max_length=MAX_SHAPE)
    color: str | None = Field(default=None, max_length=MAX_COLOR)
    label: str | None = Field(default=None, max_length=MAX_LABEL)
    x: float
    y: float
    z: float
    yaw: float
    created_ms: int = Field(sa_type=BigInteger, index=True)


class ChatRow(SQLModel, table=True):
    """One logged chat line, in the order the shard stamped them."""

    __tablename__ = "chat_log"

    id: int | None = Field(
        default=None, sa_column=Column(_CHAT_ID, primary_key=True, autoincrement=True)
    )
    st_ms: int = Field(sa_type=BigInteger, index=True)
    shard: str = Field(max_length=MAX_SHARD)
    sender_id: str = Field(max_length=MAX_ENTITY_ID)
    sender_name: str = Field(max_length=MAX_NAME)
    channel: str = Field(max_length=MAX_CHANNEL)
    text: str = Field(sa_column=Column(Text, nullable=False))
    to: str | None = Field(default=None, max_length=MAX_ENTITY_ID)


class SettingRow(SQLModel, table=True):
    """A key/value pair the shard keeps across restarts (e.g. the token-signing secret)."""

    __tablename__ = "settings"

    key: str = Field(primary_key=True, max_length=MAX_SETTING_KEY)
    value: str = Field(max_length=MAX_SETTING_VALUE)


MAX_MEMORY = 20000


class NpcMemoryRow(SQLModel, table=True):
    """What one NPC remembers of one player: a running summary and recent turns (JSON)."""

    __tablename__ = "npc_memory"

    npc_id: str = Field(primary_key=True, max_length=MAX_ENTITY_ID)
    player_key: str = Field(primary_key=True, max_length=MAX_NAME)
    player_name: str = Field(max_length=MAX_NAME)
    summary: str = Field(sa_column=Column(Text, nullable=False))
    turns_json: str = Field(sa_column=Column(Text, nullable=False))
    updated_ms: int = Field(sa_type=BigInteger)
