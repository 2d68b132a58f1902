"""fp8 weights rounded to nearest against GPTQ (``quant_rounding: gptq``), on the GPU's own path,
the real default model: perplexity teacher-forced over the plays (prefill chunks of 128: the
rows go through torch._scaled_mm with e4m3 activations), each against float32 and bf16 weights
on the same GPU, in one run. GPTQ once per calibration seed (EngineConfig.seed).

    python bench/fp8_gptq_gpu.py --tokens 3000 --window 1020 --seeds 0 1 2 --out DIR
    python bench/fp8_gptq_gpu.py --seeds 0 --torch-rounder --out DIR   # each seed also with torch's column loop
    python bench/fp8_gptq_gpu.py --seeds 0 --weight-only --out DIR     # also fp8_activations: false

``--weight-only``: nearest and each GPTQ seed also with ``fp8_activations: false``: the prefill
chunks' rows keep bf16 activations (the weight-only batched path) instead of _scaled_mm's e4m3 rows.
The bf16 CPU emulation puts GPTQ's weights alone at x1.008 of the bf16 model on this span
(bench/results/quant_quality_cpu_gpu_span_bf16.json).

``--two-terms``: each fp8 variant also with ``fp8_activation_terms: 2`` (every activation row of the
_scaled_mm products as two e4m3 terms, kernels/fp8_scaled_mm.py).

``--down-two-terms``: each fp8 variant also with ``fp8_down_activation_terms: 2`` (two terms for the
MLP down projections' input alone, one elsewhere).

``--torch-rounder``: every GPTQ seed runs a second time with GPTQ's column loop in torch
(model/quant_search.round_block) instead of the Triton kernel a GPU uses (kernels/gptq_block.py).
Why: emulated on the CPU over the same 3,000 tokens at 4+1020, GPTQ takes the e4m3-activation path
from x1.034 to x1.0075 of float32 (bench/results/quant_quality_cpu_gpu_span.json), but on the H100's
real path it did not move it (x1.019 nearest, x1.016 / x1.020 GPTQ); the Triton kernel has been
checked against the torch loop under the interpreter, and no native run of its tests is on record.

Written after the 600-token GPU test found no gain (tests/runner/test_calibration_gpu.py); first
run on an H100 in session 28 (bench/results/fp8_gptq_gpu_h100.json), after the stage calls.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.engine.engine_model import build_engine_model  # noqa: E402
from swiftinfer_core.model import quant_search  # noqa: E402
from tests.model.test_cpu_weights import _top1_and_nll  # noqa: E402  (the tests' teacher-forced scorer)


def plays_ids(tokenizer, path: Path, n: int) -> list[int]:
    text = path.read_text()
    start = text.find("ACT")  # past the Gutenberg header, as tests/conftest.py's shakespeare_ids
    return tokenizer(text[start : start + 16 * n], add_special_tokens=False).input_ids[: n + 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--window", type=int, default=1020)
    ap.add_argument("--calib-tokens", type=int, default=2048)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--text", type=Path, default=Path(os.environ.get("SWIFTINFER_HOME", Path.home() / ".cache/swiftinfer")) / "shakespeare.txt")
    ap.add_argument("--torch-rounder", action="store_true", help="each seed also with torch's column loop (module doc)")
    ap.add_argument("--weight-only", action="store_true", help="also each fp8 variant with fp8_activations: false")
    ap.add_argument("--smoothing", type=float, default=None, help="also each GPTQ seed with quant_smoothing at this alpha")
    ap.add_argument("--two-terms", action="store_true", help="also each fp8 variant with fp8_activation_terms 2")
    ap.add_argument("--down-two-terms", action="store_true", help="also each fp8 variant with fp8_down_activation_terms 2")
    ap.add_argument("--name", default="fp8_gptq_gpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    base = {"device": "cuda", "sink_tokens": 4, "window": a.window, "max_sessions": 1}
    variants = {"float32": {"dtype": "float32"}, "bf16": {"dtype": "bfloat16"},
                "fp8 nearest": {"dtype": "bfloat16", "quantization": "fp8"}}
    variants |= {f"fp8 gptq seed {s}": {"dtype": "bfloat16", "quantization": "fp8", "quant_rounding": "gptq",
                                        "quant_calibration_tokens": a.calib_tokens, "seed": s} for s in a.seeds}
    if a.smoothing is not None:
        variants |= {f"{n}, smoothed {a.smoothing}": v | {"quant_smoothing": a.smoothing} for n, v in variants.items() if "gptq" in n}
    if a.torch_rounder:
        variants |= {f"{n} (torch loop)": v for n, v in variants.items() if "gptq" in n}
    fp8 = [n for n in variants if n.startswith("fp8") and "torch loop" not in n]
    if a.weight_only:
        variants |= {f"{n}, weight-only": variants[n] | {"fp8_activations": False} for n in fp8}
    if a.two_terms:
        variants |= {f"{n}, two-term activations": variants[n] | {"fp8_activation_terms": 2} for n in fp8}
    if a.down_two_terms:
        variants |= {f"{n}, two-term down input": variants[n] | {"fp8_down_activation_terms": 2} for n in fp8}
    nll, top, ids = {}, {}, None
    for name, extra in variants.items():
        rounder = quant_search._block_rounder
        if name.endswith("(torch loop)"):  # this build's GPTQ rounds through torch's loop on the GPU too
            quant_search._block_rounder = lambda w: quant_search.round_block
        try:
            m = build_engine_model(EngineConfig(**base, **extra))
        finally:
            quant_search._block_rounder = rounder
        ids = ids or plays_ids(m.tokenizer, a.text, a.tokens)
        top[name], nll[name] = _top1_and_nll(m, ids)
        del m
        torch.cuda.empty_cache()
        print(f"{name:<20} ppl {torch.exp(nll[name].mean()).item():.4f}", flush=True)
    rows = [{"variant": n, "ppl": torch.exp(nll[n].mean()).item(),
             "x_float32": torch.exp(nll[n].mean() - nll["float32"].mean()).item(),
             "x_bf16": torch.exp(nll[n].mean() - nll["bf16"].mean()).item(),
             "top1_vs_float32": (top[n] == top["float32"]).float().mean().item()} for n in variants]
    common.write_results(a.name, {"command": " ".join(sys.argv), "tokens": len(ids) - 1, "cache": f"4+{a.window}",
                                  "calibration_tokens": a.calib_tokens, "rows": rows}, a.out)
    plot(rows, a.name, a.out)
    print(common.table(rows, ["variant", "ppl", "x_float32", "x_bf16", "top1_vs_float32"]))
    return 0


def plot(rows: list[dict], name: str, out: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar([r["variant"] for r in rows], [r["x_float32"] for r in rows], color="tab:blue")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_ylabel("perplexity / float32")
    ax.set_ylim(min(r["x_float32"] for r in rows) - 0.01, max(r["x_float32"] for r in rows) + 0.01)
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    ax.set_title("fp8 weights on the GPU path: nearest vs GPTQ (default model, the plays)")
    common.save_plot(name, fig, out)


if __name__ == "__main__":
    raise SystemExit(main())
