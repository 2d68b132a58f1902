"""int4 batch-1 GEMV: the x-resident kernel (kernels/quant_gemv_xres.py) against the
default one (kernels/quant_gemv.py), side by side in one process on one GPU.

Per weight shape of one decode step (bench/quant_decode.py weight_shapes: each layer's
qkv, o, gate-up, down and the head), bench/quant_sweep.py sweep_point times, over copies
larger than 3x the L2 and as a CUDA graph of back-to-back launches: the default kernel at the
packaged table's config and with register prefetch 1; the x-resident kernel's h2 math at
the tiles and waves that led a first H100 run of the full candidate list (block_k 1024, prefetch
1; quant_xres_ab_7b_h100.json, where f32 was slower everywhere); each of those plain, with
programmatic dependent launch, and with that plus an L2 prefetch of the program's weights
(configs "pdl", "l2_prefetch"); bf16 (cuBLAS); and, as the floor a read of this many bytes
costs here, cuBLAS's bf16 GEMV over a weight of the int4 weight's bytes ([bytes / 2K, K]). Then the whole step's weight products (every layer's
weights distinct, one CUDA graph; quant_decode.time_step) with bf16 and int4 on three tables:
the default kernel's fastest config per shape, the same with "pdl" allowed, and the fastest
of every kind: the batch-1 ms per token that issue 16's 2.5x is about.

    python bench/quant_xres_ab.py --shapes llama2-7b llama3.1-8b --name quant_xres_ab_h100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import quant_decode  # noqa: E402
import quant_sweep  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.kernels import quant_configs as qc  # noqa: E402
from swiftinfer_core.model.quant import QuantFormat  # noqa: E402

GROUP = 128


def candidates(n: int, k: int) -> list[dict]:
    base = qc.config("int4", 1, n, k)
    pf1 = dict(base, prefetch=1, stages=1)
    launch = ({}, {"pdl": True}, {"pdl": True, "l2_prefetch": True})
    xres = [dict(block_n=bn, block_k=1024, warps=w, stages=1, waves=wv, x_resident=True, prefetch=1, math="h2", **how)
            for bn, w in ((4, 2), (4, 4), (8, 4)) for wv in (8, 16) for how in launch]
    return [dict(c, **how) for c in (base, pf1) for how in launch] + xres


KINDS = ("default", "default pdl", "default pdl l2pf", "xres h2", "xres h2 pdl", "xres h2 pdl l2pf")
TABLES = {"default": KINDS[:1], "default_pdl": KINDS[:3], "all": KINDS}  # whole-step tables


def kind(cfg: dict) -> str:
    """Which kernel, math and launch a GEMV config runs: one of KINDS (or "xres f32 ...")."""
    name = f"xres {cfg.get('math', 'f32')}" if qc.x_resident(cfg) else "default"
    return name + (" pdl" if qc.pdl(cfg) else "") + (" l2pf" if qc.l2_prefetch(cfg) else "")


def best(p: dict, of: tuple[str, ...]) -> dict | None:
    """The point's fastest row among the kinds ``of``."""
    return next((r for r in p["rows"] if kind(r["cfg"]) in of), None)  # rows are sorted fastest first


