"""Issue 12: what one engine step costs when it is not pure decode, four ways, one GPU.

A served replica admits turns while others decode, so most of its steps mix B
decode rows with a prefill chunk. Per case (random bf16 weights, one model, one
KV pool, every path on the same inputs), median ms of ModelRunner's step paths:

- ``decode``: the B decode rows alone, decode graph replay (the floor);
- ``split``: decode graph for the B rows + an eager pass for the chunk (two weight reads);
- ``eager``: one eager forward, decode rows first (MixedPlan);
- ``piecewise``: the same forward with piecewise graphs (runner/piecewise.py), the decode
  rows' attention replayed from its per-layer graphs;
- ``pw_rows_eager``: the same, the decode rows' attention launched eagerly (before that change);

and for prefill alone (B = 0) eager against piecewise. The piecewise logits are
checked against the eager ones (max abs difference of the chunk's last row).
``--profile``: the GPU kernels of one decode-graph step and one piecewise step per
case under torch.profiler (the kernels inside graph replays included), summed by
family: decode attention, prefill attention, weight products, the rest.
``*_host_ms``: how long the host takes to issue the step (the call returning,
before any sync). Near the step's ms, the step waits on the host's launches, not
on the GPU.

    python bench/mixed_step.py --model DIR [--decode 64 128 191] [--chunks 40 256] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.runner.model_runner import ModelRunner  # noqa: E402
from swiftinfer_core.engine.engine_model import build_engine_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--decode", nargs="+", type=int, default=[0, 64, 128, 191])
    ap.add_argument("--chunks", nargs="+", type=int, default=[40, 256])
    ap.add_argument("--window", type=int, default=1020)
    ap.add_argument("--slots", type=int, default=192)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--name", default="mixed_step")
    ap.add_argument("--profile", action="store_true", help="kernel time by family of the decode and piecewise steps")
    ap.add_argument("--unfused", action="store_true", help="torch's norms and SiLU*up (the engine before Llama.fuse_elementwise)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.slots <= max(a.decode):
        ap.error(f"--slots {a.slots} must exceed the largest --decode ({max(a.decode)}): the chunk takes slot B")
    cfg = EngineConfig(model=a.model, load_format="random", device="cuda", dtype="bfloat16", sink_tokens=4,
                       window=a.window, max_sessions=a.slots, max_batch_tokens=1024)
    m = build_engine_model(cfg)
    if a.unfused:
        m.model.fuse_elementwise(False)  # before the graphs capture the layers
    run = ModelRunner(m.model, m.pool, m.attn, m.device)
    run.capture_decode_graphs(max(a.decode + [1]))
    run.capture_piecewise_graphs(512)
    pw, rows = run.piecewise, []
    g = torch.Generator().manual_seed(0)
    for B in a.decode:
        for T in a.chunks:
            dec_ids = torch.randint(100, 30000, (B,), generator=g).tolist()
            chunk = torch.randint(100, 30000, (T,), generator=g).tolist()
            slots, starts = list(range(B)), [500] * B
            ids, all_slots, all_starts, q_lens = dec_ids + chunk, slots + [B], starts + [0], [1] * B + [T]
            rows_ = list(range(B)) + [B + T - 1]

            def eager():
                return run.forward(ids, all_slots, all_starts, q_lens, rows_)

            def split():
                run.graphs.run(dec_ids, slots, starts)
                return run.forward(chunk, [B], [0], [T], [T - 1])

            r = {"decode_rows": B, "chunk": T}
            run.piecewise = None
            if B:
                r["decode_ms"] = 1e3 * common.time_eager(lambda: run.graphs.run(dec_ids, slots, starts), reps=a.reps)
                r["split_ms"] = 1e3 * common.time_eager(split, reps=a.reps)
            r["eager_ms"] = 1e3 * common.time_eager(eager, reps=a.reps)
            r["eager_host_ms"] = 1e3 * host_time(eager, a.reps)
            ref = eager()[-1].float()
            run.piecewise = pw
            r["piecewise_ms"] = 1e3 * common.time_eager(eager, reps=a.reps) if pw.fits(len(ids)) else None
            r["piecewise_host_ms"] = 1e3 * host_time(eager, a.reps) if pw.fits(len(ids)) else None
            r["piecewise_max_abs_diff"] = (eager()[-1].float() - ref).abs().max().item() if pw.fits(len(ids)) else None
            if B and pw.fits(len(ids)):
                pw.rows_in_graphs = False
                r["pw_rows_eager_ms"] = 1e3 * common.time_eager(eager, reps=a.reps)
                r["pw_rows_eager_host_ms"] = 1e3 * host_time(eager, a.reps)
                pw.rows_in_graphs = True
            if a.profile:
                if pw.fits(len(ids)):
                    r["piecewise_kernels"] = common.kernel_ms_by_family(eager, FAMILIES)
                if B:
                    r["decode_kernels"] = common.kernel_ms_by_family(lambda: run.graphs.run(dec_ids, slots, starts), FAMILIES)
            rows.append(r)
            print(r, flush=True)
    for r in rows:
        for key in ("decode_kernels", "piecewise_kernels"):
            if key in r:
                k = r[key]
                print(f"B={r['decode_rows']} +{r['chunk']} {key}: total {k['total']:.2f} ms = decode attn {k['decode_attention']:.2f}"
                      f" + prefill attn {k['prefill_attention']:.2f} + weights {k['weights']:.2f} + other {k['other']:.2f}; top: "
                      + "; ".join(f"{t['name'][:40]} {t['ms']:.2f}x{t['calls']}" for t in k["top"][:4]), flush=True)
    common.write_results(a.name, {"command": " ".join(sys.argv), "model": a.model, "cache": f"4+{a.window}",
                                 "fused_elementwise": m.model.fused, "rows": rows}, a.out)
    plot(rows, a.name, a.out)
    print(common.table(rows, ["decode_rows", "chunk", "decode_ms", "split_ms", "eager_ms", "eager_host_ms", "pw_rows_eager_ms",
                              "pw_rows_eager_host_ms", "piecewise_ms", "piecewise_host_ms", "piecewise_max_abs_diff"]))
    return 0


FAMILIES = (("decode_attention", common.DECODE_ATTENTION_KERNELS), ("prefill_attention", ("prefill",)),
            ("weights", common.WEIGHT_KERNELS))


def host_time(fn, reps: int) -> float:
    """Median seconds for ``fn`` to return (its work issued, not waited for), the GPU idle at each start."""
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return statistics.median(ts)


def plot(rows: list[dict], name: str, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"B={r['decode_rows']}\n+{r['chunk']}" for r in rows]
    x = range(len(rows))
    keys = ("decode_ms", "split_ms", "eager_ms", "pw_rows_eager_ms", "piecewise_ms")
    for k, key in enumerate(keys):
        ax.bar([i + 0.16 * (k - 2) for i in x], [r.get(key) or 0 for r in rows], width=0.16, label=key[:-3])
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("ms per step")
    ax.set_title("one step with B decode rows and a prefill chunk (H200, random bf16)")
    ax.legend()
    common.save_plot(name, fig, out)


if __name__ == "__main__":
    sys.exit(main())
