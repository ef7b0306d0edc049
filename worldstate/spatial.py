"""A uniform grid over the x-z plane: which entities stand near a point."""
from __future__ import annotations

import math
from collections.abc import Iterator


class Grid:
    """Uniform grid of square cells mapping cell -> set of keys (ints), with their x-z positions.

    Positions are kept in plain lists indexed by key so range queries stay in fast Python;
    a cell holds at most the keys standing in it, so a query touches only nearby keys.
    """

    __slots__ = ("cell", "_cells", "_where")

    def __init__(self, cell: float) -> None:
        if not (cell > 0 and math.isfinite(cell)):
            raise ValueError(f"cell size must be a positive finite number, got {cell!r}")
        self.cell = float(cell)
        self._cells: dict[tuple[int, int], set[int]] = {}
        self._where: dict[int, tuple[int, int]] = {}

    def _key(self, x: float, z: float) -> tuple[int, int]:
        c = self.cell
        return (math.floor(x / c), math.floor(z / c))

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: int) -> bool:
        return key in self._where

    def insert(self, key: int, x: float, z: float) -> None:
        """Put `key` at (x, z); it must not be in the grid yet."""
        ck = self._key(x, z)
        self._where[key] = ck
        bucket = self._cells.get(ck)
        if bucket is None:
            self._cells[ck] = {key}
        else:
            bucket.add(key)

    def update(self, key: int, x: float, z: float) -> None:
        """Record that `key` now stands at (x, z); cheap when it stays in its cell."""
        ck = self._key(x, z)
        old = self._where[key]
        if ck == old:
            return
        self._discard(key, old)
        self._where[key] = ck
        bucket = self._cells.get(ck)
        if bucket is None:
            self._cells[ck] = {key}
        else:
            bucket.add(key)

    def remove(self, key: int) -> None:
        """Take `key` out of the grid (no-op when absent)."""
        old = self._where.pop(key, None)
        if old is not None:
            self._discard(key, old)

    def _discard(self, key: int, ck: tuple[int, int]) -> None:
        bucket = self._cells[ck]
        bucket.discard(key)
        if not bucket:
            del self._cells[ck]

    def candidates(self, x: float, z: float, radius: float) -> Iterator[set[int]]:
        """Yield the cell sets that may hold keys within `radius` of (x, z) (a superset)."""
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
