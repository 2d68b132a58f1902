"""What a batch-1 product costs by size: the int4 GEMV (kernels/quant_gemv.py at the table's
config), cuBLAS's bf16 GEMV and a plain read (torch.sum), each over N x 4096 weights of
growing N, fitted as time = fixed + bytes / rate.

Why: the int4 GEMV reads a quarter of bf16's bytes, so whatever each launch costs regardless
of size (launch, ramp-up, tail) weighs ~4x more against it, and issue 16's 2.5x at batch 1
depends on both terms. Each point is timed as a CUDA graph of back-to-back launches over
copies larger than 3x the L2 (bench/quant_sweep.py time_launches); the fit is least squares
over the points of each kind.

    python bench/gemv_floor.py --name gemv_floor_h100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import quant_sweep  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.kernels.quant_gemv import gemv_int4  # noqa: E402
from swiftinfer_core.model.quant import QuantFormat, quantize  # noqa: E402

K, GROUP = 4096, 128


def fit(mb: list[float], us: list[float]) -> dict:
    """Least-squares time = fixed + mb / rate: {"fixed_us", "GBps"} (rate in GB/s from us per MB)."""
    n = len(mb)
    mx, my = sum(mb) / n, sum(us) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(mb, us)) / sum((x - mx) ** 2 for x in mb)
    return {"fixed_us": my - slope * mx, "GBps": 1e3 / slope}


def point(n: int, dev) -> dict:
    """us per launch of each kind at an [n, K] weight, and the bytes each reads."""
    x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
    qw = quantize(torch.randn(n, K, device=dev, dtype=torch.bfloat16) * 0.02, QuantFormat.INT4, GROUP)
    q_bytes = qw.qweight.numel() + qw.scales.numel() * 2
    qs = [qw] + [type(qw)(qw.fmt, qw.qweight.clone(), qw.scales.clone(), n, K, GROUP)
                 for _ in range(quant_sweep.streaming_copies(q_bytes) - 1)]
    int4 = quant_sweep.time_launches([lambda q=q: gemv_int4(x, q.qweight, q.scales, K, GROUP) for q in qs], False)
    del qs
    ws = [torch.randn(n, K, device=dev, dtype=torch.bfloat16) for _ in range(quant_sweep.streaming_copies(n * K * 2))]
    bf16 = quant_sweep.time_launches([lambda w=w: torch.nn.functional.linear(x, w) for w in ws], False)
    out = torch.empty(1, device=dev)
    read = quant_sweep.time_launches([lambda w=w: torch.sum(w.view(-1), dim=(0,), out=out[0]) for w in ws], False)
    del ws
    torch.cuda.empty_cache()
    return {"n": n, "int4_MB": q_bytes / 1e6, "bf16_MB": n * K * 2 / 1e6,
            "int4_us": int4 * 1e6, "bf16_gemv_us": bf16 * 1e6, "bf16_sum_us": read * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", type=int, default=[1024, 3072, 6144, 12288, 24576, 49152])
    ap.add_argument("--name", default="gemv_floor")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gemv_floor.py needs a CUDA GPU")
    dev = torch.device("cuda")
    rows = [point(n, dev) for n in a.rows]
    fits = {"int4 GEMV": fit([r["int4_MB"] for r in rows], [r["int4_us"] for r in rows]),
            "bf16 GEMV": fit([r["bf16_MB"] for r in rows], [r["bf16_gemv_us"] for r in rows]),
            "bf16 read (torch.sum)": fit([r["bf16_MB"] for r in rows], [r["bf16_sum_us"] for r in rows])}
    print(common.table(rows, ["n", "int4_MB", "int4_us", "bf16_MB", "bf16_gemv_us", "bf16_sum_us"]))
    for kind, f in fits.items():
        print(f"{kind:<22} fixed {f['fixed_us']:6.1f} us  stream {f['GBps']:6.0f} GB/s")
    common.write_results(a.name, {"k": K, "group": GROUP, "rows": rows, "fits": fits}, a.out)
    plot(a.name, rows, fits, a.out)


def plot(name: str, rows: list[dict], fits: dict, out: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, mb, us in (("int4 GEMV", "int4_MB", "int4_us"), ("bf16 GEMV", "bf16_MB", "bf16_gemv_us"),
                         ("bf16 read (torch.sum)", "bf16_MB", "bf16_sum_us")):
        xs = [r[mb] for r in rows]
        f = fits[kind]
        ax.plot(xs, [r[us] for r in rows], "o", label=f"{kind}: {f['fixed_us']:.1f} us + bytes at {f['GBps']:.0f} GB/s")
        ax.plot(xs, [f["fixed_us"] + x * 1e3 / f["GBps"] for x in xs], ":", color=ax.lines[-1].get_color())
    ax.set(xlabel="MB read per launch", ylabel="us per launch", title=f"batch-1 products over [N, {K}] weights")
    ax.legend(fontsize=7)
    return common.save_plot(name, fig, out)


if __name__ == "__main__":
    main()
