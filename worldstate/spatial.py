"""A uniform grid over the x-z plane: which entities stand near a point."""
from __future__ import annotations

import math
from array import array
from collections.abc import Iterator

import numpy as np


class Grid:
    """Uniform grid of square cells mapping cell -> the keys (ints) standing in it.

    The grid remembers each key's cell, not its position: callers keep positions in plain
    lists indexed by key. Keys are slots (0 <= key < 2**31). A bucket is an int32 array: ~70
    bytes for a lone key where a dict took ~260 (a sparse world has a cell per player, and
    there are two grids), invisible to Python's cyclic GC, and buckets stay small.
    """

    __slots__ = ("cell", "_cells", "_where", "_keys")

    def __init__(self, cell: float) -> None:
        if not (cell > 0 and math.isfinite(cell)):
            raise ValueError(f"cell size must be a positive finite number, got {cell!r}")
        self.cell = float(cell)
        self._cells: dict[tuple[int, int], array] = {}
        self._where: dict[int, tuple[int, int]] = {}
        # Each occupied cell's own key tuple, which `_where` shares: one tuple a cell rather
        # than one a key (~55 bytes a player in each grid of a dense world).
        self._keys: dict[tuple[int, int], tuple[int, int]] = {}

    def _key(self, x: float, z: float) -> tuple[int, int]:
        c = self.cell
        return (math.floor(x / c), math.floor(z / c))

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: int) -> bool:
        return key in self._where

    def insert(self, key: int, x: float, z: float) -> None:
        """Put `key` at (x, z); it must not be in the grid yet."""
        self._where[key] = self._enter(key, self._key(x, z))

    def update(self, key: int, x: float, z: float) -> bool:
        """Record that `key` now stands at (x, z); True when it changed cells (cheap when not)."""
        ck = self._key(x, z)
        old = self._where[key]
        if ck == old:
            return False
        self._discard(key, old)
        self._where[key] = self._enter(key, ck)
        return True

    def _enter(self, key: int, ck: tuple[int, int]) -> tuple[int, int]:
        """Add `key` to cell `ck`'s bucket; returns the cell's own key tuple."""
        bucket = self._cells.get(ck)
        if bucket is None:
            self._cells[ck] = array("i", (key,))
            self._keys[ck] = ck
            return ck
        bucket.append(key)
        return self._keys[ck]

    def remove(self, key: int) -> None:
        """Take `key` out of the grid (no-op when absent)."""
        old = self._where.pop(key, None)
        if old is not None:
            self._discard(key, old)

    def _discard(self, key: int, ck: tuple[int, int]) -> None:
        bucket = self._cells[ck]
        bucket.remove(key)
        if not bucket:
            del self._cells[ck]
            del self._keys[ck]

    def candidates(self, x: float, z: float, radius: float) -> Iterator[array]:
        """Yield the cell buckets (iterate them for keys) that may hold keys within `radius`
        of (x, z): a superset of the keys in range."""
        c = self.cell
        x0, x1 = math.floor((x - radius) / c), math.floor((x + radius) / c)
        z0, z1 = math.floor((z - radius) / c), math.floor((z + radius) / c)
        cells = self._cells
        if (x1 - x0 + 1) * (z1 - z0 + 1) > len(cells):
            # A query wider than the populated area: walk the occupied cells instead.
            for (cx, cz), bucket in cells.items():
                if x0 <= cx <= x1 and z0 <= cz <= z1:
                    yield bucket
            return
        for cx in range(x0, x1 + 1):
            for cz in range(z0, z1 + 1):
                bucket = cells.get((cx, cz))
                if bucket:
                    yield bucket


