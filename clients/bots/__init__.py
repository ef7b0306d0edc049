"""Load-test bots for a Worldsmith shard: `python -m clients.bots URL -n N --scenario move`.

Lean on purpose (raw asyncio transports, a minimal WebSocket codec, no task per bot) so a
thousand bots fit on one core. `run_bots(settings)` runs one swarm and returns its report;
see `clients.bots.report` for the report's keys.
"""
from __future__ import annotations

import asyncio

from clients.bots.settings import BotSettings


async def run_bots(settings: BotSettings, *, on_phase=None, stop_on_signals: bool = False) -> dict:
    """Run one swarm to completion and return its report dict.

    `on_phase(name, t)` (t from `time.monotonic()`) is called with "steady_start" and
    "steady_end" around the measured window (the load benchmark samples the shard's CPU
    there). With `stop_on_signals`, SIGINT/SIGTERM end the run early and it still reports.
    """
    import signal

    from clients.bots.swarm import Swarm

    swarm = Swarm(settings, on_phase=on_phase)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop_on_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, swarm.request_stop)
    try:
        report = await swarm.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    if settings.plot_path:
        from clients.bots.report import plot

        plot(swarm, settings.plot_path)
    return report


__all__ = ["BotSettings", "run_bots"]
