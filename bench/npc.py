"""NPC engine benchmark (issue 3): our continuous-batching Engine against `transformers`.

Not a test. One run measures, on the same NPC-style prompts (a ~300-token persona shared
per NPC, a short player line, up to 64 new tokens, greedy):

- baseline_seq_tok_s     transformers `generate`, one request at a time
- baseline_static_tok_s  transformers `generate` on one left-padded static batch of 32
- single_tok_s           our Engine, one conversation alone (decode tokens/s after the first;
                         the median of three answers in a row)
- agg_tok_s              our Engine, 32 conversations arriving over ~1.5 s (completion tokens/s)
- itl_p99_s              inter-token latency p99 over those 32
- ttft_p50_s             first-token time of new requests while 16 others decode (persona warm)
- ttft_cold_s / _warm_s  first token of a lone request with an unseen / cached persona

- peer_llama_cpp_tok_s   llama.cpp on the same 4-bit GGUF, one stream (decode), only where
                         `llama-cpp-python` is installed (no binary wheel on PyPI: it compiles
                         from source, ~15+ min here); null otherwise

    .venv/bin/python bench/npc.py [--quick] [--model PATH] [--dtype auto|int8|fp32|bf16] [--no-baselines]
    .venv/bin/python bench/npc.py --model-steps     # the model alone: fp32 vs bf16 vs int8

The engine runs in `--dtype` (auto: what EngineSettings picks for the device, int8 weights
on a CPU); the transformers baselines run in the float dtype the weights are loaded in
(fp32 for auto and int8 on a CPU).

Prints a table, then one JSON object as its last line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

# Run as `python bench/npc.py`, this file's folder comes first on sys.path, where this very
# file would shadow the `npc` package: put the repository root first instead.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from npc.engine.engine import Engine, EngineSettings  # noqa: E402
from npc.engine.loader import load_model  # noqa: E402
from npc.engine.sequence import SamplingParams  # noqa: E402
from npc.models import default_model_path  # noqa: E402

LORE = (
    "Oakvale is a small village in a river valley, ringed by beech woods and old stone walls. "
    "The mill on the Brook turns day and night; the square holds a well, a notice board and the "
    "Copper Kettle inn, where travellers trade news. The road east leads to the market town of "
    "Harrowgate, two days by cart; the road west climbs to the abandoned watchtower on Grey Hill, "
    "where lights have been seen after dark. The harvest was poor this year, wolves were heard "
    "near the sheep folds, and the old bridge needs repair before the autumn rains. Villagers "
    "are wary of strangers but warm to anyone who helps. Coins are silver pennies; a loaf costs "
    "one penny, a night at the inn four. The headwoman, Edda Reeve, settles disputes each "
    "market day, and the chapel bell rings at dawn, noon and dusk. "
)
NPCS = [
    ("Bram", "the blacksmith", "gruff but fair, proud of his work, worried about the wolves; he sells "
     "horseshoes, nails, knives and repairs tools, and he knows every path in the woods"),
    ("Mira", "the herbalist", "gentle and curious, speaks softly, trades remedies for stories; she knows "
     "which plants heal and which harm, and she has seen the lights on Grey Hill herself"),
    ("Tobin", "the innkeeper of the Copper Kettle", "jolly, loves gossip, keeps a ledger of every debt; "
     "he rents rooms, serves stew and ale, and hears every rumour that travels the east road"),
    ("Edda", "the headwoman", "stern, practical, fiercely protective of the village; she wants the bridge "
     "mended and the wolves dealt with, and she pays in silver for honest help"),
]
LINES = [
    "Good morning! What do you have for sale today?",
    "Have you heard anything about the lights on Grey Hill?",
    "I'm new here. Who should I talk to about work?",
    "How much for a night at the inn?",
    "Are the wolves dangerous?",
    "Can you tell me the way to Harrowgate?",
    "What happened to the old bridge?",
    "Do you need any help around the village?",
]
MAX_NEW = 64


def persona(i: int, tag: str = "") -> str:
    """The system prompt of NPC i: shared lore plus who they are (about 300 tokens)."""
    name, role, traits = NPCS[i % len(NPCS)]
    return (f"{tag}You are {name}, {role} of Oakvale. You are {traits}. Stay in character, answer the "
            f"player in one to three short sentences, never mention being an AI.\n\nWhat you know:\n{LORE}"
            f"\nToday the weather is grey and a cold wind blows from Grey Hill.")


def conversation(i: int, tag: str = "") -> list[dict[str, str]]:
    """Chat messages for conversation i: NPC i mod 4, player line i mod 8."""
    return [{"role": "system", "content": persona(i, tag)}, {"role": "user", "content": LINES[i % len(LINES)]}]


def count_until_eos(ids: list[int], eos: frozenset[int]) -> int:
    """Generated tokens up to and including the first EOS (the useful part of a padded row)."""
    for n, t in enumerate(ids, 1):
        if t in eos:
            return n
    return len(ids)


# -- transformers baselines --------------------------------------------------------------
def load_reference(path: Path, dtype: torch.dtype):
    """transformers' LlamaForCausalLM read from the same GGUF file."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.eval()


