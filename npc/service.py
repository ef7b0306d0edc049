"""NPCs in the world: the shard's `NpcHook` backed by our engine.

A line addressed to an NPC becomes a prompt (persona, world, situation, memory, line),
goes to the engine, and its answer streams as `npc_start`, `npc_token`..., `npc_end` to
everyone who heard the line. One answer in flight per player; a saturated engine answers
`busy` at once; a speaker who walks away, disconnects or sends `npc_cancel` stops the answer
and frees its share of the batch. Memory of each player is kept per NPC and folded into a
summary by the engine at low priority.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field

from npc.guard import guard_line
from npc.knowledge import nearest_place
from npc.memory import Memory, fallback_summary, remember, summary_request, with_summary
from npc.mind import Mind
from npc.persona import Persona, parse_personas
from npc.prompt import Recollection, Situation, Turn, time_of_day
from server.npcs import NpcHook, NpcLine
from worldstate.entities import Pose

log = logging.getLogger("worldsmith.npc")


@dataclass(frozen=True)
class NpcSettings:
    """How NPCs answer. Every limit here is named; the shard's CLI exposes them as --npc-*."""

    model: str | None = None          # GGUF file or HF directory; None: the default model; "tiny": test model
    device: str = "auto"
    dtype: str = "auto"
    int8_rows: int = -1               # EngineSettings.int8_max_rows and int8_head_rows (-1: measured)
    max_running: int = 16             # answers decoding together
    max_waiting: int = 16             # queued beyond that; more get `busy`
    context_tokens: int = 1536        # whole prompt plus answer
    memory_tokens: int = 384          # recent turns kept verbatim per (NPC, player)
    temperature: float = 0.0          # 0 = greedy (with the repetition penalty below)
    repetition_penalty: float = 1.15
    soft_stop: float = 0.2            # past this share of reply_tokens, end at a sentence end
    fact_stop: bool = True            # end at the sentence end after the answer carries a retrieved fact
    answer_timeout_s: float = 60.0    # an answer still running after this ends as cancelled
    leave_range_factor: float = 2.0   # the speaker beyond talk_range x this stops the answer
    facts_per_answer: int = 2         # relevant facts placed right before the answer
    nearby_range: float = 15.0        # metres: players this close to an NPC are "near" it in its prompt
    nearby_names: int = 5             # at most this many named: those it has met (strangers only as a crowd)
    threads: int = 0                  # torch CPU threads for the engine; 0 = torch's default
    # Prompt tokens per engine step while answers stream (EngineSettings.prefill_with_decodes).
    # Lower than the engine's own default (64): NPC answers are short and a player watches
    # every gap. Measured (bench/npc_world.py --repeat 3, in-process): ITL p99 296 ms at 48
    # against 339 ms at 64; time to first token about the same.
    prefill_tokens: int = 48
    close_grace_s: float = 3.0        # at shutdown, how long memory writes and summaries may finish
    # The interpreter's thread switch interval while the engine runs in this process (0:
    # Python's own, 5 ms). The engine thread needs the GIL back after each of the hundreds
    # of tensor ops in a step, and a busy event loop keeps it up to this long each time.
    switch_interval_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_running", "context_tokens", "memory_tokens", "facts_per_answer"):
            if getattr(self, name) < 1:
                raise ValueError(f"npc {name} must be >= 1")
        if min(self.max_waiting, self.threads, self.nearby_names, self.nearby_range, self.prefill_tokens) < 0:
            raise ValueError("npc max_waiting, threads, nearby_names, nearby_range and prefill_tokens must be >= 0")
        if not 0 < self.soft_stop <= 1:
            raise ValueError("npc soft_stop must be in (0, 1]")
        if self.close_grace_s < 0 or self.switch_interval_ms < 0:
            raise ValueError("npc close_grace_s and switch_interval_ms must be >= 0")
        if self.answer_timeout_s <= 0 or self.leave_range_factor < 1:
            raise ValueError("npc answer_timeout_s must be > 0 and leave_range_factor >= 1")


