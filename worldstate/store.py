"""Synchronous persistence for a shard: accounts, last poses, objects, chat log, settings.

`Store(url)` takes any SQLAlchemy URL (``sqlite:///world.db``,
``postgresql+psycopg://user@host/db``) and migrates its tables to the newest revision on
open (`worldstate.migrate`; the tables live in `worldstate.tables`). Each public method is
one transaction: it either commits whole or rolls back and raises a `StoreError`, so bad
input never leaves half a write behind. A
method returning means its data is committed; with SQLite (WAL, synchronous=FULL) that
survives the process being killed outright.

The store is blocking by design. The shard calls it only from the one thread that
`server.dbwriter.DbWriter` owns; an internal lock makes any other use safe too.
Records in and out are frozen dataclasses (`worldstate.records`), never ORM rows.
"""
from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import delete, event, insert, select
from sqlalchemy.engine import Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from alembic.util import CommandError as AlembicError
from sqlmodel import Session

from worldstate import migrate
from worldstate import tables as t
from worldstate.passwords import (
    MAX_PASSWORD_CHARS, ScryptCost, hash_password, needs_rehash, verify_password,
)
from worldstate.records import (
    ChatLine, InvalidRecord, MemoryRecord, NameTaken, ObjectExists, ObjectRecord, PlayerRecord,
    StoreClosed, StoreError, check_name, name_key,
)

__all__ = [
    "Store", "StoreSettings", "ScryptCost", "StoreError", "NameTaken", "ObjectExists",
    "InvalidRecord", "StoreClosed", "PlayerRecord", "ObjectRecord", "ChatLine", "MemoryRecord",
]

log = logging.getLogger(__name__)

SECRET_KEY = "token_secret"
SECRET_BYTES = 32
MAX_RECENT_CHAT = 10_000
_SQLITE_SYNC = ("NORMAL", "FULL", "EXTRA")


@dataclass(frozen=True)
class StoreSettings:
    """Tunables of the store. `kdf` is the scrypt cost for new password hashes."""

    kdf: ScryptCost = field(default_factory=ScryptCost)
    busy_timeout_ms: int = 5000
    sqlite_synchronous: str = "FULL"

    def __post_init__(self) -> None:
        if not isinstance(self.kdf, ScryptCost):
            raise ValueError("kdf must be a ScryptCost")
        if not isinstance(self.busy_timeout_ms, int) or self.busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be >= 0, got {self.busy_timeout_ms!r}")
        if self.sqlite_synchronous not in _SQLITE_SYNC:
            raise ValueError(f"sqlite_synchronous must be one of {_SQLITE_SYNC}")


