"""`python -m server`: run a shard. Every setting is a flag and a WORLDSMITH_* variable."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import typing

from sqlalchemy.exc import SQLAlchemyError

from server.app import run_shard
from server.settings import Settings, setting_fields
from worldstate.errors import WorldError


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _env(f) -> str:
    return f.metadata.get("env") or "WORLDSMITH_" + f.name.upper()


def _kind(f):
    """The Python type a setting's text converts to."""
    hint = typing.get_type_hints(Settings)[f.name]
    for t in (bool, int, float):
        if hint is t:
            return t
    return str


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one flag per Settings field, its default taken from the environment."""
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Run a Worldsmith shard: HTTP and WebSocket (protocol world.v1) on one port.",
        epilog="Every flag can also be set with the environment variable shown; flags win.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in setting_fields():
        env = _env(f)
        help_text = f"{f.metadata['help']} [env {env}]"
        if f.name == "admins":
            default = tuple(n for n in os.environ.get(env, "").split(",") if n)
            parser.add_argument(_flag(f), dest=f.name, action="append", metavar="NAME",
                                help=help_text + " (env: comma-separated)", default=None)
            parser.set_defaults(_admins_env=default)
            continue
        default = os.environ.get(env, f.default)
        metavar = {"world": "FILE", "db": "URL", "shard": "NAME", "secret": "SECRET"}.get(f.name)
        parser.add_argument(_flag(f), dest=f.name, type=_kind(f), default=default,
                            metavar=metavar, help=help_text)
    return parser


def settings_from_args(argv: list[str] | None = None) -> Settings:
    """Settings from flags and WORLDSMITH_* variables; exits with a message on bad values."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    env_admins = args.pop("_admins_env")
    admins = args.pop("admins") or env_admins
    try:
        kinds = {f.name: _kind(f) for f in setting_fields()}
        values = {k: (kinds[k](v) if v is not None and kinds[k] is not str else v) for k, v in args.items()}
        return Settings(admins=tuple(admins), **values)
    except ValueError as exc:
        parser.error(str(exc))


def _exit_without_teardown() -> None:
    """Exit 0 now, after flushing logs and output, skipping the interpreter's teardown.

    Only for a shard already closed with its data flushed, when something it cannot stop
    (a thread or task) would hang or abort the normal exit.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def serve_until_signalled(settings: Settings) -> None:
    """Run the shard until SIGINT or SIGTERM, then shut it down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_shard(settings):
        await stop.wait()
        logging.getLogger("worldsmith").info("signal received: closing clients and flushing the database")
    stuck = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    if stuck:
        # The shard is closed and its data flushed; a task that ignores cancellation (an MQTT
        # client waiting on a dead broker) must not keep the process alive.
        logging.getLogger("worldsmith").warning(
            "%d background task(s) did not stop (%s); exiting without them",
            len(stuck), ", ".join(sorted(t.get_name() for t in stuck)))
        _exit_without_teardown()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    settings = settings_from_args(argv)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs every connection at INFO: too much for a shard with many players.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the default loop works, only slower
        uvloop = None
    try:
        if uvloop is None:
            asyncio.run(serve_until_signalled(settings))
        else:
            uvloop.run(serve_until_signalled(settings))
    except (WorldError, SQLAlchemyError, OSError) as exc:
        # A bad world file, database URL or port: one line a person can act on.
        logging.getLogger("worldsmith").error("cannot run the shard: %s", exc)
        return 1
    if any(t.name == "npc-load" and t.is_alive() for t in threading.enumerate()):
        # Stopped while the NPC model was still loading: the shard is closed and its data
        # flushed, but tearing down the interpreter under PyTorch's loading thread aborts
        # the process (exit 134). Leave without the teardown instead.
        _exit_without_teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
