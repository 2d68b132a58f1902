"""Tiles of the batch-1 FP8 GEMV (kernels/fp8_gemv.py), timed per weight shape of the 7B and 8B layers, with and
without the folds the engine's chain gives it (kernels/gemv_fusion.py).

Per [N, K] shape: one random bf16 weight quantized to e4m3 rows, copied until the copies exceed 3x the L2 (each
launch streams from HBM, as in a decode step: bench/quant_sweep.py); every candidate (rows per program, columns
per K step, warps, pipelining stages; then, for the four fastest, K parts and who sums them: a second kernel or the
last part, ``one_launch``) is first checked against the float64 product of the dequantised
weight, then timed as a CUDA graph of back-to-back launches over the copies. The kernel's current default
(split chosen by choose_split) and bf16 (cuBLAS F.linear and kernels/gemv.py over a bf16 weight) are timed the
same way. Then the default and the fastest tile again with the shape's fold: RMSNORM for qkv, gate-up and the
head (x the float32 residual, as the chain passed it before session 36), SILU_MUL for down, the residual for o and
down; and the fastest tile with the chain's handoff (kernels/gemv_fusion.py): NORMED x for qkv, gate-up and the
head, a handoff stored by o and down.

    python3 bench/fp8_gemv_sweep.py [--shapes llama2-7b llama3.1-8b] [--budget-s 240] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import models  # noqa: E402
import quant_sweep  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from swiftinfer_core.kernels.fp8_gemv import choose_split, gemv_fp8  # noqa: E402
from swiftinfer_core.kernels.gemv import gemv  # noqa: E402
from swiftinfer_core.kernels.gemv_fusion import NO_FUSION, Fusion, Handoff, Prologue, fused_ref  # noqa: E402
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize  # noqa: E402

DEFAULT = dict(block_n=8, block_k=512, warps=4, stages=4, split=None, one=False)  # gemv_fp8's defaults
TILES = [(4, 1024, 4), (8, 512, 4), (8, 1024, 4), (8, 1024, 8), (8, 2048, 8), (16, 512, 4), (16, 1024, 4),
         (16, 1024, 8), (16, 512, 8), (32, 256, 4), (32, 512, 8), (32, 1024, 8)]  # (block_n, block_k, warps)
STAGES = (1, 2, 3, 4)


def layer_shapes(shape: str) -> dict[str, tuple[int, int]]:
    a = models.model_args(shape)
    h, i = a.hidden_size, a.intermediate_size
    return {"qkv": ((a.num_heads + 2 * a.num_kv_heads) * a.head_dim, h), "o": (h, a.num_heads * a.head_dim),
            "gate_up": (2 * i, h), "down": (h, i), "head": (a.vocab_size, h)}


def splits(n: int, k: int, dev, bn: int, bk: int) -> list[int]:
    """K parts to try for a tile: none, choose_split's, and 2, 4 and 8 where the K steps allow."""
    steps = -(-k // bk)
    return sorted({1, choose_split(n, k, dev, bn, bk)} | {s for s in (2, 4, 8) if s <= steps})


def call(x, q, s, out, cfg: dict, fusion: Fusion = NO_FUSION):
    return gemv_fp8(x, q, s, out=out, split_k=cfg["split"], block_n=cfg["block_n"], block_k=cfg["block_k"],
                    num_warps=cfg["warps"], stages=cfg["stages"], fusion=fusion, one_launch=cfg["one"])


def fold(kind: str, n: int, k: int, dev) -> tuple[torch.Tensor, Fusion]:
    """x and the chain's Fusion for this weight kind (x float32 for the norm folds: the chain's residual stream)."""
    if kind in ("qkv", "gate_up", "head"):
        return torch.randn(1, k, device=dev), Fusion(Prologue.RMSNORM, torch.rand(k, device=dev, dtype=torch.bfloat16) + 0.5)
    if kind == "down":
        return torch.randn(1, 2 * k, device=dev, dtype=torch.bfloat16), Fusion(Prologue.SILU_MUL, residual=torch.randn(1, n, device=dev))
    return torch.randn(1, k, device=dev, dtype=torch.bfloat16), Fusion(residual=torch.randn(1, n, device=dev))


def handoff_fold(kind: str, n: int, k: int, dev) -> tuple[torch.Tensor, Fusion]:
    """x and the chain's Fusion since session 36: NORMED from a bf16 handoff of 8-row parts, or storing one."""
    if kind in ("qkv", "gate_up", "head"):
        src = Handoff.new(torch.rand(k, device=dev) + 0.5, torch.bfloat16)
        src.xn.normal_()
        src.ss.uniform_()
        src.parts = k // 8
        return src.xn, Fusion(Prologue.NORMED, source=src)
    xf, fusion = fold(kind, n, k, dev)
    return xf, Fusion(fusion.prologue, residual=fusion.residual, handoff=Handoff.new(torch.rand(n, device=dev) + 0.5, torch.bfloat16))


def point(kind: str, n: int, k: int, dev, deadline: float) -> dict:
    qw = quantize(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, QuantFormat.FP8)
    nbytes = n * k + n * 4
    copies = quant_sweep.streaming_copies(nbytes)
    qs = [(qw.qweight, qw.scales)] + [(qw.qweight.clone(), qw.scales.clone()) for _ in range(copies - 1)]
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    out = torch.empty(1, n, device=dev, dtype=torch.bfloat16)
    want = x.double() @ dequantize(qw).double().t()

    def timed(cfg: dict, xx=x, fusion=NO_FUSION, o=out) -> float:
        return quant_sweep.time_launches([lambda q=q, s=s: call(xx, q, s, o, cfg, fusion) for q, s in qs], False) * 1e6

    rows, bad = [], []

    def trial(cands: list[dict], phase_end: float) -> None:
        for cfg in cands:
            if time.perf_counter() > phase_end and cfg is not DEFAULT:
                break
            try:
                err = ((call(x, qw.qweight, qw.scales, out, cfg).double() - want).norm() / want.norm()).item()
                if not err < 1e-2:
                    bad.append({"cfg": cfg, "rel_err": err})
                    continue
                rows.append({"cfg": cfg, "us": timed(cfg)})
            except Exception as e:  # noqa: BLE001  (a tile that does not compile, e.g. out of registers, is skipped)
                bad.append({"cfg": cfg, "error": f"{type(e).__name__}: {str(e)[:160]}"})

    # phase 1: every tile at choose_split's parts; phase 2: the four fastest at every split, either summing
    start = time.perf_counter()
    trial([DEFAULT] + [dict(block_n=bn, block_k=bk, warps=w, stages=st, split=None, one=False)
                       for bn, bk, w in TILES for st in STAGES], start + 0.6 * (deadline - start))
    lead = [r["cfg"] for r in sorted(rows, key=lambda r: r["us"])[:4]]
    trial([c | dict(split=sp, one=one) for c in lead for sp in splits(n, k, dev, c["block_n"], c["block_k"])
           for one in ((False, True) if sp > 1 else (False,))], deadline)
    rows.sort(key=lambda r: r["us"])
    best = rows[0]
    default_us = timed(DEFAULT)  # again, after the sweep: the first timing of a shape ran slow at times (H100, session 36)
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(quant_sweep.streaming_copies(n * k * 2))]
    cublas = quant_sweep.time_launches([lambda w=w: F.linear(x, w) for w in ws], False) * 1e6
    ours_bf16 = quant_sweep.time_launches([lambda w=w: gemv(x, w) for w in ws], False) * 1e6
    del ws
    xf, fusion = fold(kind, n, k, dev)
    fres = fusion.residual
    got = call(xf, qw.qweight, qw.scales, torch.empty(1, n, device=dev, dtype=torch.float32), best["cfg"], fusion)
    ref = fused_ref(xf, dequantize(qw), fusion)
    fold_err = ((got.double() - ref).norm() / ref.norm()).item()
    fo = fres if fres is not None else torch.empty(1, n, device=dev, dtype=torch.float32)
    folded = {"default_us": timed(DEFAULT, xf, fusion, fo), "best_us": timed(best["cfg"], xf, fusion, fo), "rel_err": fold_err}
    xh, hfu = handoff_fold(kind, n, k, dev)
    ho = hfu.residual if hfu.residual is not None else torch.empty(1, n, device=dev, dtype=torch.float32)
    folded["handoff_best_us"] = timed(best["cfg"], xh, hfu, ho)
    torch.cuda.empty_cache()
    return {"kind": kind, "n": n, "k": k, "bytes": nbytes, "copies": copies, "default_us": default_us, "best": best,
            "x_default": default_us / best["us"], "GBps_best": nbytes / best["us"] / 1e3, "cublas_bf16_us": cublas,
            "triton_bf16_us": ours_bf16, "folded": folded, "rows": rows, "rejected": bad}


