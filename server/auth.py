"""Signed, expiring session tokens: `base64url(payload).base64url(HMAC-SHA256)`.

The payload names the player (`pid`, `name`, whether the name is claimed) and an expiry;
the signature is over the encoded payload with the shard's secret. Anything that doesn't
verify, or has expired, is refused the same way (`TokenError`).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

import orjson


class TokenError(Exception):
    """A token that is malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says: the player, its name, whether claimed, and its expiry."""

    pid: str
    name: str
    claimed: bool
    exp_ms: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and verifies session tokens with one secret."""

    def __init__(self, secret: str | bytes, ttl_s: float) -> None:
        self._key = secret.encode() if isinstance(secret, str) else secret
        self.ttl_s = ttl_s

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def issue(self, pid: str, name: str, claimed: bool, now_ms: int | None = None) -> str:
        """A token for this player, valid for the signer's TTL from now."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        claims = {"pid": pid, "name": name, "claimed": claimed, "exp": now_ms + int(self.ttl_s * 1000)}
        body = _b64(orjson.dumps(claims))
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str, now_ms: int | None = None) -> TokenClaims:
        """The claims of a valid token. Raises TokenError when forged, malformed or expired."""
        body, dot, sig = token.partition(".")
        if not dot or not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            raise TokenError("token signature does not verify")
        try:
            claims = orjson.loads(_unb64(body))
            result = TokenClaims(str(claims["pid"]), str(claims["name"]), bool(claims["claimed"]),
                                 int(claims["exp"]))
        except (ValueError, KeyError, TypeError):
            raise TokenError("token payload is malformed") from None
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if result.exp_ms <= now_ms:
            raise TokenError("token has expired")
        return result
