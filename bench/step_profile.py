"""Where one batch-1 decode step's time goes, per weight format: the engine's whole step (bench/formats_step.py's
model, attention over full 4+2044 caches, one CUDA graph) profiled kernel by kernel.

Per (shape, weight format, chain): the step's device time (back-to-back graph replays), then the same replays
under torch.profiler: GPU time per kernel family (weight products, split-K sums, attention, norms, elementwise,
argmax, other), kernel launches per step, and the gap (device time less the kernels' summed time: launch
latency and idle SMs between dependent kernels inside the graph).

Why: at batch 1 the fp8 and int4 steps of the 7B and 8B shapes take the same time (H200, session 35) although
8B reads 14% more weight bytes, so something other than bytes sets them. This splits that something into
kernels that are slow and time between kernels.

    python3 bench/step_profile.py [--shapes llama2-7b] [--formats bf16 fp8 int4] [--chain both] [--out DIR]
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import formats_step  # noqa: E402
import models  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.cache.layout import StreamLayout  # noqa: E402

FAMILIES = (
    ("split sums", ("sum_splits",)),
    ("weights", common.WEIGHT_KERNELS),
    ("attention", common.DECODE_ATTENTION_KERNELS + ("attn", "attention")),
    ("rope/cache write", ("rope", "write", "cache")),
    ("norm", ("rms", "norm")),
    ("argmax", ("argmax", "arg_max", "reduce")),
    ("elementwise", ("elementwise", "silu", "mul", "add", "copy")),
)


def profile_step(dec: models.OurDecoder, reps: int) -> dict:
    """Device ms per step, kernel ms per step by family, launches per step and the gap, of a captured decoder."""
    step_ms = dec.device_time_per_step(reps) * 1e3
    fam = common.kernel_ms_by_family(dec.graph.replay, FAMILIES, reps=reps, top=None)
    launches = sum(t["calls"] for t in fam["top"])
    return {"step_ms": step_ms, "kernel_ms": fam["total"], "gap_ms": step_ms - fam["total"], "launches": launches,
            "families": {f: fam[f] for f, _ in FAMILIES} | {"other": fam["other"]}, "top": fam["top"]}


def run(a) -> list[dict]:
    dev = torch.device("cuda")
    layout = StreamLayout(4, a.window)
    rows = []
    for shape in a.shapes:
        args = models.model_args(shape)
        for fname in a.formats:
            model = formats_step.build(args, formats_step.FORMATS[fname][0], dev)
            for on in formats_step.chains(model, a.chain):
                model.gemv_decode = on
                dec = models.OurDecoder(model, args, layout, 1, dev, "engine", kv_dtype=formats_step.KV[a.kv])
                dec.capture()
                r = {"shape": shape, "weights": fname, "kv": a.kv, "gemv_chain": on} | profile_step(dec, a.reps)
                rows.append(r)
                fams = ", ".join(f"{k} {v:.3f}" for k, v in r["families"].items() if v)
                print(f"{shape} {fname}{' chain' if on else ''}: step {r['step_ms']:.3f} ms = kernels {r['kernel_ms']:.3f} "
                      f"+ gap {r['gap_ms']:.3f}; {r['launches']} launches; {fams}", flush=True)
                for t in r["top"][:8]:
                    print(f"    {t['ms'] * 1e3:8.1f} us  x{t['calls']:<4} {t['name']}", flush=True)
                del dec
                common.write_results(a.name, {"cache": f"4+{a.window}", "rows": rows}, a.out)
            del model
            gc.collect()
            torch.cuda.empty_cache()
    return rows


def plot(rows: list[dict], device: str, name: str, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f, _ in FAMILIES] + ["other"]
    labels = [f"{r['shape']}\n{r['weights']}{' chain' if r['gemv_chain'] else ''}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(rows)) + 1.5, 5))
    bottom = [0.0] * len(rows)
    for i, f in enumerate(fams + ["gap"]):
        vals = [max(0.0, r["gap_ms"]) if f == "gap" else r["families"].get(f, 0.0) for r in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, color="lightgrey" if f == "gap" else f"C{i}", label=f)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(rows):
        ax.text(i, bottom[i], f"{r['step_ms']:.2f} ms\n{r['launches']} launches", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("ms per batch-1 step")
    ax.set_title(f"batch-1 decode step by kernel family, {rows[0]['kv'] if rows else ''} KV 4+2044, {device}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    ax.grid(alpha=0.3, axis="y")
    common.save_plot(name, fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b"], choices=sorted(models.SHAPES))
    ap.add_argument("--formats", nargs="+", default=["bf16", "fp8", "int4"], choices=list(formats_step.FORMATS))
    ap.add_argument("--kv", default="bf16", choices=list(formats_step.KV))
    ap.add_argument("--chain", default="both", choices=["engine", "unfused", "both"])
    ap.add_argument("--window", type=int, default=2044)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--name", default="step_profile")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = run(a)
    plot(rows, common.device_info()["name"], a.name, a.out)


if __name__ == "__main__":
    main()