@dataclass
class _Answer:
    reply: str
    speaker: str
    npc: Persona
    listeners: tuple[str, ...]
    stream: object = None
    text: list[str] = field(default_factory=list)
    pieces: int = 0
    ending: object = None             # npc.ending.Ending: where the answer may end early
    left: bool = False
    cancelled: bool = False


def load_engine(settings: NpcSettings):
    """Build the engine (blocking: loads weights). 'tiny' gives the random test model."""
    from npc.engine.engine import Engine, EngineSettings

    es = EngineSettings(max_running=settings.max_running, max_waiting=settings.max_waiting,
                        max_model_len=settings.context_tokens, device=settings.device,
                        dtype=settings.dtype, threads=settings.threads,
                        prefill_with_decodes=settings.prefill_tokens,
                        int8_max_rows=settings.int8_rows, int8_head_rows=settings.int8_rows)
    if settings.model == "tiny":
        from npc.engine.tiny import tiny_model, tiny_tokenizer

        # Its tokens are bytes: room for a village-sized prompt if --npc-context-tokens allows.
        return Engine(tiny_model(max_position=8192), tiny_tokenizer(), es)
    return Engine.from_path(settings.model, es)


class NpcService(NpcHook):
    """The shard's NPCs, answering through an in-process engine."""

    def __init__(self, settings: NpcSettings | None = None, *, engine=None,
                 owns_engine: bool | None = None) -> None:
        self.settings = settings or NpcSettings()
        self.engine = engine
        # An engine handed in is its giver's to close, unless it says otherwise.
        self._owns_engine = engine is None if owns_engine is None else owns_engine
        self.ready = asyncio.Event()
        self.shard = None
        self.personas: dict[str, Persona] = {}
        self.minds: dict[str, Mind] = {}
        self._answers: dict[str, _Answer] = {}   # speaker pid -> answer in flight
        self._tasks: set[asyncio.Task] = set()
        self._ids = itertools.count(1)
        self._memory: dict[tuple[str, str], Memory] = {}
        self.warmed: float | None = None  # seconds spent computing the NPCs' fixed prompts, once done

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, shard) -> None:
        """Learn the world's NPCs and load the engine in the background (lines get `busy` until then)."""
        self.shard = shard
        personas = parse_personas(shard.config)
        self.personas = {p.id: p for p in personas}
        self.minds = {p.id: Mind(p, shard.config, personas) for p in personas}
        if self.engine is not None:
            self.engine.start()
            self.ready.set()
            self._spawn(self._warm())
        elif personas:
            self._spawn(self._load())

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            self.engine = await _in_daemon_thread(load_engine, self.settings)
            if self.settings.switch_interval_ms:
                sys.setswitchinterval(self.settings.switch_interval_ms / 1000)
            self.engine.start()
        except Exception:
            log.exception("NPC engine failed to load; NPCs will answer busy")
            return
        await self._warm()
        log.info("NPC engine ready in %.1f s (%d NPCs)", time.monotonic() - started, len(self.personas))
        self.ready.set()

    async def _warm(self) -> None:
        """Compute each NPC's fixed prompt part once (one token, low priority), so that the first
        line to every NPC finds it in the prefix cache instead of paying for its persona, lore
        and world facts (~400-500 prompt tokens for the village's NPCs) while the player waits.
        An engine that reports readiness (the child process) is waited for first; one that
        refuses (remote workers not there yet) is simply not warmed."""
        from npc.engine.sequence import Priority, SamplingParams

        ready = getattr(self.engine, "ready_event", None)
        if ready is not None:
            await ready.wait()
        started = time.monotonic()
        for mind in self.minds.values():
            try:
                stream = self.engine.submit(mind.fixed, SamplingParams(temperature=0.0, max_tokens=1),
                                            priority=Priority.LOW, timeout=self.settings.answer_timeout_s)
                await stream.result()
            except Exception as exc:  # noqa: BLE001 - warming is an optimisation only
                log.info("prompt of %s not warmed: %s", mind.persona.id, exc)
        self.warmed = time.monotonic() - started

    async def close(self) -> None:
        """Stop every answer in flight, let memory writes finish (briefly), stop the engine."""
        for ans in list(self._answers.values()):
            self._stop(ans)
        if self._tasks:
            # Answers just told to stop end at once; an answer that had ended may still be
            # saving what the NPC remembers: give those a moment rather than cancel them.
            await asyncio.wait(set(self._tasks), timeout=self.settings.close_grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.engine is not None and self._owns_engine:
            await self.engine.aclose()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the hook -------------------------------------------------------------------
    def in_flight(self, pid: str) -> bool:
        return pid in self._answers

    def talk_range(self, npc_id: str) -> float | None:
        """This NPC's talking range in metres (None for an unknown NPC)."""
        p = self.personas.get(npc_id)
        return p.talk_range if p is not None else None

    def cancel(self, pid: str, reply: str) -> bool:
        ans = self._answers.get(pid)
        if ans is None or ans.reply != reply:
            return False
        self._stop(ans)
        return True

    def player_left(self, pid: str) -> None:
        ans = self._answers.get(pid)
        if ans is not None:
            ans.left = True
            self._stop(ans)

    def _stop(self, ans: _Answer) -> None:
        ans.cancelled = True
        if ans.stream is not None:
            ans.stream.cancel()

    def hear(self, line: NpcLine) -> None:
        persona = self.personas.get(line.npc)
        if persona is None:
            return
        reply = f"r:{next(self._ids)}"
        self._face(persona, line.speaker)
        start = {"t": "npc_start", "reply": reply, "npc": persona.id, "name": persona.name,
                 "to": line.speaker}
        others = [p for p in line.listeners if p != line.speaker]
        self.shard.send_to(others, start)
        self.shard.send_to([line.speaker], dict(start, re=line.re) if line.re is not None else start)
        ans = _Answer(reply, line.speaker, persona, line.listeners)
        if not self.ready.is_set() or self.engine.in_flight >= self._capacity():
            # Saturated (or still loading): say so at once rather than queue.
            self._end(ans, "busy", "", 0)
            return
        self._answers[line.speaker] = ans  # one answer in flight per player, from now on
        self._spawn(self._answer(ans, line))

    def _capacity(self) -> int:
        return self.settings.max_running + self.settings.max_waiting

    # -- one answer -----------------------------------------------------------------
    def _face(self, persona: Persona, pid: str) -> None:
        world = self.shard.world
        me, npc = world.get(pid), world.get(persona.id)
        if me is None or npc is None:
            return
        dx, dz = me.pose.x - npc.pose.x, me.pose.z - npc.pose.z
        if dx or dz:
            # yaw 0 faces -z (north); positive yaw turns toward -x (counter-clockwise seen from above).
            world.teleport(npc.id, Pose(npc.pose.x, npc.pose.y, npc.pose.z, math.atan2(-dx, -dz)))

    async def _answer(self, ans: _Answer, line: NpcLine) -> None:
        """Recall the player, ask the engine, stream the answer, remember the exchange."""
        reason, tokens = "error", 0
        try:
            memory = await self._recall(ans.npc, line.speaker_name)
            if ans.cancelled:
                reason = "cancelled"
                return
            try:
                ans.stream = self._submit(ans, line, memory)
            except Exception as exc:  # Busy, or a prompt that can never fit
                log.log(logging.WARNING if "exceeds" in str(exc) else logging.INFO,
                        "NPC %s answers busy to %s: %s", ans.npc.id, line.speaker, exc)
                reason = "busy"
                return
            if ans.cancelled:
                ans.stream.cancel()
            reason, tokens = await self._pump(ans)
        except asyncio.CancelledError:
            reason, tokens = "cancelled", ans.pieces
            raise
        except Exception:
            log.exception("NPC answer %s failed", ans.reply)
            tokens = ans.pieces
        finally:
            self._answers.pop(ans.speaker, None)
            self._end(ans, reason, "".join(ans.text), tokens)
        if reason in ("stop", "length") and ans.text:
            await self._remember(ans.npc, line, "".join(ans.text))

    def _submit(self, ans: _Answer, line: NpcLine, memory: Memory):
        from npc.engine.sequence import SamplingParams

        tok = self.engine.tokenizer
        s = self.settings
        persona = ans.npc
        mind = self.minds[persona.id]
        prompt = mind.prompt(self._situation(persona, line), memory.recollection(), heard(line.text),
                             context_tokens=self._context_tokens(), facts_per_answer=s.facts_per_answer,
                             count=lambda msgs: len(tok.render_chat(msgs)))
        ans.ending = mind.ending(prompt, heard(line.text), soft_stop=s.soft_stop, fact_stop=s.fact_stop)
        params = SamplingParams(
            temperature=s.temperature, repetition_penalty=s.repetition_penalty,
            max_tokens=persona.reply_tokens, stop=mind.stop_strings(line.speaker_name))
        return self.engine.submit(prompt.messages, params, timeout=s.answer_timeout_s)

    def _context_tokens(self) -> int:
        """The prompt budget: the setting, capped by what the engine (or its workers) can hold."""
        engine_max = getattr(self.engine, "max_model_len", None)
        if engine_max is None:  # the in-process engine keeps it in its core's config
            engine_max = getattr(getattr(getattr(self.engine, "core", None), "config", None), "max_model_len", None)
        return min(self.settings.context_tokens, engine_max or self.settings.context_tokens)

    def metrics_text(self) -> str:
        """The engine's figures (queue, batch, KV, prefix hits, TTFT/ITL, tok/s) for /metrics."""
        metrics = getattr(self.engine, "metrics", None) if self.ready.is_set() else None
        return metrics.prometheus() if metrics is not None else ""

    def _situation(self, persona: Persona, line: NpcLine) -> Situation:
        world, cfg = self.shard.world, self.shard.config
        place = nearest_place(cfg, persona.x, persona.z)
        at = place.name if place is not None and math.hypot(place.x - persona.x, place.z - persona.z) < 30 else None
        # Who stands near reads the same for every speaker (names sorted, strangers as a crowd),
        # so it belongs to the part of the prompt that players at this NPC share.
        company = sorted({e.name for e in world.near(persona.x, persona.z, self.settings.nearby_range, "player")},
                         key=str.lower)
        known = tuple(n for n in company if self._has_met(persona, n))[: self.settings.nearby_names]
        near = world.near(persona.x, persona.z, cfg.aoi)
        built = tuple(_describe(e) for e in near if e.kind == "object"
                      and (e.props or {}).get("owner", "").lower() == line.speaker_name.lower())[:3]
        return Situation(line.speaker_name, at, time_of_day(time.localtime().tm_hour), known,
                         len(company) - len(known), built)

    def _has_met(self, persona: Persona, name: str) -> bool:
        """Whether this NPC remembers talking with `name` (as far as this shard has recalled)."""
        mem = self._memory.get((persona.id, name.lower()))
        return mem is not None and mem.recollection().met_before

    async def _pump(self, ans: _Answer) -> tuple[str, int]:
        """Relay pieces to the listeners until the answer ends; (reason, completion tokens)."""
        async for piece in ans.stream:
            ans.text.append(piece)
            ans.pieces += 1
            self.shard.send_to(ans.listeners, {"t": "npc_token", "reply": ans.reply, "text": piece})
            if self._walked_away(ans):
                ans.stream.cancel()
                break
            if ans.ending.feed(piece):
                ans.stream.cancel()
                break
        result = await ans.stream.result()
        return ("stop" if ans.ending.reason else result.finish_reason), result.completion_tokens

    def _walked_away(self, ans: _Answer) -> bool:
        me = self.shard.world.get(ans.speaker)
        if me is None:
            return True
        d = math.hypot(me.pose.x - ans.npc.x, me.pose.z - ans.npc.z)
        return d > ans.npc.talk_range * self.settings.leave_range_factor

    def _end(self, ans: _Answer, reason: str, text: str, tokens: int) -> None:
        self.shard.send_to(ans.listeners, {"t": "npc_end", "reply": ans.reply, "text": text,
                                           "reason": reason, "tokens": int(tokens)})

    # -- memory ---------------------------------------------------------------------
    async def _recall(self, persona: Persona, player_name: str) -> Memory:
        """This NPC's memory of the player: cached, else from the database, else empty."""
        key = (persona.id, player_name.lower())
        mem = self._memory.get(key)
        if mem is None:
            rec = None
            store = getattr(self.shard, "store", None)
            if store is not None:
                try:
                    rec = await self.shard.db.call(store.load_memory, persona.id, player_name)
                except Exception:
                    log.warning("could not load %s's memory of %s", persona.id, player_name, exc_info=True)
            mem = (Memory(persona.id, key[1], rec.player_name, rec.summary,
                          tuple(Turn(a, b) for a, b in rec.turns), rec.updated_ms)
                   if rec is not None else Memory(persona.id, key[1], player_name))
            self._memory[key] = mem
        return mem

    async def _remember(self, persona: Persona, line: NpcLine, answer: str) -> None:
        key = (persona.id, line.speaker_name.lower())
        mem = await self._recall(persona, line.speaker_name)
        tok = self.engine.tokenizer
        mem, folded = remember(mem, Turn(heard(line.text), answer.strip()), keep_tokens=self.settings.memory_tokens,
                               count=lambda t: len(tok.encode(t)), now_ms=int(time.time() * 1000))
        self._memory[key] = mem
        await self._save(mem)
        if folded:
            self._spawn(self._summarise(key, persona, folded))

    async def _save(self, mem: Memory) -> None:
        from worldstate.records import MemoryRecord

        store = getattr(self.shard, "store", None)
        if store is None:
            return
        rec = MemoryRecord(mem.npc_id, mem.player_name, mem.summary,
                           tuple((t.line, t.answer) for t in mem.turns), mem.updated_ms)
        try:
            await self.shard.db.call(store.save_memory, rec)
        except Exception:
            log.warning("could not save %s's memory of %s", mem.npc_id, mem.player_name, exc_info=True)

    async def _summarise(self, key, persona: Persona, folded) -> None:
        from npc.engine.sequence import Priority, SamplingParams

        mem = self._memory[key]
        try:
            stream = self.engine.submit(summary_request(persona.name, mem.player_name, mem.summary, folded),
                                        SamplingParams(temperature=0.0, repetition_penalty=1.2, max_tokens=60),
                                        priority=Priority.LOW, timeout=self.settings.answer_timeout_s * 4)
            result = await stream.result()
            text = result.text.strip() if result.finish_reason in ("stop", "length") else ""
        except Exception as exc:
            log.info("memory summary for %s skipped: %s", key, exc)
            text = ""
        mem = self._memory[key]
        mem = with_summary(mem, text) if text else fallback_summary(mem, folded)
        self._memory[key] = mem
        await self._save(mem)


def heard(text: str) -> str:
    """What the NPC hears of a player's line: role imitations and persona overrides removed."""
    return guard_line(text).text


async def _in_daemon_thread(fn, *args):
    """Run a blocking call on a daemon thread: unlike the default executor, a shutdown
    never waits for it (a model still loading must not hold up SIGTERM)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(outcome, ok: bool) -> None:
        if not done.done():
            done.set_result(outcome) if ok else done.set_exception(outcome)

    def work() -> None:
        try:
            outcome, ok = fn(*args), True
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, outcome, ok)
        except RuntimeError:  # the loop is gone: nobody is waiting any more
            pass

    threading.Thread(target=work, name="npc-load", daemon=True).start()
    return await done


def _describe(entity) -> str:
    props = entity.props or {}
    label = props.get("label")
    shape = props.get("shape", entity.name)
    return f"a {shape} labelled '{label}'" if label else f"a {shape}"
