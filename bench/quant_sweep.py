"""Tuning sweep of the quantized kernels (bench/quant_decode.py --sweep): for each
format, batch bucket and weight shape, time every candidate config of
kernels/quant_configs.py on the GPU and write the fastest in the format
quant_configs.load reads, so one device call picks the table.

Per (format, batch, shape [N, K]): one random bf16 weight is quantized, then
copied until the copies exceed 3x the L2 (the product reads them in turn, so the
weights stream from HBM as in a decode step); each candidate is first checked
against the float32 product of the dequantised weight (a wrong one is recorded
and never chosen), then timed as a CUDA graph of launches over all the copies
(median of 5 replays, per launch). bf16 F.linear (cuBLAS) is timed the same way
for reference. A bucket's "default" is the candidate with the least summed
slowdown (time / that shape's best) over the swept shapes; unknown shapes use it.
A time budget stops the sweep between points; what was measured is still written.
The GEMV candidates come in each math of kernels/quant_configs.py GEMV_MATHS (int4's
"h2" is left out since it measured slower; put it back there to sweep it): a chosen
config carries "math": "h2" only where the h2 kernel was the faster. int4's also come as
the x-resident kernel (GEMV_XRES, "x_resident": true; its variant label leads with "xres").

    python bench/quant_decode.py --sweep --out DIR   # DIR/quant_configs.json (+ timings)
    SWIFTINFER_QUANT_CONFIGS=DIR/quant_configs.json python bench/quant_decode.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import common
import torch
import torch.nn.functional as F

from swiftinfer_core.kernels import quant_configs as qc
from swiftinfer_core.kernels.quant_gemm import gemm_int4, gemm_int8
from swiftinfer_core.kernels.quant_gemv import gemv_int4, gemv_int8
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize

ORDER = (1, 32, 128, 16, 64, 256)  # buckets by importance: the budget may stop the sweep early


def candidates(fmt: str, batch: int, dequant_only: bool = False) -> list[dict]:
    """Every config tried for ``fmt`` at ``batch`` rows (the table's default included). ``dequant_only``:
    from 64 rows, only the table's default and the dequantise-then-cuBLAS configs (no fused-GEMM
    compiles, so a short device call measures that path against the table)."""
    out = []
    if batch == 1:  # each tile in each math of GEMV_MATHS ("f32" configs carry no "math" key)
        for math in qc.GEMV_MATHS[fmt]:
            extra = {} if math == "f32" else {"math": math}
            for bn, bk, warps in qc.GEMV_CANDIDATES[fmt]:
                out += [dict(block_n=bn, block_k=bk, warps=warps, stages=st, waves=w, **extra) for st in (1, 3) for w in qc.WAVES]
                if math == "f32":
                    out += [dict(block_n=bn, block_k=bk, warps=warps, stages=1, waves=w, **v)
                            for v in qc.GEMV_VARIANTS[fmt] for w in qc.WAVES]
        out += xres_candidates(fmt)
    else:
        bm = min(128, max(16, qc.bucket(batch)))
        for bn, bk, warps, st in [] if dequant_only and batch >= 64 else qc.GEMM_CANDIDATES[fmt]:
            out += [dict(block_m=bm, block_n=bn, block_k=bk, warps=warps, stages=st, waves=w) for w in qc.WAVES]
        if batch >= 64:
            out += [dict(block_m=bm, block_n=64, block_k=128, warps=4, stages=3, waves=0, dequant_mib=mib) for mib in qc.DEQUANT_MIB]
    default = dict(qc.DEFAULTS[fmt][qc.bucket(batch)])
    return out if default in out else [default, *out]


def xres_candidates(fmt: str) -> list[dict]:
    """The x-resident GEMV's configs (kernels/quant_configs.py GEMV_XRES, XRES_MATHS, XRES_WAVES)."""
    return [dict(block_n=bn, block_k=bk, warps=warps, stages=1, waves=w, x_resident=True, prefetch=1,
                 **({} if math == "f32" else {"math": math}))
            for bn, bk, warps in qc.GEMV_XRES[fmt] for math in qc.XRES_MATHS for w in qc.XRES_WAVES]


