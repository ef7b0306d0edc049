"""How often the default village's NPCs answer with the right fact (a question set of our own).

    .venv/bin/python bench/npc_quality.py [--model PATH] [--variants full,no-fact-stop,no-facts,one-fact] [--json FILE]

Each question names the words (any of them) that a right answer contains, never words
the question itself gives away. The check is lenient: an answer that carries the fact
and then invents more (a distance in miles, a date) still counts. For each prompt
variant the script prints, per NPC and overall: the share of answers carrying the right
fact, how many ended by themselves (a sentence end or EOS, not the token budget), and the
mean answer length. Variants: `full` (the one or two relevant facts right before the
answer, and the answer ending after the sentence that carries one, as the shard does),
`no-fact-stop` (the same facts, ending only past the soft share of the budget) and
`no-facts` (the prompt without them).
Greedy decoding with the shard's repetition penalty, so a run is repeatable.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # before bench/, whose npc.py would shadow the package

from npc.engine.engine import Engine, EngineSettings  # noqa: E402
from npc.engine.sequence import SamplingParams  # noqa: E402
from npc.mind import Mind  # noqa: E402
from npc.persona import parse_personas  # noqa: E402
from npc.prompt import Recollection, Situation  # noqa: E402
from npc.service import NpcSettings  # noqa: E402
from worldstate.config import default_world  # noqa: E402

QUESTIONS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "n:guide": [
        ("Where is the inn?", ("crooked kettle", "south-west", "southwest")),
        ("How do I get to the mill?", ("north-east", "northeast")),
        ("Where is the market?", ("east",)),
        ("Where is the lighthouse?", ("south-west", "southwest")),
        ("Is there an orchard around here?", ("south",)),
        ("Where can I find Old Tamsin?", ("mill",)),
        ("Where does the road north cross the Brook?", ("stone bridge",)),
    ],
    "n:merchant": [
        ("What do you sell?", ("rope", "lantern", "honey", "map")),
        ("Have you lost your compass?", ("bridge",)),
        ("What is the reward for the compass?", ("pear",)),
        ("What do you think of the miller?", ("overcharg", "flour", "expensive")),
    ],
    "n:miller": [
        ("What happened to the mill wheel?", ("flood",)),
        ("When does the Brook run high?", ("spring",)),
        ("Have you seen anything shiny in the reeds?", ("bridge", "reeds")),
    ],
}

async def ask(engine: Engine, mind: Mind, question: str, facts: int, settings: NpcSettings, *,
              fact_stop: bool = True):
    """One greedy answer to `question` from `mind`, as the shard would ask it."""
    tok = engine.tokenizer
    prompt = mind.prompt(Situation("Robin", time_of_day="afternoon"), Recollection(), question,
                         context_tokens=settings.context_tokens, facts_per_answer=facts,
                         count=lambda m: len(tok.render_chat(m)))
    ending = mind.ending(prompt, question, soft_stop=settings.soft_stop, fact_stop=fact_stop)
    params = SamplingParams(temperature=0.0, repetition_penalty=settings.repetition_penalty,
                            max_tokens=mind.persona.reply_tokens, stop=mind.stop_strings("Robin"))
    stream = engine.submit(prompt.messages, params)
    text = []
    async for piece in stream:
        text.append(piece)
        if ending.feed(piece):
            stream.cancel()
            break
    result = await stream.result()
    ended = ending.reason is not None or result.finish_reason == "stop"
    return "".join(text).strip(), ended, result.completion_tokens


async def run(args) -> dict:
    settings = NpcSettings()
    world = default_world()
    personas = parse_personas(world)
    minds = {p.id: Mind(p, world, personas) for p in personas}
    engine = Engine.from_path(args.model, EngineSettings(max_model_len=settings.context_tokens))
    report: dict = {}
    async with engine:
        for variant in args.variants:
            facts = {"no-facts": 0, "one-fact": 1}.get(variant, settings.facts_per_answer)
            rows, started = [], time.monotonic()
            for npc_id, questions in QUESTIONS.items():
                for question, expect in questions:
                    answer, ended, tokens = await ask(engine, minds[npc_id], question, facts, settings,
                                                      fact_stop=variant != "no-fact-stop")
                    hit = any(w in answer.lower() for w in expect)
                    rows.append({"npc": npc_id, "q": question, "answer": answer, "hit": hit,
                                 "ended": ended, "tokens": tokens})
                    if args.verbose:
                        print(f"  [{variant}] {'HIT ' if hit else 'miss'} {npc_id} {question!r} -> {answer!r}")
            n = len(rows)
            report[variant] = {
                "questions": n,
                "fact_rate": round(sum(r["hit"] for r in rows) / n, 3),
                "ended_rate": round(sum(r["ended"] for r in rows) / n, 3),
                "mean_tokens": round(sum(r["tokens"] for r in rows) / n, 1),
                "by_npc": {nid: round(sum(r["hit"] for r in rows if r["npc"] == nid) /
                                      sum(1 for r in rows if r["npc"] == nid), 3) for nid in QUESTIONS},
                "seconds": round(time.monotonic() - started, 1),
                "answers": rows,
            }
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file or HF directory (default: the default model)")
    ap.add_argument("--variants", default="full,no-fact-stop,no-facts", help="comma-separated: full, no-fact-stop, no-facts, one-fact")
    ap.add_argument("--json", default=None, help="write the full report (with answers) here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every answer")
    args = ap.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    report = asyncio.run(run(args))
    print(f"{'variant':<10} {'fact rate':>9} {'ended':>7} {'tokens':>7}  by NPC")
    for variant, r in report.items():
        by = " ".join(f"{k}={v:.2f}" for k, v in r["by_npc"].items())
        print(f"{variant:<10} {r['fact_rate']:>9.2f} {r['ended_rate']:>7.2f} {r['mean_tokens']:>7.1f}  {by}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps({v: {k: r[k] for k in ("fact_rate", "ended_rate", "mean_tokens")} for v, r in report.items()}))


if __name__ == "__main__":
    main()
