"""Incremental detokenisation for streaming: valid UTF-8 pieces, stop strings never leaked.

`Detokenizer.push(token)` returns the text that is safe to show now. Text is held back
while the newest tokens decode to an incomplete character (a multi-byte character split
across tokens) and while the tail might be the start of a stop string. The pieces
concatenate to exactly the final text; on a stop string the text ends just before it.
Special tokens (role markers such as `<|im_start|>`) are never shown.
"""
from __future__ import annotations

from typing import Protocol

_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], *, skip_special: bool = False) -> str: ...


class Detokenizer:
    """Streams one request's completion as text. Plain Python; one per request."""

    def __init__(self, tokenizer: Decoder, stop: tuple[str, ...] = (),
                 skip_ids: frozenset[int] = frozenset()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.skip_ids = skip_ids  # e.g. EOS: never shown
        self.ids: list[int] = []
        self._prefix = 0  # ids before this are fully emitted as text
        self._read = 0  # ids before this were decoded at the last emission
        self._held = ""  # decoded text not yet released (possible stop-string start)
        self.text = ""  # everything released so far
        self.stopped = False  # a stop string was seen; nothing more is released

    def push(self, token: int) -> str:
        """Add one token; return the newly releasable text (may be empty)."""
        if self.stopped:
            return ""
        if token in self.skip_ids:
            return ""
        self.ids.append(token)
        window = self._decode(self.ids[self._prefix:])
        before = self._decode(self.ids[self._prefix:self._read])
        if window.endswith(_REPLACEMENT) or len(window) <= len(before):
            return ""  # an incomplete character: wait for its remaining bytes
        new = window[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        return self._release(new)

    def flush(self) -> str:
        """End of stream: release whatever is held (incomplete characters as U+FFFD)."""
        if self.stopped:
            return ""
        window = self._decode(self.ids[self._prefix:])
        before = self._decode(self.ids[self._prefix:self._read])
        self._prefix = self._read = len(self.ids)
        out = self._release(window[len(before):], final=True)
        return out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special=True)

    def _release(self, new: str, final: bool = False) -> str:
        pending = self._held + new
        if self.stop:
            cut = min((i for i in (pending.find(s) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.stopped = True
                self._held = ""
                self.text += pending[:cut]
                return pending[:cut]
        keep = 0 if final else self._stop_prefix_len(pending)
        out = pending[:len(pending) - keep]
        self._held = pending[len(pending) - keep:]
        self.text += out
        return out

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
