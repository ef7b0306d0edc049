"""The queue interface between the shard and the NPC engine, and its wire messages.

The shard talks to NPC engines through an `NpcQueue`: `await submit(request)` (raises
`Busy` at once when saturated), `stream(request_id)` for the answer's pieces and its one
final `Done`, `cancel(request_id)` at any time. `InProcessQueue` wraps an `Engine` in the
same process (the shard's default); a transport (MQTT, in the scale-out issue) carries the
same messages between processes, each as one JSON object with a type tag `t`:

    shard -> worker   {"t":"generate", "v":1, "id", "messages":[{"role","content"}...] | "prompt_ids":[...],
                       "sampling":{...}, "deadline": unix_s | null, "priority":"high|normal|low"}
                      {"t":"cancel", "id"}
    worker -> shard   {"t":"accepted", "id"}
                      {"t":"rejected", "id", "reason":"busy|too_long|closed|invalid", "message"}
                      {"t":"piece", "id", "n", "text"}           (n counts pieces from 0)
                      {"t":"done", "id", "text", "finish_reason", "prompt_tokens", "completion_tokens",
                       "ttft_s", "total_s", "detail"}

Deadlines cross processes, so on the wire they are Unix times (seconds); the engine gets
them converted to its monotonic clock.
"""
from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Union

from npc.engine.errors import Busy, EngineClosed, EngineError, RequestTooLong
from npc.engine.sequence import Priority, SamplingParams

WIRE_VERSION = 1


class WireError(ValueError):
    """A queue message is malformed: unknown type, missing or bad field."""


@dataclass(frozen=True)
class Sampling:
    """SamplingParams as they travel: plain values only (an allowed-token hook cannot)."""

    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    allowed_token_ids: tuple[int, ...] | None = None

    def to_params(self) -> SamplingParams:
        """The engine's SamplingParams (raises ValueError on out-of-range values)."""
        fields = asdict(self)
        allowed = fields.pop("allowed_token_ids")
        return SamplingParams(**fields, allowed=None if allowed is None else frozenset(allowed))

    @classmethod
    def from_params(cls, params: SamplingParams) -> "Sampling":
        """Wire form of `params`; a callable allowed-token hook cannot travel (ValueError)."""
        if callable(params.allowed):
            raise ValueError("an allowed-token hook cannot be sent over a queue; send a token set")
        return cls(params.temperature, params.top_k, params.top_p, params.repetition_penalty,
                   params.seed, params.max_tokens, tuple(params.stop), params.ignore_eos,
                   None if params.allowed is None else tuple(sorted(params.allowed)))


