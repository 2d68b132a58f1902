"""FP8 (e4m3) weight quality on the real default model, EMULATED on the CPU:
StreamingLLM perplexity over the plays against float32.

The CPU has no FP8 arithmetic, and the engine refuses 'fp8' there, so this does
not run the engine's FP8 kernels. It reproduces their numbers in float32: every
linear layer's weight is quantized by model/fp8.py exactly as at engine load
(e4m3, one float32 scale per output channel, amax / 448) and dequantized back to
float32, and the model runs in float32 through the engine's own cache and
attention (swiftinfer_core/eval/ppl.py, mode streaming, chunked prefill):

  fp8 weights                 weight-only: the GEMV's numbers (kernels/fp8_gemv.py:
                              one-token decode) and the Triton GEMM fallback's
  fp8 weights + activations   also each activation row rounded to e4m3 over its own
                              scale before every product: the numbers of the
                              _scaled_mm path (kernels/fp8_scaled_mm.py), which the
                              GPU takes for batches and prefill chunks in bf16

The LM head stays float32 as under the engine's default for 'fp8' (lm_head_fp32
None -> true); "head fp8 too" quantizes it as well. What this leaves out: the
GPU runs its activations in bf16, not float32 (bf16 against float32 alone is
tests/engine/test_gpu_engine.py's check), and its summation order.

    python bench/fp8_quality_cpu.py --tokens 6000 --windows 256 1020 \
        --json bench/results/fp8_quality_cpu_emulated.json
    python bench/fp8_quality_cpu.py --tokens 3000 --windows 256 --sensitivity \
        --json bench/results/fp8_quality_cpu_emulated_sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import header  # noqa: E402
from bench.shakespeare import build_corpus  # noqa: E402
from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.engine.engine_model import build_engine_model  # noqa: E402
from swiftinfer_core.eval.ppl import EvalPlan, Mode, evaluate  # noqa: E402
from swiftinfer_core.model.fetch import models_home  # noqa: E402
from swiftinfer_core.model.fp8 import dequantize_fp8, quantize_fp8  # noqa: E402
from swiftinfer_core.model.linear_slots import linear_slots  # noqa: E402


class EmulatedFp8Linear(nn.Module):
    """float32 stand-in for model/fp8_linear.Fp8Linear: x @ dequantized^T, with
    ``quantize_x`` x's rows first rounded to e4m3 over their own scales."""

    in_dtype = torch.float32

    def __init__(self, linear: nn.Linear, quantize_x: bool):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", dequantize_fp8(*quantize_fp8(linear.weight)))  # [N, K] float32
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.quantize_x = quantize_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float()  # [M, K]
        if self.quantize_x:
            x2 = dequantize_fp8(*quantize_fp8(x2))
        return F.linear(x2, self.weight, self.bias).view(*x.shape[:-1], self.out_features)


def emulate(model: nn.Module, quantize_x: bool, head: bool, keep: tuple[str, ...] = ()) -> int:
    """Every nn.Linear (the head when ``head``) to EmulatedFp8Linear, except those named in ``keep``."""
    targets = [slot for slot in linear_slots(model, head) if slot.name not in keep]
    for parent, _, name, child in targets:
        setattr(parent, name, EmulatedFp8Linear(child, quantize_x))
    return len(targets)


VARIANTS = {  # name -> (quantize_x, head), None: float32
    "float32": None,
    "fp8 weights (emulated)": (False, False),
    "fp8 weights + fp8 activations per row (emulated _scaled_mm path)": (True, False),
    "fp8 weights, head fp8 too (emulated)": (False, True),
}
# --sensitivity: which kind of layer costs most; each variant keeps one kind (model/llama.py Block) in float32
SENSITIVITY = {f"fp8 weights except {kind} (float32)": (False, False, (kind,)) for kind in ("wqkv", "wo", "w13", "w2")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=6000)
    ap.add_argument("--windows", type=int, nargs="+", default=[256, 1020])
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--sensitivity", action="store_true", help="fp8 weights with one layer kind kept in float32, each in turn")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    variants = {**VARIANTS, **SENSITIVITY} if a.sensitivity else VARIANTS
    names = ["float32"] + ([v for v in a.variants if v != "float32"] if not a.sensitivity else
                           ["fp8 weights (emulated)", *SENSITIVITY])
    text = build_corpus(models_home().parent / "shakespeare.txt").read_text(encoding="utf-8")
    text = text[text.find("ACT") :]  # skip the Gutenberg header: start at the first play's text
    out = {**header(), "note": "EMULATED on the CPU: fp8 weights (and activations) quantized and dequantized to float32 "
           "by model/fp8.py; the model runs in float32, not the GPU's FP8 kernels", "tokens": a.tokens,
           "mode": "streaming (StreamingLLM), chunked prefill of 512", "results": {}}
    ref: dict[int, float] = {}
    for name in names:
        cfg = EngineConfig(device="cpu", sink_tokens=a.sinks, window=max(a.windows), max_sessions=1)
        m = build_engine_model(cfg)
        ids = m.tokenizer(text[: a.tokens * 8], add_special_tokens=False).input_ids[: a.tokens]
        if variants[name] is not None:
            emulate(m.model, *variants[name])
        rows = {}
        for w in a.windows:
            t0 = time.perf_counter()
            res = evaluate(m, cfg, ids, [Mode.STREAMING], EvalPlan(sinks=a.sinks, window=w))[Mode.STREAMING]
            ppl = res.ppl()
            ref.setdefault(w, ppl)
            rows[f"{a.sinks}+{w}"] = {"ppl": ppl, "ratio_vs_float32": ppl / ref[w], "scored_tokens": len(res.nll),
                                      "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{name:<70} {a.sinks}+{w}: ppl {ppl:.4f} (x{ppl / ref[w]:.4f})", flush=True)
        out["results"][name] = rows
        if a.json:  # after every variant: a cut-short run keeps what finished
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
