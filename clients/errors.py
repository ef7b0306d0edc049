"""Exceptions raised by the Python client, and the close codes of protocol v1.

Exception tree::

    ClientError                 root: catch this to catch everything the client raises
    ├── ErrorReply              the shard answered a request with `error` (code, field, msg)
    ├── Closed                  the connection is closed (code, reason; named by CloseCode)
    └── ProtocolViolation       the shard sent something the contract does not allow
"""
from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """WebSocket close codes used by protocol v1 (standard ones and the 4xxx range)."""

    NORMAL = 1000
    SHUTTING_DOWN = 1001
    ABNORMAL = 1006
    TOO_BIG = 1009
    INTERNAL = 1011
    PROTOCOL = 4000
    AUTH_FAILED = 4001
    REPLACED = 4002
    ABUSE = 4008
    FULL = 4013


def close_name(code: int) -> str:
    """The name of a close code (`"AUTH_FAILED"` for 4001), or `"CODE_<n>"` for others."""
    try:
        return CloseCode(code).name
    except ValueError:
        return f"CODE_{code}"


class ClientError(Exception):
    """Root of every exception the client raises."""


class ErrorReply(ClientError):
    """The shard answered one of our requests with an `error` message.

    `code` is one of the contract's error codes (`invalid`, `rate_limited`, `not_found`,
    `forbidden`, `too_far`, `busy`, `auth`, ...), `field` names the offending field for
    `invalid`, `msg` is the shard's human-readable text.
    """

    def __init__(self, code: str, msg: str = "", field: str | None = None, re: object = None):
        self.code = code
        self.msg = msg
        self.field = field
        self.re = re
        where = f" (field {field})" if field else ""
        super().__init__(f"{code}{where}: {msg}")


class Closed(ClientError):
    """The connection is closed; `code` and `reason` come from the close frame.

    `name` is the code's name in `CloseCode` (e.g. `"REPLACED"` for 4002). `error` holds the
    `error` message the shard sent just before closing, when there was one (e.g. `auth`).
    """

    def __init__(self, code: int, reason: str = "", error: ErrorReply | None = None):
        self.code = code
        self.reason = reason
        self.error = error
        super().__init__(f"closed {code} {close_name(code)}: {reason}")

    @property
    def name(self) -> str:
        """The close code's name (`CloseCode` member name)."""
        return close_name(self.code)


class ProtocolViolation(ClientError):
    """The shard broke the contract (e.g. no `welcome` after `hello`)."""
