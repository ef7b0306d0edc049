"""Starting and stopping a shard: the one owner of its background tasks.

`run_shard(settings)` opens the database, loads the world, listens, starts the tick loop,
logs the ready line, and yields the `Shard`. On exit it stops accepting, closes every
client with 1001, cancels and awaits its tasks, and flushes the database.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from server.auth import TokenSigner
from server.dbwriter import DbWriter
from server.http import WEB_ROOT, HttpRoutes
from server.listener import Listener
from server.metrics import Histogram
from server.npcs import NpcHook
from server.settings import Settings, npc_engine_threads
from server.shard import Shard
from server.ticker import Ticker
from worldstate.config import default_world, load_world
from worldstate.store import Store

log = logging.getLogger("worldsmith")


def _web_root(settings: Settings) -> Path:
    return Path(settings.web_root).resolve() if settings.web_root else WEB_ROOT


def _npc_hook(settings: Settings) -> NpcHook:
    """The NPC service the settings ask for (imported lazily: it brings PyTorch)."""
    if settings.npc_model == "none":
        return NpcHook()
    from npc.service import NpcService, NpcSettings

    model = None if settings.npc_model == "default" else settings.npc_model
    engine = None
    if settings.npc_workers == "remote":
        from npc.remote import remote_engine

        engine = remote_engine(settings.mqtt, model=model, world_prefix=settings.world_prefix,
                               shard=settings.shard, username=settings.mqtt_user,
                               password=settings.mqtt_password)
    elif settings.npc_workers == "process":
        from npc.process import ProcessEngine, ProcessSettings
        from npc.remote import load_tokenizer

        engine = ProcessEngine(ProcessSettings(
            model=model, device=settings.npc_device, dtype=settings.npc_dtype, int8_rows=settings.npc_int8_rows,
            max_running=settings.npc_max_running, max_waiting=settings.npc_max_waiting,
            max_model_len=settings.npc_context_tokens, prefill_tokens=settings.npc_prefill_tokens,
            threads=npc_engine_threads(settings.npc_threads, "process")), tokenizer=load_tokenizer(model))
    else:
        # The engine (and PyTorch) imported now, before the listener opens: initialising torch's
        # extension holds the GIL for up to a second, which in the background loading thread
        # would stall every connected player (docs/benchmarks.md, "The 250 ms tail").
        import npc.engine.engine  # noqa: F401
    return NpcService(engine=engine, owns_engine=True, settings=NpcSettings(
        model=model, device=settings.npc_device, dtype=settings.npc_dtype, int8_rows=settings.npc_int8_rows,
        max_running=settings.npc_max_running, max_waiting=settings.npc_max_waiting,
        context_tokens=settings.npc_context_tokens, memory_tokens=settings.npc_memory_tokens,
        answer_timeout_s=settings.npc_answer_timeout_s, threads=settings.npc_threads,
        prefill_tokens=settings.npc_prefill_tokens, switch_interval_ms=settings.npc_switch_interval_ms))


def _load_config(settings: Settings):
    return load_world(settings.world) if settings.world else default_world()


@contextlib.asynccontextmanager
async def run_shard(settings: Settings, *, npcs: NpcHook | None = None):
    """Run a shard for the duration of the `async with` block; yields the `Shard`."""
    config = _load_config(settings)
    store = await asyncio.to_thread(Store, settings.db)
    latency: list[Histogram] = []  # bound to the shard's histogram once it exists
    db = DbWriter(store, pose_flush_s=settings.pose_flush_s,
                  on_latency=lambda s: latency and latency[0].observe(s))
    try:
        secret = settings.secret or await db.call(store.get_secret)
        signer = TokenSigner(secret, settings.token_ttl_s)
        stored = await db.call(store.load_objects)
        shard = Shard(settings, config, store, db, signer, npcs if npcs is not None else _npc_hook(settings))
        if settings.mqtt:  # one world of many shards: reach the others through the broker
            from server.mqtt import MqttRelay
            shard.relay = MqttRelay(shard)
        latency.append(shard.metrics.db_seconds)
        shard.populate(stored)
    except BaseException:
        await db.close()
        raise
    server = Listener(shard, HttpRoutes(shard, _web_root(settings)))
    try:
        await server.start(settings.host, settings.port)
    except BaseException:
        await db.close()
        raise
    shard.listener = server
    shard.port = server.sockets[0].getsockname()[1]
    ticker = asyncio.get_running_loop().create_task(Ticker(shard).run(), name="worldsmith-tick")
    try:
        await shard.npcs.start(shard)
        await shard.relay.start()
        log.info("Worldsmith shard %s ready: open %s in a browser; WebSocket %s; database %s; world %s",
                 settings.shard, shard.http_url, shard.ws_url, store.url, config.path or config.name)
        yield shard
    finally:
        await _shutdown(shard, server, ticker)


async def _shutdown(shard: Shard, server: Listener, ticker: asyncio.Task) -> None:
    """Stop accepting, close clients 1001, stop tasks, flush the database. Order matters:
    clients leave first so their poses are queued before the final flush."""
    try:
        await server.close()
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await shard.drain_tasks()
        shard.queue_dirty_poses()
        # A broker that vanished can leave an MQTT client waiting forever on its goodbye:
        # bound these, so the database flush below always happens.
        await _bounded(shard.npcs.close(), "the NPC service", SHUTDOWN_STEP_S)
        await _bounded(shard.relay.close(), "the link to the other shards", SHUTDOWN_STEP_S)
        await shard.db.close()
        log.info("Worldsmith shard %s stopped", shard.settings.shard)


SHUTDOWN_STEP_S = 5.0  # the longest one shutdown step may take before it is left behind


async def _bounded(coro, what: str, timeout: float) -> None:
    """Await `coro` for at most `timeout` s; log (never raise) if it fails or overruns.

    `asyncio.wait`, not `wait_for`: a step that ignores cancellation must not hold us.
    """
    task = asyncio.get_running_loop().create_task(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        log.warning("shutdown: %s did not stop within %.0f s; going on without it", what, timeout)
    elif task.exception() is not None:
        log.warning("shutdown: %s failed to stop cleanly: %r", what, task.exception())
