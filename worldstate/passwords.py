"""Salted, memory-hard password hashes (scrypt) whose parameters travel with the hash.

A stored hash reads ``scrypt$N$r$p$<salt b64>$<key b64>``. Keeping N, r and p inside it
means the cost can be raised later: old hashes still verify with their own parameters,
and `needs_rehash` tells the store to upgrade one on the next successful login.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

SCHEME = "scrypt"
SALT_BYTES = 16
KEY_BYTES = 32
# Refuse parameters that would need more memory than this, whatever a stored hash says:
# a tampered row must not be able to make a login allocate gigabytes.
MAX_SCRYPT_MEMORY = 1 << 30
MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True, slots=True)
class ScryptCost:
    """The scrypt work factors: N (CPU/memory, a power of two), r (block size), p (lanes).

    The defaults (N=2**14, r=8, p=1) take 16 MiB and tens of milliseconds per hash.
    """

    n: int = 2**14
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 2 or self.n & (self.n - 1):
            raise ValueError(f"scrypt n must be a power of two >= 2, got {self.n!r}")
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"scrypt r must be an integer >= 1, got {self.r!r}")
        if not isinstance(self.p, int) or self.p < 1 or self.p > 16:
            raise ValueError(f"scrypt p must be an integer in 1..16, got {self.p!r}")
        if self.memory_bytes > MAX_SCRYPT_MEMORY:
            raise ValueError(f"scrypt n={self.n} r={self.r} needs more than 1 GiB")

    @property
    def memory_bytes(self) -> int:
        """Bytes of memory one hash needs (128 * r * N)."""
        return 128 * self.r * self.n


def hash_password(password: str, cost: ScryptCost) -> str:
    """Return a new salted hash of `password` in the self-describing stored form."""
    salt = os.urandom(SALT_BYTES)
    key = _derive(password, salt, cost)
    return "$".join(
        (SCHEME, str(cost.n), str(cost.r), str(cost.p), _b64(salt), _b64(key))
    )


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`; compares in constant time.

    A malformed stored hash verifies nothing (returns False) rather than raising, so one
    damaged row cannot take logins down.
    """
    parsed = _parse(stored)
    if parsed is None:
        return False
    cost, salt, key = parsed
    return hmac.compare_digest(_derive(password, salt, cost, len(key)), key)


def needs_rehash(stored: str, cost: ScryptCost) -> bool:
    """True when `stored` was made with parameters other than `cost`."""
    parsed = _parse(stored)
    return parsed is None or parsed[0] != cost


def _derive(password: str, salt: bytes, cost: ScryptCost, dklen: int = KEY_BYTES) -> bytes:
    # maxmem must exceed the working set or OpenSSL refuses; leave headroom for its overhead.
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=cost.n, r=cost.r, p=cost.p,
        maxmem=2 * cost.memory_bytes + (1 << 20), dklen=dklen,
    )


def _parse(stored: str) -> tuple[ScryptCost, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    try:
        cost = ScryptCost(int(parts[1]), int(parts[2]), int(parts[3]))
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return None
    # Fewer key bytes would verify a prefix of the real key: weaker, so refuse it.
    if len(salt) < 8 or not KEY_BYTES <= len(key) <= 64:
        return None
    return cost, salt, key


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