class PairBand:
    """Observer-entity pairs near the edge of the area of interest, checked in bulk each tick.

    A Verlet neighbour list with a skin: `rebuild` keeps every (observer, entity) pair whose
    x-z distance lies within `aoi ± skin`. Pairs closer than `aoi - skin` are surely in view,
    pairs farther than `aoi + skin` surely out of it, for as long as no endpoint has moved more
    than `LOOSE_FRACTION * skin` since the rebuild; the world treats such endpoints ("loose")
    separately. So a tick only recomputes the band's pairs, in a few numpy passes, and the
    whole view costs O(observers x entities near the boundary) instead of O(N^2).
    """

    # An endpoint that moved farther than this fraction of the skin no longer obeys the
    # band's promise; two such moves together stay under one skin with room for rounding.
    LOOSE_FRACTION = 0.45

    __slots__ = ("aoi", "skin", "obs", "ent", "vis", "mutual", "_pairs")

    def __init__(self, aoi: float, skin: float) -> None:
        if not (aoi > 0 and skin > 0):
            raise ValueError(f"aoi and skin must be > 0, got {aoi!r}, {skin!r}")
        self.aoi = float(aoi)
        self.skin = float(skin)
        # The band is the biggest thing a dense world holds (~140 pairs an observer among
        # 10,000 players in a square kilometre), so it is stored small: slots as uint16 while
        # every slot fits (int32 beyond), and a pair of two observers once, flagged `mutual`:
        # the distance is symmetric, so (o, e) and (e, o) flip together. 6 bytes a stored
        # pair, ~3.5 a pair of a world of players, where two int32 slots and a flag took 9.
        self.obs = np.empty(0, np.int32)     # (P,) observer slot of each stored pair
        self.ent = np.empty(0, np.int32)     # (P,) entity slot (an observer too, and > obs, if mutual)
        self.vis = np.empty(0, np.bool_)     # (P,) in view at the last check
        self.mutual = np.empty(0, np.bool_)  # (P,) the pair stands for (obs, ent) and (ent, obs)
        self._pairs = 0                      # pairs stood for: stored plus mutual

    def __len__(self) -> int:
        """(observer, entity) pairs in the band, a mutual pair counting twice."""
        return self._pairs

    def rebuild(self, xs: np.ndarray, zs: np.ndarray, alive: np.ndarray, observers: np.ndarray) -> None:
        """Recompute the band from positions `xs`, `zs` (indexed by slot).

        `alive` holds the slots of entities in the world, `observers` those with a view.
        """
        inner = self.aoi - self.skin
        a2 = self.aoi * self.aoi
        slot = np.uint16 if len(xs) <= 1 << 16 else np.int32
        watching = np.zeros(len(xs), np.bool_)
        watching[observers] = True
        obs, ent, vis, mutual = ([np.empty(0, slot)], [np.empty(0, slot)], [np.empty(0, np.bool_)],
                                 [np.empty(0, np.bool_)])
        # Chunk by chunk, so only the band itself is held at once.
        for which, e, d2 in near_pairs_chunks(xs, zs, alive, observers, self.aoi + self.skin,
                                              beyond=inner if inner > 0 else None):
            o = observers[which]
            both = watching[e] & (o != e)  # (an observer's pair with itself is its own mirror)
            keep = ~both | (o < e)          # of two observers' pairs, the one from the lower slot
            obs.append(o[keep].astype(slot))
            ent.append(e[keep].astype(slot))
            vis.append(d2[keep] <= a2)
            mutual.append(both[keep])
        self.obs = np.concatenate(obs)
        self.ent = np.concatenate(ent)
        self.vis = np.concatenate(vis)
        self.mutual = np.concatenate(mutual)
        self._pairs = len(self.obs) + int(np.count_nonzero(self.mutual))

    def changes(self, xs: np.ndarray, zs: np.ndarray, loose: np.ndarray | None):
        """Pairs whose in-view state flipped since the last call: (observers, entities, now_visible),
        both directions of a mutual pair.

        `loose` (bool per slot, or None) masks pairs with a loose endpoint; their state here
        goes stale and is not reported (the world handles them, and the next rebuild resets them).
        """
        if not len(self.obs):
            return [], [], []
        dx = xs[self.obs] - xs[self.ent]
        dz = zs[self.obs] - zs[self.ent]
        vis = (dx * dx + dz * dz) <= self.aoi * self.aoi
        flipped = vis != self.vis
        if loose is not None:
            flipped &= ~(loose[self.obs] | loose[self.ent])
        idx = np.flatnonzero(flipped)
        if not len(idx):
            return [], [], []
        now = vis[idx]
        self.vis[idx] = now
        o, e = self.obs[idx], self.ent[idx]
        back = self.mutual[idx]
        return (o.tolist() + e[back].tolist(), e.tolist() + o[back].tolist(),
                now.tolist() + now[back].tolist())


# Candidate pairs examined per numpy pass in `near_pairs_chunks`: the temporaries of one pass
# (~40 bytes a candidate) stay near 3 MB however many observers a rebuild covers. One pass
# over everything at 10,000 observers in a square kilometre (~7.5 M candidates) peaked at
# ~300 MB, and glibc keeps freed mid-sized blocks as heap: with 2,000 idle players in 1 km²
# the world held 7.6 KB each with 2**18 a pass, 3.9 with 2**16, 2.9 with 2**14 (rebuild
# times alike within this machine's noise).
NEAR_PAIRS_CHUNK = 1 << 16


