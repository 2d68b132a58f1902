"""What ``quant_rounding: gptq`` costs at load: one rank built through runner/build.py
with random (SEEDED) weights of a 7B/8B shape, rounded to nearest and by GPTQ over
self-generated calibration text, side by side in one run. Reports the build's wall
seconds, the calibration's phases (runner/calibration.CalibrationReport: sampling,
Hessian prefill, GPTQ rounding, Hessian bytes) and the device's peak memory. The
weights are random, so the text is noise: this measures time and memory, not
quality (bench/quant_quality_cpu.py does that on the real model).

    python bench/gptq_load.py --shapes llama2-7b llama3.1-8b --formats fp8 int4     # GPU
    python bench/gptq_load.py --smoke --json /tmp/gptq_load_smoke.json                  # CPU: 2 layers of the
        default model's shape, int4, to check the script runs (its times mean little)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import header, save_plot  # noqa: E402
from bench.models import model_args  # noqa: E402
from swiftinfer_core.cache.layout import StreamLayout  # noqa: E402
from swiftinfer_core.model import quant_search  # noqa: E402
from swiftinfer_core.model.quant import QuantFormat  # noqa: E402
from swiftinfer_core.runner.build import build_rank  # noqa: E402
from swiftinfer_core.runner.calibration import CalibrationReport  # noqa: E402
from swiftinfer_core.runner.rank_config import RankConfig, Weights  # noqa: E402


class Reports(logging.Handler):
    """Keeps the CalibrationReport that runner/calibration.py logs."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.got: list[CalibrationReport] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.got += [a for a in (record.args or ()) if isinstance(a, CalibrationReport)]


@contextmanager
def torch_column_loop():
    """GPTQ rounds through model/quant_search.round_block (torch) on every device while open."""
    saved = quant_search._block_rounder
    quant_search._block_rounder = lambda w: quant_search.round_block
    try:
        yield
    finally:
        quant_search._block_rounder = saved


def build_once(cfg: RankConfig, reports: Reports) -> dict:
    cuda = cfg.device_type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    n = len(reports.got)
    t0 = time.perf_counter()
    runner = build_rank(cfg)
    if cuda:
        torch.cuda.synchronize()
    row = {"build_s": round(time.perf_counter() - t0, 2),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    if len(reports.got) > n:
        row["calibration"] = asdict(reports.got[-1])
    del runner
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama2-7b", "llama3.1-8b"])
    ap.add_argument("--formats", nargs="+", default=["fp8", "int4"], choices=["fp8", "int4"])
    ap.add_argument("--tokens", type=int, default=2048, help="quant_calibration_tokens")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--torch-loop", action="store_true", help="also build with torch's GPTQ column loop (the A/B of "
                    "kernels/gptq_block.py; at the 8B shape in int4 that build took over 250 s)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/gptq_load.json"))
    a = ap.parse_args()
    reports = Reports()
    logging.getLogger("swiftinfer_core.runner.calibration").addHandler(reports)
    logging.getLogger("swiftinfer_core.runner.calibration").setLevel(logging.INFO)
    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    shapes = {"smollm2-135m-2-layers": replace(model_args("smollm2-135m"), num_layers=2)} if a.smoke else \
        {s: model_args(s) for s in a.shapes}
    formats = ["int4"] if a.smoke else a.formats
    out = {**header(), "note": "random (SEEDED) weights: load time and memory only", "tokens": a.tokens, "results": {}}
    for shape, args in shapes.items():
        for fmt in formats:
            base = RankConfig(args=args, layout=StreamLayout(4, 1020), device_type=device,
                              dtype=torch.float32 if device == "cpu" else torch.bfloat16, weights=Weights.SEEDED, seed=3,
                              attention="torch" if device == "cpu" else "triton", slots=8, quant=QuantFormat(fmt))
            rows = {name: build_once(replace(base, calibration_tokens=t), reports)
                    for name, t in (("nearest", 0), ("gptq", a.tokens))}
            if a.torch_loop:  # the same GPTQ with torch's column loop instead of the Triton block kernel
                with torch_column_loop():
                    rows["gptq_torch_loop"] = build_once(replace(base, calibration_tokens=a.tokens), reports)
            out["results"][f"{shape} {fmt}"] = rows
            print(f"{shape:<24} {fmt:<5} nearest {rows['nearest']['build_s']:7.1f} s   gptq {rows['gptq']['build_s']:7.1f} s  "
                  + (f"torch loop {rows['gptq_torch_loop']['build_s']:7.1f} s  " if "gptq_torch_loop" in rows else "")
                  + f"{rows['gptq'].get('calibration')}  peak {rows['nearest']['peak_gib']} / {rows['gptq']['peak_gib']} GiB",
                  flush=True)
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(out, indent=1) + "\n")
    plot(out, a.json.with_suffix(".png"))


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["results"])
    parts = ("generate_s", "hessian_s", "round_s")
    fig, ax = plt.subplots(figsize=(8, 0.9 * len(names) + 1.5))
    for i, n in enumerate(names):
        r = out["results"][n]
        ax.barh(3 * i, r["nearest"]["build_s"], color="gray", label="build, nearest" if i == 0 else None)
        for j, (row, hatch) in enumerate((("gptq", None), ("gptq_torch_loop", "//"))):
            left = 0.0
            for p, c in zip(parts, ("tab:blue", "tab:orange", "tab:green")):
                v = r.get(row, {}).get("calibration", {}).get(p, 0.0)
                ax.barh(3 * i + 1 + j, v, left=left, color=c, hatch=hatch,
                        label=f"{row}: {p[:-2]}" if i == 0 and (j == 0 or row in r) else None)
                left += v
    ax.set_yticks([3 * i + 1 for i in range(len(names))], names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds at load")
    ax.set_title(f"quant_rounding gptq at load ({out['tokens']} calibration tokens), {out['device'].get('name')}")
    ax.legend(fontsize=7)
    save_plot(path.stem, fig, str(path.parent))


if __name__ == "__main__":
    main()
