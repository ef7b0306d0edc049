"""The shard's exceptions, close codes, and the one place that maps one to the other.

Exception tree::

    ShardError
    ├── ClientError            -> an `error` reply; the connection stays open
    │   ├── ProtocolError      (server.protocol: bad_json, unknown_type, invalid)
    │   └── RateLimited        (rate_limited)
    └── CloseConnection        -> optionally an `error`, then a close with a named code
        ├── AuthFailed         (auth, 4001)
        └── Abuse              (4008)

Anything else raised while handling a client closes that one connection with 1011 and is
logged with its traceback (see `wsconn.py`).
"""
from __future__ import annotations

# Close codes of protocol v1.
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
PROTOCOL_VIOLATION = 4000
AUTH_FAILED = 4001
REPLACED = 4002
ABUSE = 4008
SHARD_FULL = 4013

# Error codes of protocol v1.
BAD_JSON = "bad_json"
UNKNOWN_TYPE = "unknown_type"
INVALID = "invalid"
RATE_LIMITED = "rate_limited"
NOT_FOUND = "not_found"
FORBIDDEN = "forbidden"
TOO_FAR = "too_far"
BUSY = "busy"
AUTH = "auth"
UNAVAILABLE = "unavailable"  # cross-shard features while the world link is down (server.mqtt)


class ShardError(Exception):
    """Root of every exception the shard raises on purpose."""


class ClientError(ShardError):
    """A message that gets an `error` reply and changes nothing."""

    def __init__(self, code: str, msg: str, *, field: str | None = None, re=None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.field = field
        self.re = re

    def reply(self) -> dict:
        """The `error` message for this exception (with `re` and `field` when known)."""
        out = {"t": "error", "code": self.code, "msg": self.msg}
        if self.re is not None:
            out["re"] = self.re
        if self.field is not None:
            out["field"] = self.field
        return out


class RateLimited(ClientError):
    """A message over its class's rate; dropped."""

    def __init__(self, msg: str = "too many messages; slow down", *, re=None) -> None:
        super().__init__(RATE_LIMITED, msg, re=re)


class CloseConnection(ShardError):
    """Ends the connection with `close_code`, sending `error` first when given."""

    def __init__(self, close_code: int, reason: str, error: ClientError | None = None) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason
        self.error = error


class AuthFailed(CloseConnection):
    """Wrong password, forged or expired token, or a name held by someone online."""

    def __init__(self, msg: str, *, re=None) -> None:
        super().__init__(AUTH_FAILED, "authentication failed", ClientError(AUTH, msg, re=re))


class Abuse(CloseConnection):
    """Sustained rate-limit or error flood."""

    def __init__(self) -> None:
        super().__init__(ABUSE, "closed for abuse")
