"""The bots' report: a JSON-ready dict, a table for people, and an optional latency plot.

Report keys (stable; tests and bench/load.py read them):
`scenario, url, bots, duration_s, rate_hz, world{shard, tick_hz, aoi, speed, bounds, spawn},
connections{made, failed, welcomed, failures, close_codes, connect_ms}, ack_ms, staleness_ms,
missed_updates{probes, expected, delivered, missed, undecided, timeout_s},
completeness{checks, expected, missing, extra, ratio, slack_m},
traffic{msgs_in_per_s, msgs_out_per_s, bytes_in_per_s, bytes_out_per_s, msgs_in, msgs_out,
bytes_in, bytes_out}, chat{sent, heard, echo_ms}, npc{asked, started, busy, ends, ttft_ms,
itl_ms, answer_ms}, errors{code: n}, events{name: n}, loop_lag_ms, bots_cpu_pct, observers,
bottleneck, warnings`.
Latency blocks are `{n, mean, p50, p90, p99, max}` in milliseconds over the steady window
(NPC blocks over the whole run). Per-second traffic covers the steady window; the totals
cover the whole run. `events` counts notable happenings: `clamped_moves` (the shard applied
a different pose than a bot asked for), `unmatched_poses`, `chat_heard`, `npc_overheard`,
`npc_skipped_in_flight`, `npc_no_target`, `npc_unfinished`, `pacer_skipped_s`, ...
"""
from __future__ import annotations

from clients.bots.stats import summary_ms


def build_report(swarm) -> dict:
    """Summarise a finished swarm's measurements over its steady window."""
    s = swarm.s
    t0, t1 = swarm.t_measure, swarm.t_measure_end
    window = max(t1 - t0, 1e-9)
    # Samples that arrive just after the window still belong to moves sent inside it.
    late = t1 + s.probe_timeout + 0.5
    steady = lambda rec: summary_ms(rec.since(t0, late))  # noqa: E731
    c = swarm.counters
    ev = swarm.events
    lag = steady(swarm.lag)
    cpu_pct = round(100.0 * (swarm.cpu1 - swarm.cpu0) / window, 1)
    truth = swarm.truth.report() if swarm.truth is not None else {
        "missed_updates": None, "completeness": None}
    warnings = []
    bottleneck = bool(lag["p99"] is not None and lag["p99"] > s.lag_warn_ms) or cpu_pct > 90.0
    if bottleneck:
        warnings.append(f"BOTS ARE THE BOTTLENECK: own loop lag p99 {lag['p99']} ms "
                        f"(limit {s.lag_warn_ms} ms), bots' CPU {cpu_pct}% of a core; "
                        "latencies include the bots' own delay")
    if swarm.made and window < s.duration - 0.5:
        warnings.append(f"stopped early: measured {window:.1f} s of the {s.duration:g} s asked for")
    failed = sum(swarm.failures.values())
    if failed:
        warnings.append(f"{failed} of {s.bots} connections failed")
    npc_ends = {k[len("npc_end_"):]: v for k, v in ev.items() if k.startswith("npc_end_")}
    report = {
        "scenario": s.scenario, "url": s.url, "bots": s.bots, "duration_s": round(window, 3),
        "rate_hz": s.rate, "world": swarm.world,
        "connections": {
            "made": swarm.made, "failed": failed, "welcomed": swarm.welcomed,
            "failures": dict(swarm.failures), "close_codes": dict(swarm.close_codes),
            "connect_ms": summary_ms(swarm.connect_lat.values),
        },
        "ack_ms": steady(swarm.ack),
        "staleness_ms": steady(swarm.stale),
        **truth,
        "traffic": {
            **{f"{k}_per_s": round((b - a) / window, 1)
               for k, a, b in zip(("msgs_in", "msgs_out", "bytes_in", "bytes_out"), swarm.snap0, swarm.snap1)},
            "msgs_in": c.msgs_in, "msgs_out": c.msgs_out, "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
        },
        "chat": {"sent": ev["chat_sent"], "heard": ev["chat_heard"], "echo_ms": steady(swarm.chat_echo)},
        "npc": {"asked": ev["npc_asked"], "started": ev["npc_started"], "busy": npc_ends.get("busy", 0),
                "ends": npc_ends, "ttft_ms": summary_ms(swarm.ttft.values),
                "itl_ms": summary_ms(swarm.itl.values), "answer_ms": summary_ms(swarm.npc_total.values)},
        "errors": {k[len("error_"):]: v for k, v in ev.items() if k.startswith("error_")},
        "events": {k: v for k, v in ev.items() if not k.startswith(("error_", "npc_end_"))},
        "loop_lag_ms": lag,
        "bots_cpu_pct": cpu_pct,
        "observers": sum(1 for b in swarm.bots if b.observer),
        "bottleneck": bottleneck,
        "warnings": warnings,
    }
    return report


