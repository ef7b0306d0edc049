"""Exceptions of the NPC engine.

    EngineError                 root: catch this to catch anything the engine raises
    ├── Busy                    admission refused: running and waiting bounds are full
    ├── EngineClosed            submit after close, or the engine thread died
    └── RequestTooLong          the prompt (plus max_tokens) cannot fit the context or KV budget
"""
from __future__ import annotations


class EngineError(Exception):
    """Root of the engine's exceptions."""


class Busy(EngineError):
    """The engine is at capacity; the request was not queued. Retry later or answer without it."""


class EngineClosed(EngineError):
    """The engine is closed (or its thread failed) and accepts no more requests."""


class RequestTooLong(EngineError):
    """The request can never be served: its tokens exceed the context window or the KV budget."""
