"""The spatial index pieces: the uniform Grid and the numpy PairBand, against brute force."""
from __future__ import annotations

import random

import numpy as np
import pytest

from worldstate import spatial
from worldstate.spatial import Grid, PairBand, near_pairs, near_pairs_chunks


def test_grid_candidates_cover_every_key_in_range():
    """Every key within the radius is in some yielded cell, after inserts, moves and removals."""
    rng = random.Random(3)
    g = Grid(7.0)
    pos = {}
    for k in range(300):
        pos[k] = (rng.uniform(-50, 50), rng.uniform(-50, 50))
        g.insert(k, *pos[k])
    for k in range(0, 300, 3):
        pos[k] = (rng.uniform(-80, 80), rng.uniform(-80, 80))
        g.update(k, *pos[k])
    for k in range(1, 300, 5):
        g.remove(k)
        del pos[k]
    g.remove(1)  # absent: no-op
    assert len(g) == len(pos) and 0 in g and 1 not in g
    for _ in range(50):
        x, z, r = rng.uniform(-90, 90), rng.uniform(-90, 90), rng.uniform(0, 40)
        seen = set().union(*g.candidates(x, z, r))
        want = {k for k, (a, b) in pos.items() if (a - x) ** 2 + (b - z) ** 2 <= r * r}
        assert want <= seen
    # A query wider than the populated area walks occupied cells, still covering everything.
    assert set().union(*g.candidates(0, 0, 1e6)) == set(pos)


def test_grid_update_says_when_a_key_changed_cells():
    """update() is True exactly when the key's cell changed (the world skips the observers'
    grid otherwise); the key is then found from its new cell only."""
    g = Grid(10.0)
    g.insert(1, 5.0, 5.0)
    assert g.update(1, 9.99, 0.0) is False
    assert g.update(1, 10.0, 0.0) is True
    assert g.update(1, 10.0, -0.01) is True
    assert g.update(1, 19.0, -9.0) is False
    assert set().union(*g.candidates(15.0, -5.0, 4.0)) == {1}
    assert set().union(*g.candidates(5.0, 5.0, 4.0)) == set()


def test_grid_rejects_bad_cell_size():
    """A grid needs a positive finite cell size."""
    with pytest.raises(ValueError):
        Grid(0)
    with pytest.raises(ValueError):
        Grid(float("inf"))


@pytest.mark.parametrize("chunk", [None, 1, 50])
@pytest.mark.parametrize("aoi,skin", [(10.0, 1.0), (10.0, 12.0), (3.0, 0.5)])
def test_band_holds_exactly_the_pairs_near_the_edge(aoi, skin, chunk, monkeypatch):
    """rebuild() keeps exactly the (observer, entity) pairs with aoi-skin < d <= aoi+skin, flagged
    by d <= aoi, however finely the candidate pass is chunked."""
    if chunk is not None:
        monkeypatch.setattr(spatial, "NEAR_PAIRS_CHUNK", chunk)
    rng = np.random.default_rng(5)
    n = 400
    xs = rng.uniform(-40, 40, n).round(1)  # rounded: exact-boundary distances occur
    zs = rng.uniform(-40, 40, n).round(1)
    alive = np.arange(0, n, 2)              # odd slots are "dead" and must never appear
    observers = alive[:60]
    watching = set(observers.tolist())
    band = PairBand(aoi, skin)
    band.rebuild(xs, zs, alive, observers)
    assert band.obs.dtype == np.uint16 and band.ent.dtype == np.uint16  # slots fit in 16 bits
    got = {}
    for o, e, v, m in zip(band.obs.tolist(), band.ent.tolist(), band.vis.tolist(), band.mutual.tolist()):
        assert m == (e in watching and e != o) and (not m or o < e)  # two observers' pair is stored once
        got[(o, e)] = v
        if m:
            got[(e, o)] = v
    assert len(got) == len(band)
    want = {}
    lo, hi = (aoi - skin) ** 2 if aoi > skin else -1.0, (aoi + skin) ** 2
    for o in observers.tolist():
        for e in alive.tolist():
            dx, dz = xs[e] - xs[o], zs[e] - zs[o]
            d2 = dx * dx + dz * dz
            if lo < d2 <= hi:
                want[(o, e)] = d2 <= aoi * aoi
    assert got == want


