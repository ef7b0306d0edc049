"""`ReplyStream`: one NPC answer as an async stream of text pieces."""
from __future__ import annotations

import asyncio

from clients.errors import Closed
from clients.events import NpcEnd, NpcStart


class ReplyStream:
    """The pieces of one NPC answer, in order, as they arrive.

    Iterate with `async for piece in stream`; iteration ends after the answer's `npc_end`,
    which is then in `stream.end` (its `reason`: `stop`, `length`, `cancelled`, `busy`,
    `error`). If the connection closes first, iteration raises `Closed`.
    """

    def __init__(self, start: NpcStart):
        self.start = start
        self.reply = start.reply
        self.end: NpcEnd | None = None
        self._pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self._failure: Closed | None = None
        self._done = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<ReplyStream {self.reply} from {self.start.npc} end={self.end}>"

    # Called by the client's reader; never awaits so the reader never blocks.
    def _piece(self, text: str) -> None:
        self._pieces.put_nowait(text)

    def _finish(self, end: NpcEnd) -> None:
        if self.end is None:
            self.end = end
            self._pieces.put_nowait(None)
            if not self._done.done():
                self._done.set_result(end)

    def _fail(self, exc: Closed) -> None:
        if self.end is None and self._failure is None:
            self._failure = exc
            self._pieces.put_nowait(None)
            if not self._done.done():
                self._done.set_exception(exc)
                self._done.exception()  # mark retrieved: nobody may be waiting on it

    def __aiter__(self) -> "ReplyStream":
        return self

    async def __anext__(self) -> str:
        piece = await self._pieces.get()
        if piece is None:
            self._pieces.put_nowait(None)  # keep later calls ending too
            if self._failure is not None:
                raise self._failure
            raise StopAsyncIteration
        return piece

    async def wait_end(self, timeout: float | None = None) -> NpcEnd:
        """Wait for the answer's `npc_end` (without consuming pieces); raise `Closed` if the
        connection closes first, `TimeoutError` after `timeout` seconds."""
        return await asyncio.wait_for(asyncio.shield(self._done), timeout)

    async def text(self, timeout: float | None = None) -> str:
        """Consume the remaining pieces and return the full answer (`npc_end`'s text)."""
        async def drain() -> str:
            async for _ in self:
                pass
            return self.end.text
        return await asyncio.wait_for(drain(), timeout)