def near_pairs(xs: np.ndarray, zs: np.ndarray, alive: np.ndarray, observers: np.ndarray,
               radius: float, beyond: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (observer, entity) pair with `beyond < d <= radius` (x-z distance), all in numpy.

    Returns `(which, ent, d2)`: the observer's index in `observers` (non-decreasing), the
    entity's slot (from `alive`), and the squared distance, computed as everywhere else.
    """
    parts = list(near_pairs_chunks(xs, zs, alive, observers, radius, beyond))
    if not parts:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float64)
    return tuple(np.concatenate(col) for col in zip(*parts))


def near_pairs_chunks(xs: np.ndarray, zs: np.ndarray, alive: np.ndarray, observers: np.ndarray,
                      radius: float, beyond: float | None = None,
                      chunk: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`near_pairs` in pieces, observer by observer: yields `(which, ent, d2)` for consecutive
    runs of observers holding about `chunk` candidates each (whole observers, so at least one;
    default `NEAR_PAIRS_CHUNK`).
    """
    chunk = NEAR_PAIRS_CHUNK if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    owner, first, length, slots = _candidate_ranges(xs, zs, alive, observers, radius)
    if not len(owner):
        return
    width = len(owner) // len(observers)                    # ranges per observer
    per_obs = np.cumsum(length.reshape(len(observers), width).sum(axis=1))  # (M,) running totals
    cuts = np.searchsorted(per_obs, np.arange(chunk, int(per_obs[-1]), chunk), side="right")
    bounds = np.unique(np.concatenate(([0], cuts, [len(observers)]))).tolist()
    sx, sz = xs[slots], zs[slots]                           # (N,) positions in `slots` order
    ox, oz = xs[observers], zs[observers]                   # (M,)
    r2 = radius * radius
    b2 = None if beyond is None else beyond * beyond
    for a, b in zip(bounds, bounds[1:]):
        lo, hi = a * width, b * width
        n = length[lo:hi]
        ends = np.cumsum(n)
        # Expand the ranges: item k of range r sits at first[r] + k in `slots` order.
        pos = np.arange(int(ends[-1]), dtype=np.int64)
        pos += np.repeat(first[lo:hi] - (ends - n), n)
        who = owner[lo:hi]
        dx = sx[pos]
        dx -= np.repeat(ox[who], n)
        dz = sz[pos]
        dz -= np.repeat(oz[who], n)
        dx *= dx
        dz *= dz
        d2 = dx
        d2 += dz                                            # (total,) squared x-z distances
        keep = d2 <= r2
        if b2 is not None:
            keep &= d2 > b2
        idx = np.flatnonzero(keep)
        yield who[np.searchsorted(ends, idx, side="right")], slots[pos[idx]], d2[idx]


def _candidate_ranges(xs: np.ndarray, zs: np.ndarray, alive: np.ndarray, observers: np.ndarray,
                      radius: float):
    """Where to look for each observer's neighbours within `radius`.

    Sorts the `alive` slots by grid cell (cells `radius / 2` wide) and returns
    `(owner, first, length, slots)`: range r covers `slots[first[r] : first[r] + length[r]]`,
    the entities of one column of the 5x5 cells around observer `observers[owner[r]]`; the
    ranges come observer by observer and hold every entity within `radius` (and some more).
    """
    if not len(alive) or not len(observers):
        empty = np.empty(0, np.int64)
        return empty, empty, empty, empty
    ex, ez = xs[alive], zs[alive]
    minx, minz = float(ex.min()), float(ez.min())
    # Half-radius cells waste less of the 5x5 square than radius cells do of a 3x3 one. Widen
    # them when entities are scattered very far apart (a teleport has no bounds) so the cell
    # table stays proportional to N.
    reach = 2
    cell = radius / reach
    span = max(float(ex.max()) - minx, float(ez.max()) - minz)
    limit = 4 * len(alive) + 1024
    while (span / cell + 1) ** 2 > limit:
        cell *= 2
    cx = ((ex - minx) // cell).astype(np.int64)          # (N,)
    cz = ((ez - minz) // cell).astype(np.int64)
    ncx, ncz = int(cx.max()) + 1, int(cz.max()) + 1
    key = cx * ncz + cz
    order = np.argsort(key, kind="stable")
    starts = np.searchsorted(key[order], np.arange(ncx * ncz + 1))  # cell c: [starts[c], starts[c+1])
    ocx = ((xs[observers] - minx) // cell).astype(np.int64)  # (M,)
    ocz = ((zs[observers] - minz) // cell).astype(np.int64)
    lo = np.maximum(ocz - reach, 0)
    hi = np.minimum(ocz + reach, ncz - 1)
    cols = ocx[:, None] + np.arange(-reach, reach + 1)   # (M, 2*reach+1)
    ok = (cols >= 0) & (cols < ncx)
    cols = np.clip(cols, 0, ncx - 1)
    # Cells of one column are contiguous in key order: one range per column (empty if off-grid).
    first = starts[cols * ncz + lo[:, None]]
    last = np.where(ok, starts[cols * ncz + hi[:, None] + 1], first)
    owner = np.repeat(np.arange(len(observers)), cols.shape[1])
    return owner, first.ravel(), (last - first).ravel(), alive[order]


def within(grid: Grid, xs: list[float], zs: list[float], x: float, z: float,
           radius: float) -> list[tuple[float, int]]:
    """(squared distance, key) of every key in `grid` within `radius` of (x, z) on the x-z plane.

    Positions come from `xs`/`zs` indexed by key; the comparison is `dx*dx + dz*dz <= r*r`,
    the same arithmetic as the band's, so both agree on exact-boundary cases.
    """
    r2 = radius * radius
    out = []
    for bucket in grid.candidates(x, z, radius):
        for k in bucket:
            dx = xs[k] - x
            dz = zs[k] - z
            d2 = dx * dx + dz * dz
            if d2 <= r2:
                out.append((d2, k))
    return out
