"""Handing freed C heap back to the operating system after a big numpy pass.

glibc serves mid-sized blocks (up to 32 MB, once one that size was freed) from its heap and
keeps the pages when they are freed: a band rebuild over a dense world leaves tens of MB
resident that nothing uses until the next rebuild. `malloc_trim` returns them.
"""
from __future__ import annotations

import ctypes


def _find_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only; elsewhere the allocator differs
    except (OSError, AttributeError, TypeError):
        return None


_MALLOC_TRIM = _find_trim()


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the OS; False where the C library cannot (not glibc)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