def product(fmt: str, x: torch.Tensor, qw, out: torch.Tensor, cfg: dict):
    if fmt == "int8":
        return (gemv_int8 if x.shape[0] == 1 else gemm_int8)(x, qw.qweight, qw.scales, out=out, cfg=cfg)
    f = gemv_int4 if x.shape[0] == 1 else gemm_int4
    return f(x, qw.qweight, qw.scales, qw.in_features, qw.group, out=out, cfg=cfg)


def streaming_copies(nbytes: int) -> int:
    """How many copies of an nbytes weight a timing reads in turn so that together they exceed
    3x the L2 (2 to 32): each launch then streams its weight from HBM, as in a decode step."""
    l2 = common.device_info().get("l2_mib", 0) * 2**20
    return int(min(32, max(2, 3 * l2 // nbytes + 1)))


def time_launches(fns, smoke: bool) -> float:
    """Seconds per call of the fns, run in turn: a CUDA graph of all of them (median of 5 replays,
    after one warm-up run outside the capture and one replay)."""
    if smoke:
        return common.timed(lambda: [f() for f in fns], reps=1, warmup=0) / len(fns)
    secs, g = common.time_graph(lambda: [f() for f in fns], reps=5, warmup=1)
    del g
    return secs / len(fns)


def sweep_point(fmt: str, batch: int, n: int, k: int, group: int, dev, smoke: bool, cands: list[dict] | None = None) -> dict:
    """Timings of every candidate (``cands``, default candidates()) and bf16 for one format, batch and shape."""
    gen = torch.Generator(device=dev).manual_seed(n * 7 + k)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02
    qw = quantize(w, QuantFormat(fmt), group)
    x = torch.randn(batch, k, device=dev, dtype=torch.bfloat16, generator=gen)
    want = (x.float() @ dequantize(qw).t()).double()
    nbytes = qw.qweight.numel() * qw.qweight.element_size() + qw.scales.numel() * 2
    copies = 1 if smoke else streaming_copies(nbytes)
    qws = [qw] + [type(qw)(qw.fmt, qw.qweight.clone(), qw.scales.clone(), n, k, qw.group) for _ in range(copies - 1)]
    out = torch.empty(batch, n, device=dev, dtype=torch.bfloat16)
    rows, bad = [], []
    for cfg in (cands or candidates(fmt, batch))[: 3 if smoke else None]:  # smoke: the script's path, not a tuning
        try:
            err = ((product(fmt, x, qw, out, cfg).double() - want).norm() / want.norm()).item()
            if not err < 2e-2:
                bad.append({"cfg": cfg, "rel_err": err})
                continue
            secs = time_launches([lambda q=q, c=cfg: product(fmt, x, q, out, c) for q in qws], smoke)
        except Exception as e:  # noqa: BLE001  (a config that does not compile, e.g. out of resources, is skipped)
            bad.append({"cfg": cfg, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        rows.append({"cfg": cfg, "us": secs * 1e6, "GBps": nbytes / secs / 1e9})
    ws = [w] + [w.clone() for _ in range(copies * nbytes // (n * k * 2))]  # bf16 copies of as many bytes
    bf16 = time_launches([lambda v=v: F.linear(x, v) for v in ws], smoke)
    rows.sort(key=lambda r: r["us"])
    return {"format": fmt, "batch": batch, "n": n, "k": k, "copies": copies, "bf16_us": bf16 * 1e6,
            "best": rows[0] if rows else None, "rows": rows, "rejected": bad}


def choose(points: list[dict]) -> dict:
    """quant_configs JSON "configs": per format and bucket, the best per shape and a default."""
    configs: dict = {}
    for fmt in sorted({p["format"] for p in points}):
        for b in sorted({p["batch"] for p in points if p["format"] == fmt}):
            pts = [p for p in points if p["format"] == fmt and p["batch"] == b and p["best"]]
            table = {f"{p['n']}x{p['k']}": p["best"]["cfg"] for p in pts}
            slow: dict[str, list[float]] = {}
            for p in pts:
                for r in p["rows"]:
                    slow.setdefault(json.dumps(r["cfg"], sort_keys=True), []).append(r["us"] / p["best"]["us"])
            full = {c: sum(v) for c, v in slow.items() if len(v) == len(pts)}
            if full:
                table["default"] = json.loads(min(full, key=full.get))
            configs.setdefault(fmt, {})[str(qc.bucket(b))] = table
    return configs


def variant(cfg: dict) -> str:
    """A config's kernel variant: a GEMV's (kernels/quant_configs.py GEMV_VARIANTS), e.g. "pf1+l2",
    a math other than f32 leading the label ("h2 pf0"); a GEMM's "gemm" or "dequant"."""
    if "block_m" in cfg:
        return "dequant" if qc.dequant_mib(cfg) else "gemm"
    prefetch, l2_only = qc.gemv_variant(cfg)
    math = cfg.get("math", "f32")
    lead = ("" if math == "f32" else f"{math} ") + ("xres " if qc.x_resident(cfg) else "")
    return lead + f"pf{prefetch}" + ("+l2" if l2_only else "") + ("+pdl" if qc.pdl(cfg) else "")


def by_variant(p: dict) -> dict[str, dict]:
    """A point's fastest row per GEMV kernel variant, so one sweep compares them side by side."""
    best: dict[str, dict] = {}
    for r in p["rows"]:  # sorted fastest first
        best.setdefault(variant(r["cfg"]), r)
    return dict(sorted(best.items()))


def run(shapes: dict[str, list[tuple[int, int]]], batches: list[int], group: int, budget_s: float, out: str | None,
        smoke: bool, formats: tuple[str, ...] = ("int4", "int8"), dequant_only: bool = False) -> Path:
    dev = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    uniq = sorted({s for ws in shapes.values() for s in ws})
    order = [b for b in ORDER if b in batches] + [b for b in batches if b not in ORDER]
    t0, points, skipped = time.perf_counter(), [], []
    for b in order:
        for fmt in formats:
            for n, k in uniq:
                if time.perf_counter() - t0 > budget_s:
                    skipped.append({"format": fmt, "batch": b, "n": n, "k": k})
                    continue
                p = sweep_point(fmt, b, n, k, group, dev, smoke, candidates(fmt, b, dequant_only))
                points.append(p)
                best = p["best"]
                print(f"{fmt} b={b:<4} {n:>6}x{k:<6} bf16 {p['bf16_us']:8.1f} us  best {best and best['us']:8.1f} us "
                      f"({best and p['bf16_us'] / best['us']:.2f}x bf16, {best and best['GBps']:.0f} GB/s) {best and best['cfg']}"
                      f"  rejected {len(p['rejected'])}  [{time.perf_counter() - t0:.0f}s]", flush=True)
                variants = by_variant(p)
                if len(variants) > 1:
                    p["best_by_variant"] = variants
                    print("    best by variant: " + ", ".join(f"{v} {r['us']:.1f} us" for v, r in variants.items()), flush=True)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    configs = choose(points)
    d = Path(out or common.RESULTS)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "quant_configs.json"
    path.write_text(json.dumps({**common.header(), "group": group, "configs": configs}, indent=1, default=str))
    common.write_results("quant_sweep_smoke" if smoke else "quant_sweep",
                         {"group": group, "skipped": skipped, "points": points, "configs": configs}, out)
    print(f"wrote {path}" + (f"; budget reached, {len(skipped)} points skipped" if skipped else ""))
    return path
