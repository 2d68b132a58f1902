"""Time to sample one step: the per-row sampler vs the batched one, side by side.

Every sampled row of the per-row sampler (``--baseline``, a git revision) ran
its own float64 softmax, top-k, sort, two host syncs and a copy of the row's
probabilities to the host for ``torch.multinomial``; the batched sampler
(working tree) does one sort / cumsum / search for all rows and one host sync.
OpenAI clients sample at temperature 1 unless they say otherwise, so this is
the default path of every HTTP turn.

For each batch size and parameter set: median wall time of ``sample()`` over
``--reps`` calls on random logits [B, vocab], every row with its own seeded
generator. Parameter sets: ``default`` (temperature 1, OpenAI's default: no
truncation) and ``truncated`` (temperature 0.8, top_p 0.95, top_k 50). Runs on
whatever device torch sees first.

    python bench/sampler_batch.py --vocab 49152 --batches 1 8 32 64 128
"""

from __future__ import annotations

import argparse

import common
import torch

from swiftinfer_core.config import SamplingParams
from swiftinfer_core.engine.sampler import sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline", default="ea7a66a", help="git revision of the per-row sampler")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    per_row = common.module_at(args.baseline, "swiftinfer_core/engine/sampler.py", "sampler_baseline").sample
    presets = {"default": SamplingParams(temperature=1.0), "truncated": SamplingParams(temperature=0.8, top_p=0.95, top_k=50)}
    rows = []
    cols = ["params", "batch", "per_row_ms", "batched_ms", "speedup"]
    for preset, params in presets.items():
        for B in args.batches:
            logits = torch.randn(B, args.vocab, device=dev) * 3
            r = {"params": preset, "batch": B}
            for name, fn in (("per_row", per_row), ("batched", sample)):
                gens = [torch.Generator().manual_seed(i) for i in range(B)]
                r[f"{name}_ms"] = 1e3 * common.timed(lambda: fn(logits, [params] * B, gens), args.reps)
            r["speedup"] = r["per_row_ms"] / r["batched_ms"]
            rows.append(r)
            print(common.table([r], cols).splitlines()[-1], flush=True)
    print(common.table(rows, cols))
    common.write_results("sampler_batch", {"config": vars(args), "rows": rows}, args.out)
    plot(rows, dev, args.vocab, args.out)


def plot(rows: list[dict], dev: str, vocab: int, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for preset, style in (("default", "-"), ("truncated", "--")):
        rs = [r for r in rows if r["params"] == preset]
        b = [r["batch"] for r in rs]
        ax.plot(b, [r["per_row_ms"] for r in rs], "o" + style, color="C0", label=f"per-row sampler (before), {preset}")
        ax.plot(b, [r["batched_ms"] for r in rs], "o" + style, color="C1", label=f"batched sampler, {preset}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sampled rows in the step")
    ax.set_ylabel("sample() wall time per step (ms)")
    ax.set_title(f"Sampling one step ({dev}, vocab {vocab}); default: T=1; truncated: T=0.8, top-p 0.95, top-k 50", fontsize=8)
    ax.legend()
    common.save_plot("sampler_batch", fig, out)


if __name__ == "__main__":
    main()
