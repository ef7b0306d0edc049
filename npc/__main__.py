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
    chat.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    chat.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def _engine(args: argparse.Namespace):
    from npc.engine.engine import Engine, EngineSettings

    settings = EngineSettings(max_running=1, max_waiting=0, token_budget=512, kv_budget_mb=64,
                              device=args.device, dtype=args.dtype, threads=args.threads)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m npc`."""
    args = _parser().parse_args(argv)
    if args.command == "chat":
        return asyncio.run(chat(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
