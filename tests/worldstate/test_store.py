"""The store against a real SQLite file and the local PostgreSQL: accounts, poses, objects, chat."""
from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from tests.pg import fresh_schema
from worldstate.passwords import ScryptCost, hash_password, verify_password
from worldstate.errors import WorldError
from worldstate.store import (
    ChatLine, InvalidRecord, NameTaken, ObjectExists, ObjectRecord, PlayerRecord, Store,
    StoreClosed, StoreError, StoreSettings,
)

# Cheap enough for tests, still the real scrypt path.
FAST = StoreSettings(kdf=ScryptCost(n=2**8, r=8, p=1))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path):
    """A URL to an empty database: a SQLite file under tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'world.db'}"
        return
    with fresh_schema("ws_test") as url:
        yield url


@pytest.fixture
def store(store_url):
    """An open store on `store_url`, closed after the test."""
    s = Store(store_url, settings=FAST)
    yield s
    s.close()


def _obj(i: int, owner: str | None = "alice", **kw) -> ObjectRecord:
    fields = dict(id=f"o:{i}", owner=owner, shape="box", color="#a1b2c3", label=f"crate {i}",
                  x=float(i), y=0.5, z=-float(i), yaw=0.25, created_ms=1_700_000_000_000 + i)
    fields.update(kw)
    return ObjectRecord(**fields)


def _line(i: int, **kw) -> ChatLine:
    fields = dict(st_ms=1_700_000_000_000 + i, shard="east", sender_id="p:1",
                  sender_name="alice", channel="say", text=f"line {i} — ünïcode", to=None)
    fields.update(kw)
    return ChatLine(**fields)


# -- accounts ---------------------------------------------------------------------------
def test_account_password_right_wrong_and_unknown(store):
    """A created account accepts its password in any name case, refuses others (odd ones too), and unknown names give None."""
    store.create_account("Alice", "s3cret pw")
    assert store.check_password("Alice", "s3cret pw") is True
    assert store.check_password("aLICE", "s3cret pw") is True
    assert store.check_password("Alice", "s3cret PW") is False
    assert store.check_password("bob", "s3cret pw") is None
    assert store.has_account("ALICE") and not store.has_account("bob")
    # Passwords no account could have are wrong, not errors.
    for odd in ["", "x" * 5000, b"s3cret pw", None]:
        assert store.check_password("alice", odd) is False
        assert store.check_password("bob", odd) is None


def test_duplicate_name_in_any_case_is_refused(store):
    """Claiming a taken name in another letter case raises NameTaken and leaves the original password in force."""
    store.create_account("Alice", "first")
    with pytest.raises(NameTaken):
        store.create_account("ALICE", "second")
    assert isinstance(NameTaken("x"), StoreError) and isinstance(NameTaken("x"), WorldError)
    assert store.check_password("alice", "first") is True
    assert store.check_password("alice", "second") is False


def test_hash_is_salted_and_never_the_password(store, store_url):
    """Two accounts with one password store different hashes that carry their scrypt parameters and not the password."""
    store.create_account("alice", "same password")
    store.create_account("bob", "same password")
    engine = create_engine(store_url)
    with engine.connect() as conn:
        hashes = [r[0] for r in conn.execute(text("SELECT password_hash FROM accounts"))]
    engine.dispose()
    assert len(hashes) == 2 and hashes[0] != hashes[1]
    for h in hashes:
        assert "same password" not in h
        assert h.startswith("scrypt$256$8$1$")


def test_old_cost_hash_verifies_then_upgrades(store_url):
    """A hash made at an older KDF cost still verifies after the cost changes, and is rehashed at the new cost."""
    old = Store(store_url, settings=FAST)
    old.create_account("alice", "pw")
    old.close()
    new = Store(store_url, settings=StoreSettings(kdf=ScryptCost(n=2**9)))
    try:
        assert new.check_password("alice", "wrong") is False
        assert new.check_password("alice", "pw") is True
        engine = create_engine(store_url)
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT password_hash FROM accounts")).scalar_one()
        engine.dispose()
        assert stored.startswith("scrypt$512$8$1$")
        assert new.check_password("ALICE", "pw") is True
    finally:
        new.close()


def test_malformed_stored_hash_verifies_nothing():
    """A damaged or foreign hash string makes verification fail instead of raising."""
    good = hash_password("pw", ScryptCost(n=2**8))
    assert verify_password("pw", good)
    for bad in ["", "pw", "bcrypt$x", good.replace("scrypt$256", "scrypt$300"),
                good[:-8], "scrypt$1073741824$8$1$AAAA$AAAA"]:
        assert verify_password("pw", bad) is False


def test_scrypt_cost_is_validated():
    """KDF cost settings reject non-powers-of-two, zero factors and gigabyte-scale memory."""
    for bad in [dict(n=1000), dict(n=1), dict(r=0), dict(p=0), dict(n=2**20, r=16)]:
        with pytest.raises(ValueError):
            ScryptCost(**bad)
    with pytest.raises(ValueError):
        StoreSettings(sqlite_synchronous="OFF")


# -- settings ---------------------------------------------------------------------------
def test_secret_is_created_once_and_kept_across_reopen(store_url):
    """The token secret is 32 random bytes, identical on every call and after reopening the database."""
    first = Store(store_url, settings=FAST)
    secret = first.get_secret()
    assert len(secret) == 32 and secret == first.get_secret()
    first.close()
    again = Store(store_url, settings=FAST)
    assert again.get_secret() == secret
    again.close()


def test_racing_first_secret_calls_agree(store_url):
    """Two stores on one fresh database asking for the secret at the same moment get the same one."""
    stores = [Store(store_url, settings=FAST) for _ in range(2)]
    barrier = threading.Barrier(2)
    got: list[bytes] = []

    def ask(s: Store) -> None:
        barrier.wait(10)
        got.append(s.get_secret())

    threads = [threading.Thread(target=ask, args=(s,)) for s in stores]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for s in stores:
        s.close()
    assert len(got) == 2 and got[0] == got[1]


def test_racing_claims_of_one_name_have_one_winner(store_url):
    """Two stores claiming the same name (different case) at once: exactly one succeeds, the other gets NameTaken."""
    stores = [Store(store_url, settings=FAST) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def claim(s: Store, name: str) -> None:
        barrier.wait(10)
        try:
            s.create_account(name, f"pw-{name}")
            outcomes.append(name)
        except NameTaken:
            outcomes.append("taken")

    threads = [threading.Thread(target=claim, args=(s, n)) for s, n in zip(stores, ["Zed", "ZED"])]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert len(outcomes) == 2 and outcomes.count("taken") == 1
        winner = next(o for o in outcomes if o != "taken")
        assert stores[0].check_password("zed", f"pw-{winner}") is True
    finally:
        for s in stores:
            s.close()


# -- players ----------------------------------------------------------------------------
def test_poses_upsert_and_survive_reopen(store_url):
    """Saved poses are upserted per name (any case), the newest wins, and they load after reopening."""
    s = Store(store_url, settings=FAST)
    s.save_poses([PlayerRecord("Alice", 1, 2, 3, 0.1, 100), PlayerRecord("bob", 5, 0, 5, 0, 100)])
    s.save_poses([PlayerRecord("alice", 10, 20, 30, 1.5, 200)])
    s.save_poses([PlayerRecord("ALICE", -1, -1, -1, 0, 150)])  # older than stored: ignored
    s.close()
    s = Store(store_url, settings=FAST)
    try:
        assert s.load_player("ALICE") == PlayerRecord("alice", 10.0, 20.0, 30.0, 1.5, 200)
        assert s.load_player("bob") == PlayerRecord("bob", 5.0, 0.0, 5.0, 0.0, 100)
        assert s.load_player("carol") is None
        assert s.load_player("x" * 500) is None
    finally:
        s.close()


def test_large_pose_batch_coalesces_within_batch(store):
    """One batch of 1,500 poses with repeated names keeps the last per name."""
    batch = [PlayerRecord(f"p{i % 700}", float(i), 0, 0, 0, 1_000) for i in range(1500)]
    store.save_poses(batch)
    assert store.load_player("p0").x == 1400.0
    assert store.load_player("p699").x == 1399.0
    assert store.load_player("p99").x == 1499.0


# -- objects ----------------------------------------------------------------------------
def test_objects_add_remove_and_reload(store_url):
    """Objects round-trip every field, duplicates are refused, removal reports existence, and all survive reopen."""
    s = Store(store_url, settings=FAST)
    s.add_object(_obj(2))
    s.add_object(_obj(1, owner=None, color=None, label=None))
    s.add_object(_obj(3))
    with pytest.raises(ObjectExists):
        s.add_object(_obj(2, label="imposter"))
    assert s.remove_object("o:3") is True
    assert s.remove_object("o:3") is False
    assert s.remove_object("o:nope") is False
    s.close()
    s = Store(store_url, settings=FAST)
    try:
        assert s.load_objects() == [_obj(1, owner=None, color=None, label=None), _obj(2)]
    finally:
        s.close()


# -- chat -------------------------------------------------------------------------------
def test_chat_log_keeps_order_and_fields(store):
    """Logged chat comes back oldest-first with private `to` intact, and `limit` keeps only the newest lines."""
    store.log_chat([_line(i) for i in range(5)])
    store.log_chat([_line(5, channel="whisper", to="p:9", text="")])
    assert store.recent_chat(100) == [_line(i) for i in range(5)] + [
        _line(5, channel="whisper", to="p:9", text="")
    ]
    assert [c.st_ms for c in store.recent_chat(2)] == [1_700_000_000_004, 1_700_000_000_005]
    assert store.recent_chat(0) == []
    with pytest.raises(InvalidRecord):
        store.recent_chat(-1)


# -- bad input --------------------------------------------------------------------------
def test_bad_records_cannot_be_built():
    """Records refuse wrong types, oversize text, NUL, bad colors, bad ids and non-finite numbers."""
    bad = [
        lambda: PlayerRecord("", 0, 0, 0, 0, 0),
        lambda: PlayerRecord("a" * 65, 0, 0, 0, 0, 0),
        lambda: PlayerRecord("al\nice", 0, 0, 0, 0, 0),
        lambda: PlayerRecord("alice", float("nan"), 0, 0, 0, 0),
        lambda: PlayerRecord("alice", 0, 0, 0, 0, -1),
        lambda: PlayerRecord("alice", "1", 0, 0, 0, 0),
        lambda: _obj(1, id="x:1"),
        lambda: _obj(1, color="red"),
        lambda: _obj(1, label="x" * 201),
        lambda: _obj(1, shape="a\x00b"),
        lambda: _line(1, text="x" * 4001),
        lambda: _line(1, sender_name=None),
    ]
    for make in bad:
        with pytest.raises(InvalidRecord):
            make()


def test_bad_input_changes_nothing(store):
    """A batch with one bad item, an oversize name or a non-string password raises and writes nothing."""
    store.save_poses([PlayerRecord("alice", 1, 1, 1, 0, 10)])
    with pytest.raises(InvalidRecord):
        store.save_poses([PlayerRecord("alice", 9, 9, 9, 0, 20), "not a record"])
    with pytest.raises(InvalidRecord):
        store.log_chat([_line(1), {"text": "forged"}])
    with pytest.raises(InvalidRecord):
        store.create_account("n" * 65, "pw")
    with pytest.raises(InvalidRecord):
        store.create_account("bob", b"bytes")
    with pytest.raises(InvalidRecord):
        store.add_object({"id": "o:1"})
    assert store.load_player("alice").x == 1.0
    assert store.recent_chat(10) == []
    assert not store.has_account("bob") and store.load_objects() == []


def test_closed_store_refuses_calls(store_url):
    """After close() every call raises StoreClosed, and closing twice is harmless."""
    s = Store(store_url, settings=FAST)
    s.close()
    s.close()
    with pytest.raises(StoreClosed):
        s.load_objects()


def test_unopenable_database_is_a_store_error(tmp_path):
    """A SQLite path in a missing directory, a non-URL, or an unreachable server raises StoreError naming the problem."""
    with pytest.raises(StoreError, match="cannot open database"):
        Store(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'w.db'}")
    with pytest.raises(StoreError, match="not a database URL"):
        Store("::not a url::")
    with pytest.raises(StoreError, match="cannot open database"):  # nothing listens on port 1
        Store("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=5")


def test_sqlite_uses_wal_and_full_sync(tmp_path):
    """A SQLite store's connections run in WAL mode with synchronous=FULL, a busy timeout and foreign keys on."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    s = Store(url, settings=FAST)
    try:
        with s._engine.connect() as conn:  # the store's own pooled connection
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        s.close()


