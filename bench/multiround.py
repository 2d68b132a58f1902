"""Bench 3: 20 rounds of chat in one conversation (the paper's and SwiftInfer's
MT-Bench-style workload, with our own prompt set), batch 1, greedy.

ours: the engine's own serving path (EngineCore: scheduler, chunked prefill,
Triton kernels, decode CUDA graphs, sampler, detokeniser), bf16.
baseline (a): eager StreamingLLM as the original code does it
(bench/models.StreamingBaseline: torch.cat eviction, every cached key re-rotated
each step). It has no batched prefill here, so prompts are fed token by token;
the headline therefore compares generation (decode) tokens/s only, and the
end-to-end figure is reported beside it with that caveat.

Both sides get the identical token stream each round: the template delta of
the new question, then a fixed number of generated tokens (ignore_eos, so the
work is the same even with random weights).

    python bench/multiround.py --models smollm2-135m llama2-7b --rounds 20 --tokens 128
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import models
import torch

from swiftinfer_core.config import EngineConfig, SamplingParams
from swiftinfer_core.engine.core import EngineCore
from swiftinfer_core.kernels.attention import TritonAttention
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.model.fetch import ensure_default_model
from swiftinfer_core.engine.engine_model import EngineModel

PROMPTS = [
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences.",
    "Rewrite your previous response. Start every sentence with the letter A.",
    "Draft a professional email seeking feedback on a quarterly financial report.",
    "Take a moment to evaluate and critique your own response.",
    "Imagine you are writing a blog post comparing two popular smartphone models. Outline it.",
    "Take your previous response and rephrase it as a limerick.",
    "Write a persuasive email to convince an introverted friend to volunteer as a guest speaker.",
    "Can you rephrase your previous answer and incorporate a metaphor or simile in each sentence?",
    "Describe a vivid and unique character, using strong imagery and creative language.",
    "Revise your previous response and incorporate an allusion to a famous work of literature.",
    "Write a descriptive paragraph about a bustling marketplace, with smells, sounds and sights.",
    "Rework your previous response. Begin each sentence with the subsequent letter of the alphabet.",
    "Could you write a captivating short story beginning with: The old abandoned house at the end of the street.",
    "Now, do the same task again but only use four-word sentences.",
    "Craft an intriguing opening paragraph for a fictional short story about time travel.",
    "Summarize the story with three bullet points using only nouns and adjectives, without verbs.",
    "Help me construct a catchy, yet scientifically accurate, headline for an article on bio-energy.",
    "Alter your previous response: make the tone sound casual and embed an advertisement.",
    "Edit the following paragraph to correct any grammatical errors: She didn't remembre where her purse is.",
    "Modify your earlier reply and eliminate the use of gendered pronouns.",
]


def engine_for(name: str, sinks: int, window: int, dev) -> tuple[EngineCore, object]:
    """(our engine, the transformers model for baseline (a)) sharing the same weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ensure_default_model()
    tok = AutoTokenizer.from_pretrained(folder)
    if name == "smollm2-135m":
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(dev).eval()
        args = dataclasses.replace(models.model_args(name), eos_token_ids=(2,))
    else:  # random weights at the named shape; vocab widened to the SmolLM2 tokenizer's 49152
        args = dataclasses.replace(models.model_args(name), vocab_size=len(tok), eos_token_ids=(2,))
        hf = models.hf_model(args, dev)
    model = models.our_model(args, hf, dev)
    layout = StreamLayout(sinks, window)
    pool = KVPool(layout, args.num_layers, 2, args.num_kv_heads, args.head_dim, torch.bfloat16, dev)
    attn = TritonAttention(layout, inv_freq(args.head_dim, args.rope_theta, args.rope_scaling).to(dev), args.head_dim**-0.5)
    loaded = EngineModel(args=args, model=model, tokenizer=tok, layout=layout, pool=pool, attn=attn,
                         device=dev, dtype=torch.bfloat16, path=folder)
    cfg = EngineConfig(device="cuda", sink_tokens=sinks, window=window, max_sessions=2, dtype="bfloat16")
    return EngineCore(cfg, loaded=loaded), hf


