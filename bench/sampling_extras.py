"""Issue 18: what penalties and logprobs cost one sampling step.

One decode step's sampling at B rows (default 64) over random logits [B, vocab]:
``runner.adjust_rows``' per-row work (each penalised row's visible-token counts
advance by one token, as in decode) plus ``sampler.sample_step``, host sync
included. For each mode, a share of the rows (none, a quarter, all) asks for:
``penalties`` (presence 0.5, frequency 0.3, repetition 1.2 over a cache of
``--visible`` tokens), ``logprobs`` (top 5), or ``both``. ``none`` is also timed
with the sampler before issue 18 (``--baseline``): a step without the extras
must cost what it did. Median over ``--reps`` steps; temperature 1 (OpenAI's
default). This is the sampler's share of a decode step, not end-to-end tokens/s.

    python bench/sampling_extras.py [--vocab 32000 128256] [--batch 64] [--out DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.config import SamplingParams  # noqa: E402
from swiftinfer_core.engine.penalties import RowAdjust, VisibleTokens  # noqa: E402
from swiftinfer_core.engine.sampler import sample_step  # noqa: E402

EXTRAS = {
    "penalties": dict(presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.2),
    "logprobs": dict(logprobs=True, top_logprobs=5),
}
EXTRAS["both"] = {**EXTRAS["penalties"], **EXTRAS["logprobs"]}


def step_fn(B: int, vocab: int, share: float, extra: dict, visible: int, dev: str):
    """A closure running one step's adjust_rows-equivalent + sample_step."""
    n = round(B * share)
    params = [SamplingParams(temperature=1.0, **(extra if i < n else {})) for i in range(B)]
    penal = "presence_penalty" in extra
    rng = random.Random(0)
    windows = [deque((rng.randrange(vocab) for _ in range(visible)), maxlen=visible) for _ in range(B)]
    vis = [VisibleTokens(0) if penal and i < n else None for i in range(B)]
    for v, w in zip(vis, windows):
        if v is not None:
            v.advance([], deque(maxlen=visible), visible, list(w))
    logits = torch.randn(B, vocab, device=dev) * 3
    gens = [torch.Generator().manual_seed(i) for i in range(B)]

    def run():
        rows = None
        if penal and n:
            rows = []
            for v, w in zip(vis, windows):
                if v is None:
                    rows.append(None)
                    continue
                tok = rng.randrange(vocab)
                v.advance([], w, visible, [tok])
                w.append(tok)
                rows.append(RowAdjust(counts=v.counts))
        return sample_step(logits, params, gens, rows)

    return run


def _load(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sampler_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--visible", type=int, default=2048, help="tokens a penalised row's cache holds")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--baseline", default="a33465a", help="git revision of the sampler before issue 18")
    p.add_argument("--baseline-file", default=None, help="that sampler as a file (where the tree travels without .git)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    before = _load(args.baseline_file) if args.baseline_file else common.module_at(args.baseline, "swiftinfer_core/engine/sampler.py", "sampler_before")
    before = before.sample
    rows = []
    for vocab in args.vocab:
        logits = torch.randn(args.batch, vocab, device=dev) * 3
        plain = [SamplingParams(temperature=1.0)] * args.batch
        gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]
        base = 1e3 * common.timed(lambda: before(logits, plain, gens), args.reps, warmup=3)
        rows.append({"vocab": vocab, "mode": "none", "share": 0.0, "ms": 1e3 * common.timed(step_fn(args.batch, vocab, 0, {}, args.visible, dev), args.reps, warmup=3),
                     "before_ms": base})
        for mode, extra in EXTRAS.items():
            for share in (0.25, 1.0):
                ms = 1e3 * common.timed(step_fn(args.batch, vocab, share, extra, args.visible, dev), args.reps, warmup=3)
                rows.append({"vocab": vocab, "mode": mode, "share": share, "ms": ms, "before_ms": base})
        for r in rows[-7:]:
            r["x_before"] = r["ms"] / base
            print(common.table([r], ["vocab", "mode", "share", "ms", "before_ms", "x_before"]).splitlines()[-1], flush=True)
    print(common.table(rows, ["vocab", "mode", "share", "ms", "before_ms", "x_before"]))
    common.write_results("sampling_extras", {"config": vars(args), "device": dev, "rows": rows}, args.out)
    plot(rows, args, dev)


def plot(rows: list[dict], args, dev: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.vocab), figsize=(5 * len(args.vocab), 3.8), squeeze=False)
    for ax, vocab in zip(axes[0], args.vocab):
        rs = [r for r in rows if r["vocab"] == vocab]
        labels = ["before"] + [f"{r['mode']} {int(100 * r['share'])}%" if r["share"] else "none" for r in rs]
        vals = [rs[0]["before_ms"]] + [r["ms"] for r in rs]
        ax.bar(range(len(vals)), vals, color=["grey"] + ["C0"] + ["C1", "C1", "C2", "C2", "C3", "C3"][: len(vals) - 2])
        ax.set_xticks(range(len(vals)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("sampling time per step (ms)")
        ax.set_title(f"{args.batch} rows, vocab {vocab}, {dev}", fontsize=9)
    fig.tight_layout()
    common.save_plot("sampling_extras", fig, args.out)


if __name__ == "__main__":
    main()