def test_concurrent_threads_do_not_corrupt(store):
    """Four threads saving poses and logging chat at once leave every line and the last pose of each stored."""
    def work(n: int) -> None:
        for i in range(25):
            store.save_poses([PlayerRecord(f"t{n}", float(i), 0, 0, 0, i)])
            store.log_chat([_line(i, sender_id=f"p:{n}")])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(store.recent_chat(1000)) == 100
    assert [store.load_player(f"t{n}").x for n in range(4)] == [24.0] * 4


def test_in_memory_sqlite_is_one_database():
    """A `sqlite://` in-memory store keeps its data across calls from different threads."""
    s = Store("sqlite://", settings=FAST)
    try:
        s.add_object(_obj(1))
        seen: list = []
        th = threading.Thread(target=lambda: seen.extend(s.load_objects()))
        th.start()
        th.join()
        assert seen == [_obj(1)]
    finally:
        s.close()


_TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chat=_TEXT.filter(lambda x: len(x) <= 4000), label=_TEXT.filter(lambda x: len(x) <= 200),
       password=_TEXT.filter(lambda x: 1 <= len(x) <= 1024))
def test_any_text_round_trips_exactly(store, chat, label, password):
    """Arbitrary Unicode chat text, labels and passwords (quotes, emoji, SQL-ish) come back byte-for-byte."""
    store.log_chat([_line(0, text=chat)])
    assert store.recent_chat(1)[0].text == chat
    oid = f"o:{uuid.uuid4().hex}"
    store.add_object(_obj(0, id=oid, label=label))
    assert [o.label for o in store.load_objects() if o.id == oid] == [label]
    name = f"u{uuid.uuid4().hex[:20]}"
    store.create_account(name, password)
    assert store.check_password(name, password) is True
    assert store.check_password(name, password + "x") is False