@dataclass(frozen=True)
class GenerateRequest:
    """One answer to generate: a chat (or raw prompt ids), sampling, deadline and priority."""

    request_id: str
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs
    prompt_ids: tuple[int, ...] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    deadline: float | None = None  # Unix time in seconds
    priority: str = "normal"

    def __post_init__(self) -> None:
        if not self.request_id or not isinstance(self.request_id, str):
            raise WireError("request id must be a non-empty string")
        if bool(self.messages) == (self.prompt_ids is not None):
            raise WireError("a request carries either messages or prompt_ids")
        if self.priority not in ("high", "normal", "low"):
            raise WireError("priority must be high, normal or low")

    @classmethod
    def for_submit(cls, request_id: str, messages, prompt_ids, params, deadline: float | None,
                   timeout: float | None, priority: Priority) -> "tuple[GenerateRequest, float | None]":
        """The request an engine-shaped client sends for `Engine.submit`'s arguments.

        `deadline` is on the monotonic clock, `timeout` seconds from now (the earlier wins);
        returns the request (its deadline in Unix time) and the monotonic deadline. A bad
        argument raises ValueError, as `Engine.submit` does.
        """
        now = time.monotonic()
        if timeout is not None:
            deadline = min(deadline, now + timeout) if deadline is not None else now + timeout
        try:
            request = cls(request_id,
                          tuple((m["role"], m["content"]) for m in messages) if messages is not None else (),
                          tuple(prompt_ids) if prompt_ids is not None else None, Sampling.from_params(params),
                          None if deadline is None else time.time() + (deadline - now), priority.name.lower())
        except WireError as e:
            raise ValueError(str(e)) from None
        return request, deadline

    @property
    def engine_priority(self) -> Priority:
        return Priority[self.priority.upper()]

    def chat(self) -> list[dict[str, str]]:
        """The messages as the tokenizer's render_chat wants them."""
        return [{"role": r, "content": c} for r, c in self.messages]

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready message."""
        out: dict[str, Any] = {"t": "generate", "v": WIRE_VERSION, "id": self.request_id,
                               "sampling": asdict(self.sampling), "deadline": self.deadline,
                               "priority": self.priority}
        if self.prompt_ids is not None:
            out["prompt_ids"] = list(self.prompt_ids)
        else:
            out["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        return out


@dataclass(frozen=True)
class Cancel:
    request_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"t": "cancel", "id": self.request_id}


@dataclass(frozen=True)
class Accepted:
    request_id: str

    def to_wire(self) -> dict[str, Any]:
        return {"t": "accepted", "id": self.request_id}


@dataclass(frozen=True)
class Rejected:
    request_id: str
    reason: str  # busy | too_long | closed | invalid
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"t": "rejected", "id": self.request_id, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class Piece:
    request_id: str
    n: int
    text: str

    def to_wire(self) -> dict[str, Any]:
        return {"t": "piece", "id": self.request_id, "n": self.n, "text": self.text}


@dataclass(frozen=True)
class Done:
    request_id: str
    text: str
    finish_reason: str  # stop | length | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    total_s: float
    detail: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"t": "done", "id": self.request_id, **{k: v for k, v in asdict(self).items() if k != "request_id"}}


Message = Union[GenerateRequest, Cancel, Accepted, Rejected, Piece, Done]


def _req(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise WireError(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
        raise WireError(f"field {key!r} has the wrong type")
    return value


def parse(obj: Mapping[str, Any]) -> Message:
    """A wire dict -> its typed message. Raises WireError on anything malformed."""
    if not isinstance(obj, Mapping):
        raise WireError("a message must be a JSON object")
    kind = obj.get("t")
    rid = _req(obj, "id", str)
    if kind == "generate":
        if obj.get("v", WIRE_VERSION) != WIRE_VERSION:
            raise WireError(f"unsupported version {obj.get('v')!r}")
        raw = obj.get("sampling") or {}
        if not isinstance(raw, Mapping):
            raise WireError("field 'sampling' must be an object")
        unknown = set(raw) - set(Sampling.__dataclass_fields__)
        if unknown:
            raise WireError(f"unknown sampling fields {sorted(unknown)}")
        try:
            sampling = Sampling(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
            sampling.to_params()  # validate ranges now, not in the engine
        except (TypeError, ValueError) as e:
            raise WireError(f"bad sampling: {e}") from None
        messages = obj.get("messages") or []
        if not isinstance(messages, list) or not all(
                isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise WireError("messages must be a list of {role, content} strings")
        prompt_ids = obj.get("prompt_ids")
        if prompt_ids is not None and not (isinstance(prompt_ids, list) and prompt_ids and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt_ids)):
            raise WireError("prompt_ids must be a non-empty list of token ids")
        deadline = obj.get("deadline")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))):
            raise WireError("deadline must be a number (Unix seconds) or null")
        return GenerateRequest(rid, tuple((m["role"], m["content"]) for m in messages),
                               None if prompt_ids is None else tuple(prompt_ids), sampling,
                               None if deadline is None else float(deadline), str(obj.get("priority", "normal")))
    if kind == "cancel":
        return Cancel(rid)
    if kind == "accepted":
        return Accepted(rid)
    if kind == "rejected":
        return Rejected(rid, _req(obj, "reason", str), str(obj.get("message", "")))
    if kind == "piece":
        return Piece(rid, _req(obj, "n", int), _req(obj, "text", str))
    if kind == "done":
        ttft = obj.get("ttft_s")
        return Done(rid, _req(obj, "text", str), _req(obj, "finish_reason", str),
                    _req(obj, "prompt_tokens", int), _req(obj, "completion_tokens", int),
                    None if ttft is None else float(ttft), float(_req(obj, "total_s", (int, float))),
                    obj.get("detail"))
    raise WireError(f"unknown message type {kind!r}")


def rejection(request_id: str, exc: Exception) -> Rejected:
    """The Rejected message for an exception raised by submit."""
    reason = ("busy" if isinstance(exc, Busy) else "too_long" if isinstance(exc, RequestTooLong)
              else "closed" if isinstance(exc, EngineClosed) else "invalid")
    return Rejected(request_id, reason, str(exc))


class NpcQueue(abc.ABC):
    """Where the shard sends generation requests; one implementation per transport."""

    @abc.abstractmethod
    async def submit(self, request: GenerateRequest) -> None:
        """Queue a request. Raises Busy at once when saturated, RequestTooLong, EngineClosed, WireError."""

    @abc.abstractmethod
    def stream(self, request_id: str) -> AsyncIterator[Piece | Done]:
        """The request's pieces in order, then exactly one Done. Call once per request."""

    @abc.abstractmethod
    async def cancel(self, request_id: str) -> None:
        """Stop a request; its stream ends with Done(finish_reason="cancelled"). Unknown ids are ignored."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop everything in flight and release the transport."""


class InProcessQueue(NpcQueue):
    """An NpcQueue over an Engine in this process (the shard's default)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self._streams: dict[str, Any] = {}

    async def submit(self, request: GenerateRequest) -> None:
        if request.request_id in self._streams:
            raise WireError(f"request id {request.request_id!r} is already in flight")
        deadline = None
        if request.deadline is not None:
            deadline = time.monotonic() + (request.deadline - time.time())
        prompt = list(request.prompt_ids) if request.prompt_ids is not None else None
        stream = self.engine.submit(None if prompt is not None else request.chat(),
                                    request.sampling.to_params(), prompt_ids=prompt, deadline=deadline,
                                    priority=request.engine_priority)
        self._streams[request.request_id] = stream

    async def stream(self, request_id: str) -> AsyncIterator[Piece | Done]:
        stream = self._streams.get(request_id)
        if stream is None:
            raise KeyError(f"no request {request_id!r} in flight")
        try:
            n = 0
            async for text in stream:
                yield Piece(request_id, n, text)
                n += 1
            r = await stream.result()
            yield Done(request_id, r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens,
                       r.timings.ttft_s, r.timings.total_s, r.detail)
        finally:
            self._streams.pop(request_id, None)
            if not stream.done:
                stream.cancel()  # the consumer went away: stop generating

    async def cancel(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.cancel()

    async def aclose(self) -> None:
        for stream in list(self._streams.values()):
            stream.cancel()
        await self.engine.aclose()


__all__ = ["NpcQueue", "InProcessQueue", "GenerateRequest", "Sampling", "Cancel", "Accepted", "Rejected",
           "Piece", "Done", "parse", "rejection", "WireError", "EngineError"]