def _ms(block: dict | None, key: str) -> str:
    if not block or block.get(key) is None:
        return "-"
    return f"{block[key]:.1f}"


def format_table(r: dict) -> str:
    """The report as an aligned plain-text table."""
    rows = [("scenario", f"{r['scenario']}  bots {r['bots']}  steady {r['duration_s']:.1f}s  {r['url']}")]
    cn = r["connections"]
    rows.append(("connections", f"made {cn['made']}  failed {cn['failed']}  welcomed {cn['welcomed']}"
                 f"  close codes {cn['close_codes'] or '-'}"))
    for label, block in (("ack latency ms", r["ack_ms"]), ("view staleness ms", r["staleness_ms"]),
                         ("chat echo ms", r["chat"]["echo_ms"]), ("NPC first token ms", r["npc"]["ttft_ms"]),
                         ("NPC inter-token ms", r["npc"]["itl_ms"]), ("bots' loop lag ms", r["loop_lag_ms"])):
        if block["n"]:
            rows.append((label, f"p50 {_ms(block, 'p50')}  p90 {_ms(block, 'p90')}  p99 {_ms(block, 'p99')}"
                                f"  max {_ms(block, 'max')}  (n={block['n']})"))
    mu = r.get("missed_updates")
    if mu:
        rows.append(("missed updates", f"{mu['missed']} of {mu['expected']} expected deliveries "
                                       f"({mu['probes']} probes, {mu['timeout_s']}s deadline)"))
    cp = r.get("completeness")
    if cp and cp["checks"]:
        rows.append(("view completeness", f"{cp['ratio']}  (missing {cp['missing']} of {cp['expected']},"
                                          f" extra {cp['extra']}, {cp['checks']} checks, slack {cp['slack_m']} m)"))
    t = r["traffic"]
    rows.append(("traffic in", f"{t['msgs_in_per_s']:.0f} msg/s  {t['bytes_in_per_s'] / 1e6:.2f} MB/s"))
    rows.append(("traffic out", f"{t['msgs_out_per_s']:.0f} msg/s  {t['bytes_out_per_s'] / 1e6:.2f} MB/s"))
    if r["npc"]["asked"]:
        n = r["npc"]
        rows.append(("NPC", f"asked {n['asked']}  started {n['started']}  busy {n['busy']}  ends {n['ends']}"))
    if r["chat"]["sent"]:
        rows.append(("chat", f"sent {r['chat']['sent']}  heard {r['chat']['heard']}"))
    if r["errors"]:
        rows.append(("errors", str(r["errors"])))
    if r["events"]:
        rows.append(("events", str(r["events"])))
    rows.append(("bots' CPU", f"{r['bots_cpu_pct']}% of one core  ({r['observers']} observer bots)"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"WARNING: {w}" for w in r["warnings"]]
    return "\n".join(lines)


def plot(swarm, path: str) -> None:
    """Draw ack latency and staleness over time, and ack p99 against connected bots, to a PNG."""
    import matplotlib  # imported here: only --plot needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for rec, label in ((swarm.ack, "own-move ack"), (swarm.stale, "view staleness")):
        series = rec.series(swarm.t0)
        if series:
            ts = [p[0] for p in series]
            ax1.plot(ts, [p[1] * 1000 for p in series], label=f"{label} p50")
            ax1.plot(ts, [p[2] * 1000 for p in series], label=f"{label} p99", linestyle="--")
    ax1.set_xlabel("time since start (s)")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("Latency over time")
    ax1.legend()
    connected = dict((int(t), n) for t, n in swarm.connected_series)
    pts = [(connected.get(int(t), 0), p99 * 1000) for t, _, p99, _ in swarm.ack.series(swarm.t0)]
    if pts:
        ax2.scatter([p[0] for p in pts], [p[1] for p in pts], s=12)
    ax2.set_xlabel("bots connected")
    ax2.set_ylabel("ack p99 (ms)")
    ax2.set_title("Ack latency against N")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