class Store:
    """A shard's database. Open with a SQLAlchemy URL; call `close()` when done."""

    def __init__(self, url: str, *, settings: StoreSettings | None = None) -> None:
        self.settings = settings or StoreSettings()
        self._lock = threading.Lock()
        self._closed = False
        try:
            parsed = make_url(url)
        except ArgumentError as e:
            raise StoreError(f"not a database URL: {url!r}") from e
        self.url = parsed.render_as_string(hide_password=True)
        self._engine = _make_engine(parsed, self.settings)
        self._pose_upsert = _pose_upsert(self._engine.dialect.name)
        try:
            # Managed migrations (worldstate.migrate), not create_all: an existing
            # database is upgraded in place, and shards sharing one take turns.
            migrate.upgrade(self._engine)
        except (SQLAlchemyError, AlembicError) as e:
            self._engine.dispose()
            raise StoreError(f"cannot open database {self.url}: {e}") from e

    # -- settings -------------------------------------------------------------------
    def get_secret(self) -> bytes:
        """The token-signing secret: made randomly on the first call, then kept."""
        for _ in range(2):  # a second try only if another process raced us to create it
            try:
                with self._tx() as s:
                    row = s.get(t.SettingRow, SECRET_KEY)
                    if row is not None:
                        return bytes.fromhex(row.value)
                    fresh = secrets.token_bytes(SECRET_BYTES)
                    s.add(t.SettingRow(key=SECRET_KEY, value=fresh.hex()))
                return fresh
            except _Conflict:
                continue
        raise StoreError("could not create the token secret")

    # -- accounts ---------------------------------------------------------------------
    def create_account(self, name: str, password: str) -> None:
        """Claim `name` with `password`. Raises NameTaken if claimed in any letter case."""
        check_name(name)
        _check_password(password)
        key = name_key(name)
        if self.has_account(name):  # cheap refusal before spending a hash on it
            raise NameTaken(f"name {name!r} is taken")
        hashed = hash_password(password, self.settings.kdf)  # slow: outside the transaction
        try:
            with self._tx() as s:
                if s.get(t.AccountRow, key) is not None:
                    raise NameTaken(f"name {name!r} is taken")
                s.add(t.AccountRow(name_key=key, name=name, password_hash=hashed,
                                   created_ms=_now_ms()))
        except _Conflict as e:
            raise NameTaken(f"name {name!r} is taken") from e

    def check_password(self, name: str, password: str) -> bool | None:
        """True if `password` is right for `name`, False if wrong, None if no such account.

        A hash made with an older scrypt cost is upgraded to the current one on success.
        """
        key = _lookup_key(name)
        if key is None:
            return None
        with self._tx() as s:
            row = s.get(t.AccountRow, key)
            stored = None if row is None else row.password_hash
        if stored is None:
            return None
        # A password no account could have (wrong type, empty, oversize) is simply wrong.
        if not isinstance(password, str) or not 1 <= len(password) <= MAX_PASSWORD_CHARS:
            return False
        ok = verify_password(password, stored)
        if ok and needs_rehash(stored, self.settings.kdf):
            self._rehash(key, stored, password)
        return ok

    def has_account(self, name: str) -> bool:
        """True if `name` (any letter case) is claimed."""
        key = _lookup_key(name)
        if key is None:
            return False
        with self._tx() as s:
            return s.get(t.AccountRow, key) is not None

    def _rehash(self, key: str, old: str, password: str) -> None:
        fresh = hash_password(password, self.settings.kdf)
        try:
            with self._tx() as s:
                row = s.get(t.AccountRow, key)
                if row is not None and row.password_hash == old:  # not changed meanwhile
                    row.password_hash = fresh
        except StoreError:
            # The login itself succeeded; the upgrade can wait for the next one.
            log.warning("could not upgrade the password hash of %r", key, exc_info=True)

    # -- players ----------------------------------------------------------------------
    def load_player(self, name: str) -> PlayerRecord | None:
        """The last saved pose of `name` (any letter case), or None if never saved."""
        key = _lookup_key(name)
        if key is None:
            return None
        with self._tx() as s:
            row = s.get(t.PlayerRow, key)
            if row is None:
                return None
            return PlayerRecord(row.name, row.x, row.y, row.z, row.yaw, row.last_seen_ms)

    def save_poses(self, records: Iterable[PlayerRecord]) -> None:
        """Upsert many players' poses in one transaction.

        Within a batch the last record per name wins; against stored rows, a record
        older (by `last_seen_ms`) than the stored one is ignored, so a late write cannot
        move a player back in time.
        """
        latest: dict[str, PlayerRecord] = {}
        for rec in records:
            _check_type(rec, PlayerRecord)
            latest[name_key(rec.name)] = rec
        if not latest:
            return
        rows = [
            dict(name_key=k, name=r.name, x=float(r.x), y=float(r.y), z=float(r.z),
                 yaw=float(r.yaw), last_seen_ms=r.last_seen_ms)
            for k, r in latest.items()
        ]
        with self._tx() as s:
            self._upsert_players(s, rows)

    def _upsert_players(self, s: Session, rows: list[dict]) -> None:
        if self._pose_upsert is None:  # a backend without ON CONFLICT: one round trip per row
            for row in rows:
                current = s.get(t.PlayerRow, row["name_key"])
                if current is None:
                    s.add(t.PlayerRow(**row))
                elif current.last_seen_ms <= row["last_seen_ms"]:
                    for k, v in row.items():
                        setattr(current, k, v)
            return
        # executemany of one cached statement: compiled once, the driver loops in C.
        s.execute(self._pose_upsert, rows)

    # -- objects ----------------------------------------------------------------------
    def add_object(self, rec: ObjectRecord) -> None:
        """Store a new object. Raises ObjectExists if its id is already stored."""
        _check_type(rec, ObjectRecord)
        try:
            with self._tx() as s:
                if s.get(t.ObjectRow, rec.id) is not None:
                    raise ObjectExists(f"object {rec.id!r} already exists")
                s.add(t.ObjectRow(
                    id=rec.id, owner=rec.owner, shape=rec.shape, color=rec.color,
                    label=rec.label, x=float(rec.x), y=float(rec.y), z=float(rec.z),
                    yaw=float(rec.yaw), created_ms=rec.created_ms,
                ))
        except _Conflict as e:
            raise ObjectExists(f"object {rec.id!r} already exists") from e

    def remove_object(self, object_id: str) -> bool:
        """Delete an object; True if it existed."""
        if not isinstance(object_id, str) or len(object_id) > t.MAX_OBJECT_ID:
            return False
        with self._tx() as s:
            result = s.execute(delete(t.ObjectRow).where(t.ObjectRow.id == object_id))
            return result.rowcount > 0

    def load_objects(self) -> list[ObjectRecord]:
        """Every stored object, oldest first."""
        with self._tx() as s:
            rows = s.scalars(select(t.ObjectRow).order_by(t.ObjectRow.created_ms, t.ObjectRow.id))
            return [
                ObjectRecord(r.id, r.owner, r.shape, r.color, r.label,
                             r.x, r.y, r.z, r.yaw, r.created_ms)
                for r in rows
            ]

    # -- chat -------------------------------------------------------------------------
    def log_chat(self, lines: Iterable[ChatLine]) -> None:
        """Append chat lines, in the order given, in one transaction."""
        rows = []
        for line in lines:
            _check_type(line, ChatLine)
            rows.append(dict(st_ms=line.st_ms, shard=line.shard, sender_id=line.sender_id,
                             sender_name=line.sender_name, channel=line.channel,
                             text=line.text, to=line.to))
        if not rows:
            return
        with self._tx() as s:
            s.execute(insert(t.ChatRow), rows)

    def recent_chat(self, limit: int = 100) -> list[ChatLine]:
        """The last `limit` logged lines, oldest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_RECENT_CHAT:
            raise InvalidRecord(f"limit must be an integer in 0..{MAX_RECENT_CHAT}")
        with self._tx() as s:
            rows = s.scalars(select(t.ChatRow).order_by(t.ChatRow.id.desc()).limit(limit))
            lines = [
                ChatLine(r.st_ms, r.shard, r.sender_id, r.sender_name, r.channel, r.text, r.to)
                for r in rows
            ]
        lines.reverse()
        return lines

    # -- NPC memory -------------------------------------------------------------------
    def load_memory(self, npc_id: str, player_name: str) -> MemoryRecord | None:
        """What `npc_id` remembers of `player_name` (any letter case), or None."""
        key = _lookup_key(player_name)
        if key is None or not isinstance(npc_id, str) or len(npc_id) > t.MAX_ENTITY_ID:
            return None
        with self._tx() as s:
            row = s.get(t.NpcMemoryRow, (npc_id, key))
            if row is None:
                return None
            turns = tuple((a, b) for a, b in json.loads(row.turns_json))
            return MemoryRecord(row.npc_id, row.player_name, row.summary, turns, row.updated_ms)

    def save_memory(self, rec: MemoryRecord) -> None:
        """Insert or replace one NPC's memory of one player."""
        _check_type(rec, MemoryRecord)
        key = name_key(rec.player_name)
        turns = json.dumps([list(p) for p in rec.turns], ensure_ascii=False)
        with self._tx() as s:
            row = s.get(t.NpcMemoryRow, (rec.npc_id, key))
            if row is None:
                s.add(t.NpcMemoryRow(npc_id=rec.npc_id, player_key=key, player_name=rec.player_name,
                                     summary=rec.summary, turns_json=turns, updated_ms=rec.updated_ms))
            else:
                row.player_name, row.summary = rec.player_name, rec.summary
                row.turns_json, row.updated_ms = turns, rec.updated_ms

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Release every connection. Safe to call twice; later calls raise StoreClosed."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._engine.dispose()

    @property
    def closed(self) -> bool:
        """True once `close()` has run."""
        return self._closed

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Session]:
        """One locked transaction; database failures come out as StoreError."""
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            try:
                with Session(self._engine, expire_on_commit=False) as s, s.begin():
                    yield s
            except IntegrityError as e:
                raise _Conflict(str(e.orig)) from e
            except SQLAlchemyError as e:
                raise StoreError(f"database error: {e}") from e