def test_near_pairs_chunks_split_whole_observers_and_agree_with_one_pass():
    """Chunked passes yield, in order, exactly the pairs of one big pass, never splitting an observer."""
    rng = np.random.default_rng(11)
    n = 500
    xs = rng.uniform(-60, 60, n).round(1)
    zs = rng.uniform(-60, 60, n).round(1)
    alive = np.arange(1, n, 3)
    observers = rng.permutation(alive)[:80]
    whole = list(near_pairs_chunks(xs, zs, alive, observers, 12.0, beyond=4.0, chunk=10**9))
    assert len(whole) == 1
    for chunk in (1, 37, 400):
        parts = list(near_pairs_chunks(xs, zs, alive, observers, 12.0, beyond=4.0, chunk=chunk))
        assert len(parts) > 1
        seen = [set(which.tolist()) for which, _, _ in parts]
        assert all(not (a & b) for a, b in zip(seen, seen[1:]))  # an observer sits in one chunk
        for got, want in zip((np.concatenate(c) for c in zip(*parts)), whole[0]):
            assert np.array_equal(got, want)
    which, ent, d2 = near_pairs(xs, zs, alive, observers, 12.0, beyond=4.0)
    assert np.array_equal(which, whole[0][0]) and np.array_equal(ent, whole[0][1])
    assert (d2 > 16.0).all() and (d2 <= 144.0).all()
    with pytest.raises(ValueError):
        next(near_pairs_chunks(xs, zs, alive, observers, 12.0, chunk=0))


def test_band_slots_widen_past_16_bits_and_mutual_pairs_flip_both_ways():
    """Slots past 65535 are stored as int32; a pair of two observers, stored once, reports
    both directions when it flips."""
    n = (1 << 16) + 3
    xs = np.zeros(n)
    zs = np.zeros(n)
    a, b, c = 5, n - 2, n - 1    # b and c need more than 16 bits
    xs[b], xs[c] = 9.0, 20.0     # a-b in view, b-c out of it, both within the skin; a-c beyond
    band = PairBand(10.0, 5.0)
    band.rebuild(xs, zs, np.array([a, b, c]), np.array([a, b]))
    assert band.obs.dtype == np.int32
    stored = set(zip(band.obs.tolist(), band.ent.tolist(), band.mutual.tolist()))
    assert stored == {(a, b, True), (b, c, False)}
    assert len(band) == 3
    xs[b] = 10.5                 # b leaves a's view and a leaves b's; c enters b's view
    obs, ent, now = band.changes(xs, zs, None)
    assert sorted(zip(obs, ent, now)) == sorted([(a, b, False), (b, a, False), (b, c, True)])


def test_band_reports_flips_and_masks_loose_pairs():
    """changes() reports pairs that crossed the aoi once, skipping pairs with a loose endpoint."""
    xs = np.array([0.0, 9.0, 11.0, 0.0])
    zs = np.zeros(4)
    band = PairBand(10.0, 3.0)
    band.rebuild(xs, zs, np.arange(4), np.array([0, 3]))
    xs[1], xs[2] = 10.5, 9.5      # 1 leaves, 2 enters (for both observers)
    loose = np.array([False, False, False, True])
    obs, ent, now = band.changes(xs, zs, loose)
    assert sorted(zip(obs, ent, now)) == [(0, 1, False), (0, 2, True)]
    assert band.changes(xs, zs, loose) == ([], [], [])


def test_release_free_heap_works_where_the_c_library_can():
    """Trimming the heap is a glibc call: it runs there, and is a harmless no-op elsewhere."""
    import platform

    from worldstate.heap import release_free_heap
    assert release_free_heap() is (platform.libc_ver()[0] == "glibc")


def test_big_band_rebuilds_trim_the_heap_and_views_stay_exact(monkeypatch):
    """With the trim threshold at one pair, every rebuild trims, and diffs still equal the oracle's."""
    from tests.worldstate.test_views_walk import walk
    from worldstate import views
    calls, real = [], views.release_free_heap
    monkeypatch.setattr(views.Views, "TRIM_AFTER_PAIRS", 1)
    monkeypatch.setattr(views, "release_free_heap", lambda: calls.append(1) or real())  # counts, then trims
    walk(17, n=80, observers=20, ticks=40, step=0.8, skin=2.0, rebuild_limit=5)
    assert calls


def test_grid_keys_in_one_cell_share_its_key_tuple():
    """Keys standing in one cell hold that cell's one key tuple (memory), through moves and empties."""
    g = Grid(10.0)
    g.insert(1, 1.0, 1.0)
    g.insert(2, 2.0, 2.0)
    g.insert(3, 25.0, 1.0)
    assert g._where[1] is g._where[2] and g._where[1] is not g._where[3]
    assert g.update(3, 3.0, 3.0)
    assert g._where[3] is g._where[1]
    for k in (1, 2, 3):
        g.remove(k)
    assert not g._keys and not g._cells
