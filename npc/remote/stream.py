"""One remote answer as the shard sees it: a `ReplyStream` look-alike fed by `RemoteEngine`.

Pieces are taken by their number: in order, each once (a duplicate is dropped, an early one
held until the gap fills); the final `done` text fills in any piece that never came, so the
streamed text always equals the result's.
"""
from __future__ import annotations

import asyncio
import time

from npc.engine.engine import AnswerStream, Result, Timings
from npc.queue import GenerateRequest

EARLY_LIMIT = 1024  # pieces held while an earlier one is missing


class RemoteReplyStream(AnswerStream):
    """One remote answer: iterate for text pieces, `await result()` for the end, `cancel()` any time."""

    def __init__(self, engine: "RemoteEngine", request: GenerateRequest, deadline: float | None) -> None:
        super().__init__(asyncio.get_running_loop())
        self._engine = engine
        self.request = request
        self.deadline = deadline          # monotonic
        self.submitted = time.monotonic()
        self.sent_at = self.submitted     # last time it was offered to the workers
        self.attempts = 1
        self.worker: str | None = None    # the worker serving it, once one accepted
        self.abandoned: set[str] = set()  # workers whose messages for it are ignored
        self.next_n = 0
        self.early: dict[int, str] = {}
        self.text: list[str] = []
        self.first_piece: float | None = None
        self.cancel_at: float | None = None

    @property
    def id(self) -> str:
        """The request id on the wire."""
        return self.request.request_id

    @property
    def begun(self) -> bool:
        """True once a piece reached the consumer (it can no longer be offered again)."""
        return self.first_piece is not None

    def cancel(self) -> None:
        """Stop the answer: the worker is told to stop (freeing its batch slot); if it doesn't
        confirm within cancel_grace_s, or had not accepted yet, the answer ends here."""
        if not self.done:
            self._engine._cancel(self)

    # -- fed by the engine ------------------------------------------------------------
    def _piece(self, n: int, text: str) -> bool:
        """Take piece number n; returns False for a duplicate."""
        if n < self.next_n or n in self.early:
            return False
        if n > self.next_n:
            if len(self.early) < EARLY_LIMIT:
                self.early[n] = text
            return True
        self._deliver(text)
        while self.next_n in self.early:
            self._deliver(self.early.pop(self.next_n))
        return True

    def _deliver(self, text: str) -> None:
        self.next_n += 1
        if self.first_piece is None:
            self.first_piece = time.monotonic()
        if text:
            self.text.append(text)
        self._push(text)

    def _finish(self, reason: str, *, text: str | None = None, prompt_tokens: int = 0,
                completion_tokens: int | None = None, detail: str | None = None) -> Result:
        """End the answer. `text` is the worker's full answer: whatever pieces did not arrive
        are delivered as one last piece, so the streamed text always equals the result's."""
        have = "".join(self.text)
        if text is not None and len(text) > len(have) and text.startswith(have):
            self._deliver(text[len(have):])
        now = time.monotonic()
        ttft = None if self.first_piece is None else self.first_piece - self.submitted
        result = Result("".join(self.text), reason, prompt_tokens,
                        self.next_n if completion_tokens is None else completion_tokens,
                        Timings(ttft, now - self.submitted), (), detail)
        self._end(result)
        return result