def plot(points: list[dict], device: str, name: str, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(points)), 4.8))
    keys = [("cublas_bf16_us", "bf16 cuBLAS"), ("default_us", "fp8 default tile"), ("best_us", "fp8 best tile"),
            ("fold_default_us", "fp8 default + fold"), ("fold_best_us", "fp8 best + fold"),
            ("fold_handoff_best_us", "fp8 best + handoff fold")]
    for j, (key, label) in enumerate(keys):
        vals = [p["best"]["us"] if key == "best_us" else p["folded"][key[5:]] if key.startswith("fold_") else p[key] for p in points]
        ax.bar([i + 0.14 * (j - 2.5) for i in range(len(points))], vals, width=0.13, label=label, color=f"C{j}")
    ax.set_xticks(range(len(points)), [f"{p['shape']}\n{p['kind']} {p['n']}x{p['k']}" for p in points], fontsize=7)
    ax.set_ylabel("us per launch (streamed from HBM)")
    ax.set_title(f"batch-1 FP8 GEMV tiles, {device}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    common.save_plot(name, fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b"], choices=sorted(models.SHAPES))
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop trying tiles after this long (per run)")
    ap.add_argument("--name", default="fp8_gemv_sweep")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    seen, todo = set(), []
    for shape in a.shapes:
        for kind, (n, k) in layer_shapes(shape).items():
            if (n, k) not in seen:
                seen.add((n, k))
                todo.append((shape, kind, n, k))
    t0, points = time.perf_counter(), []
    for i, (shape, kind, n, k) in enumerate(todo):
        deadline = t0 + a.budget_s * (i + 1) / len(todo)  # an even share of the budget per shape
        p = {"shape": shape} | point(kind, n, k, dev, deadline)
        points.append(p)
        f = p["folded"]
        print(f"{shape:12s} {kind:8s} {n:>6}x{k:<6} bf16 {p['cublas_bf16_us']:7.1f} (triton {p['triton_bf16_us']:7.1f})  "
              f"fp8 default {p['default_us']:7.1f}  best {p['best']['us']:7.1f} us ({p['x_default']:.2f}x, "
              f"{p['GBps_best']:.0f} GB/s) {p['best']['cfg']}  folded {f['default_us']:.1f} / {f['best_us']:.1f} "
              f"handoff {f['handoff_best_us']:.1f} "
              f"(err {f['rel_err']:.1e})  tried {len(p['rows'])} bad {len(p['rejected'])} [{time.perf_counter() - t0:.0f}s]", flush=True)
        common.write_results(a.name, {"points": points}, a.out)
    plot(points, common.device_info()["name"], a.name, a.out)


if __name__ == "__main__":
    main()
