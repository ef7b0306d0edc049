"""NPC memory in the store: saved, replaced, reloaded across a reopen, bounded."""
from __future__ import annotations

import pytest

from worldstate.store import InvalidRecord, MemoryRecord, Store


def test_memory_round_trips_across_reopen_and_replaces(tmp_path):
    """A saved memory comes back after reopening the database; a second save replaces it."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    store = Store(url)
    assert store.load_memory("n:guide", "Alice") is None
    store.save_memory(MemoryRecord("n:guide", "Alice", "", (("hi", "hello ✨"),), 1))
    store.save_memory(MemoryRecord("n:guide", "Alice", "Alice likes pears.", (("where?", "east"),), 2))
    store.save_memory(MemoryRecord("n:miller", "Alice", "other npc", (), 3))
    store.close()
    store = Store(url)
    got = store.load_memory("n:guide", "ALICE")
    assert got == MemoryRecord("n:guide", "Alice", "Alice likes pears.", (("where?", "east"),), 2)
    assert store.load_memory("n:miller", "alice").summary == "other npc"
    store.close()


def test_oversize_memory_is_refused_before_any_write():
    """A memory past the size bound is an InvalidRecord where it is made."""
    with pytest.raises(InvalidRecord):
        MemoryRecord("n:guide", "Alice", "x" * 30000, (), 1)
