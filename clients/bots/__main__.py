"""`python -m clients.bots URL -n N --duration S --scenario ...`: run bots, print a table, write JSON."""
from __future__ import annotations

import asyncio
import json
import resource
import sys

from clients.bots import run_bots
from clients.bots.report import format_table
from clients.bots.settings import settings_from_args


def raise_fd_limit(wanted: int) -> int:
    """Raise the open-file limit towards `wanted` (bounded by the hard limit); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def main(argv: list[str] | None = None) -> int:
    """Run the bots from the command line; exit 0 when every connection was made, else 1."""
    settings = settings_from_args(argv)
    limit = raise_fd_limit(settings.bots + 256)
    if limit < settings.bots + 64:
        print(f"warning: open-file limit {limit} is too low for {settings.bots} bots", file=sys.stderr)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # uvloop is optional for the bots; asyncio works, only slower
        runner = asyncio.run
    report = runner(run_bots(settings, stop_on_signals=True))  # Ctrl-C ends early, still reports
    if settings.progress:
        print(file=sys.stderr)
    print(format_table(report))
    if settings.json_path:
        with open(settings.json_path, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps(report, separators=(",", ":")))
    return 0 if report["connections"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