def run_ours(core: EngineCore, rounds: int, tokens: int) -> dict:
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    decode_s = total_s = 0.0
    streams, outputs = [], []
    for r in range(rounds):
        msg = [{"role": "user", "content": PROMPTS[r % len(PROMPTS)]}]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        turn = core.add_turn("bench", msg, params)
        streams.append(list(turn.to_feed))
        first = None
        while turn.session.turn is turn:
            core.step()
            if first is None and turn.output_ids:
                first = time.perf_counter()
        t1 = time.perf_counter()
        total_s += t1 - t0
        decode_s += t1 - first
        outputs.append(list(turn.output_ids))
    gen = rounds * tokens
    return {"decode_tokens_per_s": (gen - rounds) / decode_s, "e2e_tokens_per_s": gen / total_s,
            "streams": streams, "outputs": outputs}


@torch.inference_mode()
def run_baseline(hf, sinks: int, window: int, streams: list[list[int]], tokens: int, dev) -> dict:
    base = models.StreamingBaseline(hf, sinks, window)
    decode_s = total_s = 0.0
    outputs = []
    for feed in streams:  # the same tokens ours fed: closing of the last reply + new question
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for t in feed:
            logits = base.step(torch.tensor([t], device=dev))
        out = [int(logits.argmax(-1))]
        t1 = time.perf_counter()
        for _ in range(tokens - 1):
            out.append(int(base.step(torch.tensor([out[-1]], device=dev)).argmax(-1)))
        t2 = time.perf_counter()
        decode_s += t2 - t1
        total_s += t2 - t0
        outputs.append(out)
    gen = len(streams) * tokens
    return {"decode_tokens_per_s": (gen - len(streams)) / decode_s, "e2e_tokens_per_s": gen / total_s, "outputs": outputs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "llama2-7b"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=128, help="generated tokens per round")
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--window", type=int, default=1020)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    for name in a.models:
        core, hf = engine_for(name, a.sinks, a.window, dev)
        ours = run_ours(core, a.rounds, a.tokens)
        base = run_baseline(hf, a.sinks, a.window, ours["streams"], a.tokens, dev)
        same = sum(x == y for o, b in zip(ours["outputs"], base["outputs"]) for x, y in zip(o, b))
        stream_len = sum(len(s) for s in ours["streams"]) + a.rounds * a.tokens
        rows.append({
            "model": name, "rounds": a.rounds, "tokens_per_round": a.tokens, "cache": f"{a.sinks}+{a.window}",
            "stream_tokens": stream_len,
            "ours_decode_tok_s": ours["decode_tokens_per_s"], "baseline_a_decode_tok_s": base["decode_tokens_per_s"],
            "decode_speedup": ours["decode_tokens_per_s"] / base["decode_tokens_per_s"],
            "ours_e2e_tok_s": ours["e2e_tokens_per_s"], "baseline_a_e2e_tok_s": base["e2e_tokens_per_s"],
            "e2e_speedup": ours["e2e_tokens_per_s"] / base["e2e_tokens_per_s"],
            "greedy_token_agreement": same / (a.rounds * a.tokens),
        })
        print(rows[-1], flush=True)
        del core, hf
        torch.cuda.empty_cache()
    common.write_results("multiround", {"rows": rows, "note": __doc__.split("\n\n")[1].replace("\n", " ")}, a.out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["baseline_a_decode_tok_s"] for r in rows], 0.4, label="(a) eager StreamingLLM")
    ax.bar([x + 0.2 for x in xs], [r["ours_decode_tok_s"] for r in rows], 0.4, label="ours")
    for x, r in zip(xs, rows):
        ax.text(x + 0.2, r["ours_decode_tok_s"], f"{r['decode_speedup']:.1f}x", ha="center", va="bottom")
    ax.set_xticks(list(xs), [f"{r['model']}\n{r['cache']}" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("generated tokens/s, batch 1")
    ax.set_title(f"{a.rounds} chat rounds x {a.tokens} tokens, {common.device_info().get('name')}")
    ax.legend()
    fig.tight_layout()
    common.save_plot("multiround", fig, a.out)
    print(common.table(rows, ["model", "cache", "ours_decode_tok_s", "baseline_a_decode_tok_s", "decode_speedup",
                              "ours_e2e_tok_s", "baseline_a_e2e_tok_s", "e2e_speedup", "greedy_token_agreement"]))


if __name__ == "__main__":
    main()