class _Conflict(StoreError):
    """A uniqueness constraint fired at commit; callers turn it into a precise error."""


def _make_engine(url, settings: StoreSettings) -> Engine:
    if url.get_backend_name() != "sqlite":
        # pre_ping replaces connections a restarted server dropped, instead of failing once.
        return create_engine(url, pool_pre_ping=True)
    memory = url.database in (None, "", ":memory:")
    kwargs: dict = {"connect_args": {"check_same_thread": False}}
    if memory:  # one shared connection, or each pooled connection would be its own database
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cur.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
        cur.execute(f"PRAGMA busy_timeout={settings.busy_timeout_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def _pose_upsert(dialect: str):
    """INSERT … ON CONFLICT DO UPDATE for poses where a newer last_seen_ms wins, or None."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        return None
    table = t.PlayerRow.__table__
    stmt = dialect_insert(table)
    fresh = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[table.c.name_key],
        set_={c: fresh[c] for c in ("name", "x", "y", "z", "yaw", "last_seen_ms")},
        where=table.c.last_seen_ms <= fresh.last_seen_ms,
    )


def _check_password(password: object) -> None:
    if not isinstance(password, str) or not 1 <= len(password) <= MAX_PASSWORD_CHARS:
        raise InvalidRecord(f"password must be a string of 1..{MAX_PASSWORD_CHARS} characters")


def _check_type(rec: object, kind: type) -> None:
    if not isinstance(rec, kind):
        raise InvalidRecord(f"expected {kind.__name__}, got {type(rec).__name__}")


def _lookup_key(name: object) -> str | None:
    """The key for looking `name` up, or None when no stored name could match it."""
    if not isinstance(name, str) or not name or len(name) > t.MAX_NAME:
        return None
    return name_key(name)


def _now_ms() -> int:
    return int(time.time() * 1000)
