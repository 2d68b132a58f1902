"""GPTQ's rounding of one linear, side by side in one run: the torch column loop
(model/quant_search.round_block, ~6 launches per column) against the Triton block
kernel (kernels/gptq_block.py, one launch per 128 columns), for fp8 and int4 (group
128, activation order), at the Llama-3.1-8B linears' shapes. Random weights and a
random SPD Hessian (time only; the kernels' agreement is tests/kernels/test_gptq_block.py's).
Also reports how many rounded values the two disagree on.

    python bench/gptq_round.py                                   # GPU
    python bench/gptq_round.py --smoke --json /tmp/gptq_round.json   # CPU, interpreter, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated

import torch  # noqa: E402

from bench.common import header, save_plot  # noqa: E402
from swiftinfer_core.kernels.gptq_block import round_block as triton_block  # noqa: E402
from swiftinfer_core.model import quant_search  # noqa: E402

SHAPES_8B = {"wqkv": (6144, 4096), "wo": (4096, 4096), "w13": (28672, 4096), "w2": (4096, 14336)}  # [N, K]


def _time(fn, device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def _codes(out) -> torch.Tensor:
    return out[0].view(torch.uint8)  # packed int4 nibbles or e4m3 bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", nargs="+", default=["fp8", "int4"], choices=["fp8", "int4"])
    ap.add_argument("--layers", nargs="+", default=list(SHAPES_8B), choices=list(SHAPES_8B))
    ap.add_argument("--smoke", action="store_true", help="CPU under the interpreter, shapes / 32")
    ap.add_argument("--json", type=Path, default=Path("bench/results/gptq_round.json"))
    a = ap.parse_args()
    device = torch.device("cpu" if a.smoke or not torch.cuda.is_available() else "cuda")
    shapes = {n: ((r // 32, c // 32) if a.smoke else (r, c)) for n, (r, c) in SHAPES_8B.items() if n in a.layers}
    out = {**header(), "note": "random weights and Hessian; seconds per linear, rounding only (Hinv factor included)",
           "interpreter": a.smoke, "results": {}}
    g = torch.Generator(device="cpu").manual_seed(0)
    for name, (n, k) in shapes.items():
        w = (torch.randn(n, k, generator=g) * 0.02).to(device)
        x = torch.randn(2 * k, k, generator=g) * torch.rand(k, generator=g)
        h = (x.t() @ x).to(device)
        for fmt in a.formats:
            row = {"shape": [n, k]}
            outs = {}
            for label, rounder in (("torch_loop", quant_search.round_block), ("triton_block", triton_block)):
                if fmt == "fp8":
                    fn = lambda r=rounder: quant_search.gptq_fp8(w, h, rounder=r)  # noqa: E731
                else:
                    fn = lambda r=rounder: quant_search.gptq_int4(w, h, 128, -8, act_order=True, rounder=r)  # noqa: E731
                row[f"{label}_s"], outs[label] = _time(fn, device)
            a_, b_ = _codes(outs["torch_loop"]), _codes(outs["triton_block"])
            row["bytes_differing_share"] = float((a_ != b_).float().mean())
            row["speedup"] = row["torch_loop_s"] / row["triton_block_s"]
            out["results"][f"{name} {fmt}"] = row
            print(f"{name:<5} {fmt:<4} [{n}, {k}]  torch loop {row['torch_loop_s']:8.2f} s  triton {row['triton_block_s']:7.3f} s"
                  f"  x{row['speedup']:.1f}  differing {row['bytes_differing_share']:.4f}", flush=True)
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(out, indent=1) + "\n")
    plot(out, a.json.with_suffix(".png"))


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["results"])
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    for i, n in enumerate(names):
        r = out["results"][n]
        ax.barh(2 * i, r["torch_loop_s"], color="gray", label="torch column loop" if i == 0 else None)
        ax.barh(2 * i + 1, r["triton_block_s"], color="tab:blue", label="Triton block kernel" if i == 0 else None)
    ax.set_yticks([2 * i + 0.5 for i in range(len(names))], names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds to round one linear by GPTQ")
    ax.set_title(f"GPTQ rounding, {out['device'].get('name')}{' (interpreter)' if out['interpreter'] else ''}")
    ax.legend(fontsize=7)
    save_plot(path.stem, fig, str(path.parent))


if __name__ == "__main__":
    main()
