"""`python -m npc chat`: ask the model one thing and stream the answer to stdout.

    python -m npc chat --system "You are Brann, the smith." --message "Any news?" --temperature 0

The quickest way to try a model (`--model PATH` for any GGUF file or HF directory; the
default model is fetched on first use). Timings and token counts go to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m npc", description="Worldsmith's NPC engine tools.")
    sub = p.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="answer one message, streaming to stdout")
    chat.add_argument("--system", default="You are a helpful villager.", help="the system prompt")
    chat.add_argument("--message", required=True, help="the user's message")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--top-k", type=int, default=0)
    chat.add_argument("--repetition-penalty", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    chat.add_argument("--model", default=None, help="GGUF file or HF directory ('tiny': random test model)")
    chat.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    chat.add_argument("--dtype", default="auto",
                      help="auto (int8 on CPU, bfloat16 on CUDA) | int8 | float32 | bfloat16 | float16")
    chat.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    bench = sub.add_parser("bench", help="engine-only throughput and latency (see bench/npc.py for the full one)")
    bench.add_argument("--model", default=None, help="GGUF file or HF directory ('tiny': random test model)")
    bench.add_argument("--concurrency", type=int, default=32, help="conversations in the load phase")
    bench.add_argument("--npcs", type=int, default=4, help="distinct personas the conversations talk to")
    bench.add_argument("--max-tokens", type=int, default=64)
    bench.add_argument("--persona-repeat", type=int, default=4, help="persona length: 4 is ~300 SmolLM2 tokens")
    bench.add_argument("--arrival-ms", type=float, default=50.0, help="gap between arrivals in the load phase")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--dtype", default="auto", help="as for chat")
    bench.add_argument("--threads", type=int, default=0)
    bench.add_argument("--share-prefix-attention", action="store_true",
                       help="decodes sharing a cached persona read its K/V once per group")
    return p


def _engine(args: argparse.Namespace, **overrides: object):
    from npc.engine.engine import Engine, EngineSettings

    shape = dict(max_running=1, max_waiting=0, token_budget=512, kv_budget_mb=64)
    shape.update(overrides)
    settings = EngineSettings(**shape, device=args.device, dtype=args.dtype, threads=args.threads)
    if args.model == "tiny":
        from npc.engine.tiny import tiny_model, tiny_tokenizer

        return Engine(tiny_model(), tiny_tokenizer(), settings)
    return Engine.from_path(args.model, settings)


async def chat(args: argparse.Namespace) -> int:
    """Stream one answer to stdout; returns the exit status."""
    from npc.engine.sequence import SamplingParams

    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            repetition_penalty=args.repetition_penalty, seed=args.seed,
                            max_tokens=args.max_tokens, stop=tuple(args.stop))
    engine = await asyncio.to_thread(_engine, args)
    messages = [{"role": "system", "content": args.system}, {"role": "user", "content": args.message}]
    async with engine:
        stream = engine.submit(messages, params)
        async for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        result = await stream.result()
    sys.stdout.write("\n")
    t = result.timings
    rate = result.completion_tokens / (t.total_s - t.ttft_s) if t.ttft_s and t.total_s > t.ttft_s else 0.0
    print(f"[{result.finish_reason}; {result.prompt_tokens} prompt + {result.completion_tokens} tokens; "
          f"first token {t.ttft_s or 0:.2f} s; {rate:.1f} tok/s]", file=sys.stderr)
    return 0 if result.finish_reason in ("stop", "length") else 1


_TRAITS = ("keeps the forge burning day and night", "remembers every traveller's face",
           "trades iron for news from the capital", "distrusts the mayor's new taxes",
           "tells long stories about the old war", "knows which roads flood in spring",
           "sells charms against wolves", "brews a bitter tea from mountain herbs")


def _persona(i: int, repeat: int) -> str:
    # With repeat=4, about 300 SmolLM2 tokens of persona and lore, different per NPC.
    lines = [f"You are NPC number {i} of the village of Oakvale, in the valley under the grey peaks."]
    lines += [f"You {t}." for t in _TRAITS[i % 3:] + _TRAITS[:i % 3]] * repeat
    lines.append("Answer the player in one or two short sentences, in character.")
    return " ".join(lines)


async def bench(args: argparse.Namespace) -> int:
    """Single-stream speed, cold and warm first-token latency, then many conversations at once."""
    import json
    import statistics
    import time

    from npc.engine.sequence import SamplingParams

    n = args.concurrency
    engine = await asyncio.to_thread(_engine, args, max_running=max(n, 1), max_waiting=max(n, 1),
                                     token_budget=0, kv_budget_mb=512,
                                     share_prefix_attention=args.share_prefix_attention)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)

    def chat(npc: int, player: int) -> list[dict[str, str]]:
        return [{"role": "system", "content": _persona(npc, args.persona_repeat)},
                {"role": "user", "content": f"Player {player} asks: any news today?"}]

    async with engine:
        cold = await engine.submit(chat(1000, 0), params).result()
        warm = await engine.submit(chat(1000, 1), params).result()
        single = warm.completion_tokens / (warm.timings.total_s - warm.timings.ttft_s)
        for npc in range(args.npcs):  # warm every persona, as a running village would be
            await engine.submit(chat(npc, 0), SamplingParams(temperature=0, max_tokens=1)).result()
        started = time.monotonic()
        streams = []
        for i in range(n):
            streams.append(engine.submit(chat(i % args.npcs, i + 1), params))
            await asyncio.sleep(args.arrival_ms / 1000)  # arrivals spread over time, not a burst
        results = [await s.result() for s in streams]
        wall = time.monotonic() - started
        snap = engine.metrics.snapshot()
    agg = sum(r.completion_tokens for r in results) / wall
    ttfts = sorted(r.timings.ttft_s for r in results)
    figures = {"single_tok_s": round(single, 2), "ttft_cold_s": round(cold.timings.ttft_s, 4),
               "ttft_warm_s": round(warm.timings.ttft_s, 4), "agg_tok_s": round(agg, 2),
               "ttft_p50_s": round(statistics.median(ttfts), 4), "itl_p99_s": round(snap["itl_p99_s"], 4),
               "prompt_tokens": cold.prompt_tokens, "concurrency": n,
               "prefix_hit_rate": round(snap["prefix_hit_rate"], 3)}
    for key, value in figures.items():
        print(f"{key:>16}  {value}")
    print(json.dumps(figures))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m npc`."""
    args = _parser().parse_args(argv)
    if args.command == "chat":
        return asyncio.run(chat(args))
    if args.command == "bench":
        return asyncio.run(bench(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