def same_bytes_us(n: int, k: int, dev) -> float:
    """us per launch of cuBLAS's bf16 GEMV over a [rows, k] weight holding the int4 weight's bytes
    (n k / 2 plus scales), over copies larger than 3x the L2 like the sweep's points."""
    nbytes = n * k // 2 + n * (k // GROUP) * 2
    rows = max(1, nbytes // (2 * k))
    ws = [torch.randn(rows, k, device=dev, dtype=torch.bfloat16) for _ in range(quant_sweep.streaming_copies(nbytes))]
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    return quant_sweep.time_launches([lambda w=w: torch.nn.functional.linear(x, w) for w in ws], False) * 1e6


def step_ms(shapes: list[tuple[int, int]], table: Path | None, dev) -> float:
    """ms of one step's weight products: bf16 (table None) or int4 on a quant_configs JSON file."""
    if table is None:
        return quant_decode.time_step(None, shapes, 1, dev, GROUP, False) * 1e3
    qc.load(table)
    return quant_decode.time_step(QuantFormat.INT4, shapes, 1, dev, GROUP, False) * 1e3


def write_table(path: Path, cfgs: dict[str, dict]) -> Path:
    """A quant_configs JSON with ``cfgs`` ({"NxK": cfg}) as int4's batch-1 table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**common.header(), "group": GROUP, "configs": {"int4": {"1": cfgs}}}, indent=1, default=str))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b"])
    ap.add_argument("--name", default="quant_xres_ab")
    ap.add_argument("--out", default=None)
    ap.add_argument("--budget-s", type=float, default=400.0, help="stop starting new shapes after this long")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("quant_xres_ab.py needs a CUDA GPU")
    from bench.models import SHAPES

    dev = torch.device("cuda")
    t0, points, rows = time.perf_counter(), {}, []
    for name in a.shapes:
        for n, k in dict.fromkeys(quant_decode.weight_shapes(SHAPES[name])):
            if (n, k) in points or time.perf_counter() - t0 > a.budget_s:
                continue
            p = quant_sweep.sweep_point("int4", 1, n, k, GROUP, dev, False, cands=candidates(n, k))
            points[(n, k)] = p
            b = {kd: best(p, (kd,)) for kd in KINDS}
            us = {kd: b[kd] and b[kd]["us"] for kd in KINDS}
            top = best(p, KINDS)
            floor = same_bytes_us(n, k, dev)
            rows.append({"shape": f"{n}x{k}", "bf16_us": p["bf16_us"], "same_bytes_bf16_us": floor,
                         "best_of_floor": top and floor / top["us"], **{f"{kd}_us": v for kd, v in us.items()},
                         "best_x_default": us["default"] and top and us["default"] / top["us"], "best_kind": top and kind(top["cfg"]),
                         "cfgs": {kd: b[kd] and b[kd]["cfg"] for kd in KINDS}, "rejected": p["rejected"][:4]})
            print(f"{n:>6}x{k:<6} bf16 {p['bf16_us']:7.1f} us  same-bytes bf16 {floor:6.1f}  " + "  ".join(f"{kd} {v and round(v, 1)}" for kd, v in us.items())
                  + f"  best {top and top['cfg']}  rejected {len(p['rejected'])}  [{time.perf_counter() - t0:.0f}s]", flush=True)
            torch.cuda.empty_cache()
    steps = []
    for name in a.shapes:
        shapes = quant_decode.weight_shapes(SHAPES[name])
        if not all(s in points for s in shapes):
            continue
        folder = Path(a.out or common.RESULTS)
        step = {"shape": name, "bf16_ms": step_ms(shapes, None, dev)}
        for label, of in TABLES.items():  # each table: the fastest config per shape among those kinds
            cfgs = {f"{n}x{k}": best(points[(n, k)], of)["cfg"] for n, k in set(shapes)}
            ms = step_ms(shapes, write_table(folder / f"{a.name}_{name}_{label}_table.json", cfgs), dev)
            step.update({f"int4_{label}_ms": ms, f"{label}_x_bf16": step["bf16_ms"] / ms})
        steps.append(step)
        torch.cuda.empty_cache()
    print(common.table(rows, ["shape", "bf16_us", "same_bytes_bf16_us"] + [f"{kd}_us" for kd in KINDS]
                       + ["best_x_default", "best_of_floor"]))
    print(common.table(steps, ["shape", "bf16_ms"] + [f"int4_{t}_ms" for t in TABLES] + [f"{t}_x_bf16" for t in TABLES]))
    common.write_results(a.name, {"group": GROUP, "rows": rows, "steps": steps,
                                  "points": [{**p, "rows": p["rows"][:12]} for p in points.values()]}, a.out)
    plot(a.name, rows, a.out)


def plot(name: str, rows: list[dict], out: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(rows))
    series = [("bf16_us", "bf16 (cuBLAS)"), ("same_bytes_bf16_us", "bf16 GEMV of int4's bytes")] + \
        [(f"{kd}_us", f"int4 {kd}") for kd in KINDS]
    wd = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        ax.bar([x + i * wd for x in xs], [r[key] or 0 for r in rows], wd, label=label)
    ax.set_xticks([x + 0.4 - wd / 2 for x in xs], [r["shape"] for r in rows], fontsize=7)
    ax.set(ylabel="us per product (fastest config each)", title="batch-1 GEMV, int4 group 128 (lower is faster)")
    ax.legend(fontsize=7)
    return common.save_plot(name, fig, out)


if __name__ == "__main__":
    main()