def hf_sequential(model, prompts: list[list[int]], eos: frozenset[int]) -> dict:
    """generate() one request at a time; tokens/s over the whole calls (prefill included)."""
    tokens, start = 0, time.perf_counter()
    for p in prompts:
        with torch.inference_mode():
            out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=sorted(eos), pad_token_id=2)
        tokens += count_until_eos(out[0, len(p):].tolist(), eos)
    elapsed = time.perf_counter() - start
    return {"tok_s": tokens / elapsed, "tokens": tokens, "seconds": elapsed, "requests": len(prompts)}


def hf_static(model, prompts: list[list[int]], eos: frozenset[int], pad: int) -> dict:
    """generate() on one left-padded batch; useful tokens (up to each row's EOS) per second."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                             eos_token_id=sorted(eos), pad_token_id=pad)
    elapsed = time.perf_counter() - start
    tokens = sum(count_until_eos(row[width:].tolist(), eos) for row in out)
    return {"tok_s": tokens / elapsed, "tokens": tokens, "seconds": elapsed, "batch": len(prompts)}


def llama_cpp_single(path: Path, prompt: list[int], threads: int) -> dict | None:
    """llama.cpp on the same 4-bit GGUF, one stream: decode tokens/s after the first token.

    A peer, not a dependency: runs only where `llama-cpp-python` is installed (it builds from
    source here: `pip install llama-cpp-python`); None otherwise.
    """
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    stamps = []
    for _ in llm.create_completion(prompt, max_tokens=MAX_NEW, temperature=0.0, top_k=1, stream=True):
        stamps.append(time.perf_counter())
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {"tok_s": decode, "tokens": len(stamps)}


# -- our engine ---------------------------------------------------------------------------
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)


async def timed_stream(engine: Engine, messages, params: SamplingParams = GREEDY) -> dict:
    """Submit one request; record when each piece arrives."""
    start = time.perf_counter()
    stream = engine.submit(messages, params)
    stamps = [time.perf_counter() async for _ in stream]
    result = await stream.result()
    return {"start": start, "stamps": stamps, "result": result, "end": time.perf_counter()}


async def engine_single(engine: Engine, runs: int = 3) -> dict:
    """One conversation alone, `runs` times one after another: decode tokens/s after the
    first token, the median (a single 64-token answer takes ~2 s, where a shared host's
    speed can drift by a third between runs)."""
    await timed_stream(engine, conversation(0, "Warm-up. "))
    rates, tokens = [], 0
    for i in range(runs):
        r = await timed_stream(engine, conversation(1 + i), SamplingParams(temperature=0.0, max_tokens=MAX_NEW,
                                                                           ignore_eos=True))
        res = r["result"]
        first = res.timings.ttft_s + r["start"]
        rates.append((res.completion_tokens - 1) / (r["end"] - first))
        tokens += res.completion_tokens
    return {"tok_s": statistics.median(rates), "runs_tok_s": [round(x, 1) for x in rates], "tokens": tokens}


async def engine_concurrent(engine: Engine, n: int, spread_s: float) -> dict:
    """n conversations arriving evenly over spread_s seconds; aggregate rate and latencies."""
    async def one(i: int) -> dict:
        await asyncio.sleep(spread_s * i / n)  # arrival schedule, not synchronisation
        return await timed_stream(engine, conversation(i))

    t0 = time.perf_counter()
    runs = await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = max(r["end"] for r in runs) - t0
    tokens = sum(r["result"].completion_tokens for r in runs)
    gaps = sorted(b - a for r in runs for a, b in zip(r["stamps"], r["stamps"][1:]))
    ttfts = sorted(r["result"].timings.ttft_s for r in runs)
    return {"tok_s": tokens / elapsed, "tokens": tokens, "seconds": elapsed, "n": n,
            "itl_p99_s": gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))] if gaps else None,
            "itl_p50_s": statistics.median(gaps) if gaps else None,
            "ttft_p50_s": statistics.median(ttfts)}


async def engine_ttft(engine: Engine, background: int, probes: int) -> dict:
    """Cold vs warm first token of a lone request; then TTFT p50 of new requests while
    `background` conversations decode (their personas already cached)."""
    cold, warm = [], []
    for k in range(2):
        tag = f"Session {time.time_ns()}-{k}. "  # an unseen prefix: nothing cached
        cold.append((await timed_stream(engine, conversation(k, tag), SamplingParams(temperature=0.0, max_tokens=1)))
                    ["result"].timings.ttft_s)
        msgs = conversation(k, tag)
        msgs[1]["content"] = LINES[(k + 3) % len(LINES)]  # same persona, another line
        warm.append((await timed_stream(engine, msgs, SamplingParams(temperature=0.0, max_tokens=1)))
                    ["result"].timings.ttft_s)
    for i in range(len(NPCS)):  # make every persona warm
        await timed_stream(engine, conversation(i), SamplingParams(temperature=0.0, max_tokens=1))
    long = SamplingParams(temperature=0.0, max_tokens=512, ignore_eos=True)
    bg = [engine.submit(conversation(i), long) for i in range(background)]
    firsts = []
    async for _ in bg[-1]:
        break  # the background batch is decoding
    for j in range(probes):
        r = await timed_stream(engine, conversation(j + 5), SamplingParams(temperature=0.0, max_tokens=2))
        firsts.append(r["result"].timings.ttft_s)
    for s in bg:
        s.cancel()
    for s in bg:
        await s.result()
    return {"ttft_cold_s": min(cold), "ttft_warm_s": min(warm), "ttft_p50_s": statistics.median(firsts),
            "probes": probes, "background": background}


async def run_engine(model, tok, args) -> dict:
    """All engine phases, each on a fresh Engine over the same weights (fresh metrics, cache)."""
    settings = EngineSettings(max_running=32, max_waiting=64, device=str(args.device), dtype=args.engine_dtype,
                              threads=args.threads)
    out = {}
    async with Engine(model, tok, settings) as engine:
        out["single"] = await engine_single(engine)
    note("engine single", out["single"])
    async with Engine(model, tok, settings) as engine:
        await timed_stream(engine, conversation(0, "Warm-up. "), SamplingParams(temperature=0.0, max_tokens=2))
        out["concurrent"] = await engine_concurrent(engine, args.n, args.spread)
        out["engine_metrics"] = engine.metrics.snapshot()
    note("engine concurrent", out["concurrent"])
    async with Engine(model, tok, settings) as engine:
        out["ttft"] = await engine_ttft(engine, args.background, args.probes)
    note("engine ttft", out["ttft"])
    return out


def note(phase: str, figures: dict) -> None:
    """Progress on stderr as each phase ends (a long run killed midway still leaves figures)."""
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    print(f"[bench] {phase}: {json.dumps(shown)}", file=sys.stderr, flush=True)


# -- the model alone: dtype and int8 per decode step ---------------------------------------
class CachedRows:
    """Attention context for a decode step of M sequences, each with `length` cached keys
    (random: only the cost is measured here). q (M, H, D) -> (M, H, D)."""

    def __init__(self, cfg, m: int, length: int, dtype: torch.dtype) -> None:
        self.kv = [torch.randn(m, cfg.num_kv_heads, length, cfg.head_dim, dtype=dtype)
                   for _ in range(cfg.num_layers)]

    def attend(self, layer, q, k, v):
        kv = self.kv[layer]  # (M, Hkv, L, D)
        out = torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), kv, kv, enable_gqa=True)
        return out.squeeze(2)


def model_steps(path: Path, rounds: int = 4) -> dict:
    """Wall ms per decode step (batch 1 and 32, 300-token context) for fp32, bf16 and
    weight-only int8, best of interleaved rounds; plus each one's logits against fp32."""
    from npc.engine import crossover
    from npc.engine.model import DenseContext, fuse_projections
    from npc.engine.quant import quantize_int8

    # Each variant loaded on its own (copies of one model timed erratically here), with
    # its projections fused as the engine runs it.
    fp32, tok = load_model(path, device="cpu", dtype=torch.float32)
    variants = {"fp32": fuse_projections(fp32),
                "bf16": fuse_projections(load_model(path, device="cpu", dtype=torch.bfloat16)[0]),
                "int8": quantize_int8(load_model(path, device="cpu", dtype=torch.float32)[0])}
    # The int8 kernels' crossovers as the engine measures them on this CPU.
    crossover.tune_model(variants["int8"], head_rows=32)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}  # activations and KV
    best: dict[str, float] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for m in (1, 32):
                for name, model in variants.items():
                    ctx = CachedRows(model.cfg, m, 300, dtypes[name])
                    ids, pos = torch.randint(0, model.cfg.vocab_size, (m,)), torch.full((m,), 300)
                    model.logits(model(ids, pos, ctx))  # warm
                    t = time.perf_counter()
                    for _ in range(3):
                        model.logits(model(ids, pos, ctx)).argmax(-1)
                    key = f"{name}_b{m}_ms"
                    best[key] = min(best.get(key, 1e9), (time.perf_counter() - t) / 3 * 1e3)
        ids = tok.render_chat(conversation(0))
        x, p = torch.tensor(ids), torch.arange(len(ids))
        ref = variants["fp32"].logits(variants["fp32"](x, p, DenseContext()))
        for name in ("bf16", "int8"):
            got = variants[name].logits(variants[name](x, p, DenseContext()))
            best[f"{name}_mean_abs_dlogit"] = (got - ref).abs().mean().item()
            best[f"{name}_top1_agree"] = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return best


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF file or HF directory (default: the default model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto",
                    help="auto, int8, fp32 or bf16 for our engine (baselines: the float weights it loads)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run in a minute or two")
    ap.add_argument("--no-baselines", action="store_true", help="skip the transformers baselines")
    ap.add_argument("--model-steps", action="store_true",
                    help="only time the model's decode step in fp32, bf16 and int8 (batch 1 and 32)")
    args = ap.parse_args(argv)
    # The engine's load-time choices (its int8 crossovers) go to stderr with the progress.
    crossover_log = logging.getLogger("npc.engine.crossover")
    crossover_log.setLevel(logging.INFO)
    crossover_log.addHandler(logging.StreamHandler(sys.stderr))
    args.n, args.spread, args.background, args.probes = (8, 0.4, 4, 3) if args.quick else (32, 1.5, 16, 8)
    static_batch, seq_requests = (8, 1) if args.quick else (32, 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    path = Path(args.model) if args.model else default_model_path()
    if args.model_steps:
        steps = model_steps(path)
        for key, value in steps.items():
            print(f"{key:<24} {value:.3f}")
        print(json.dumps({k: round(v, 4) for k, v in steps.items()}))
        return 0
    device = torch.device(args.device)
    t = time.perf_counter()
    engine_settings = EngineSettings(device=str(device), dtype=args.dtype)
    model, tok = load_model(path, device=device, dtype=engine_settings.resolved_dtype())
    dtype = next(model.parameters()).dtype
    args.dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    args.engine_dtype = args.dtype
    if engine_settings.int8_weights():
        args.dtype_name = "int8"
    load_s = time.perf_counter() - t
    prompts = [tok.render_chat(conversation(i)) for i in range(32)]
    persona_tokens = [len(tok.encode(persona(i))) for i in range(len(NPCS))]
    print(f"model {path.name}: loaded in {load_s:.1f} s, {args.dtype_name} on {device}, "
          f"{torch.get_num_threads()} threads; persona tokens {persona_tokens}, "
          f"prompt tokens {min(map(len, prompts))}-{max(map(len, prompts))}", file=sys.stderr)

    rows: list[tuple[str, str]] = []
    report: dict = {"quick": args.quick, "dtype": args.dtype_name, "threads": torch.get_num_threads()}
    eng = asyncio.run(run_engine(model, tok, args))
    report.update(single_tok_s=eng["single"]["tok_s"], agg_tok_s=eng["concurrent"]["tok_s"],
                  itl_p99_s=eng["concurrent"]["itl_p99_s"], ttft_p50_s=eng["ttft"]["ttft_p50_s"],
                  ttft_warm_s=eng["ttft"]["ttft_warm_s"], ttft_cold_s=eng["ttft"]["ttft_cold_s"])
    c = eng["concurrent"]
    rows += [("engine, one conversation alone (decode, median of 3)", f"{report['single_tok_s']:.1f} tok/s"),
             (f"engine, {c['n']} conversations over {args.spread} s", f"{c['tok_s']:.1f} tok/s "
              f"({c['tokens']} tokens in {c['seconds']:.1f} s)"),
             ("  inter-token latency p50 / p99", f"{c['itl_p50_s'] * 1e3:.0f} / {c['itl_p99_s'] * 1e3:.0f} ms"),
             (f"  TTFT p50 with {args.background} running (persona warm)", f"{report['ttft_p50_s'] * 1e3:.0f} ms"),
             ("  TTFT lone request, persona cold / warm",
              f"{report['ttft_cold_s'] * 1e3:.0f} / {report['ttft_warm_s'] * 1e3:.0f} ms "
              f"({report['ttft_cold_s'] / report['ttft_warm_s']:.1f}x)"),
             ("  prefix-cache hit rate (concurrent phase)", f"{eng['engine_metrics']['prefix_hit_rate']:.0%}")]
    report["baseline_seq_tok_s"] = report["baseline_static_tok_s"] = None
    if not args.no_baselines:
        ref = load_reference(path, dtype)
        seq = hf_sequential(ref, prompts[:seq_requests], tok.eos_ids)
        note("transformers sequential", seq)
        static = hf_static(ref, prompts[:static_batch], tok.eos_ids, pad=min(tok.eos_ids))
        note("transformers static batch", static)
        report.update(baseline_seq_tok_s=seq["tok_s"], baseline_static_tok_s=static["tok_s"])
        rows += [(f"transformers generate, one at a time ({seq['requests']})", f"{seq['tok_s']:.1f} tok/s"),
                 (f"transformers generate, static batch of {static['batch']}", f"{static['tok_s']:.1f} tok/s"),
                 ("engine aggregate / static baseline", f"{report['agg_tok_s'] / static['tok_s']:.2f}x")]
        peer = llama_cpp_single(path, prompts[0], torch.get_num_threads())
        report["peer_llama_cpp_tok_s"] = peer and peer["tok_s"]
        rows.append(("llama.cpp (llama-cpp-python), one stream (decode)",
                     f"{peer['tok_s']:.1f} tok/s ({peer['tokens']} tokens)" if peer else "not installed"))
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
