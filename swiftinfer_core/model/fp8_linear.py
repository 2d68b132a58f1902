"""Fp8Linear: an nn.Linear replacement over FP8 (e4m3) weights with per-channel scales.

The weight is quantized once, at load, from the layer's float weight
(model/fp8.py: q float8_e4m3fn [N, K], scale float32 [N]); the float weight is
dropped. Activations stay in the model's dtype (``in_dtype``, the replaced
weight's dtype) and the output comes back in it. Which kernel multiplies
depends on the rows, as for int8/int4 (model/quant_linear.py):

  1 row (batch-1 decode)  kernels/fp8_gemv.py: weight-only, x unchanged
  M > 1 rows              ``batched`` = "scaled_mm": from SCALED_MM_MIN_ROWS rows
                          kernels/fp8_scaled_mm.py, x quantized per row to e4m3
                          (``act_terms`` 2: plus a second e4m3 row of the remainder),
                          torch._scaled_mm on FP8 tensor cores (bf16 activations,
                          K and N multiples of 16, the op working on this device:
                          checked at load); fewer rows take "triton"'s GEMM;
                          "triton": kernels/fp8_gemm.py, split-K, weight-only (the
                          fallback where _scaled_mm cannot run, and the CPU
                          interpreter of the tests); "dequant": weight-only,
                          the weight cast to x's dtype DEQUANT_MIB MiB of rows
                          at a time and multiplied by cuBLAS
                          (kernels/quant_dequant.py; 0.36-0.48x of bf16 on an H100,
                          slower than "triton" at every batch measured)

Every path has static shapes and no host syncs, so the engine's CUDA graphs
capture it. The engine builds this on CUDA only (runner/build.py refuses other
devices and GPUs before compute capability 8.9); on the CPU it runs under
Triton's interpreter, for tests.
"""

from __future__ import annotations

import torch
from torch import nn

from swiftinfer_core.model.fp8 import dequantize_fp8, quantize_fp8
from swiftinfer_core.model.linear_slots import linear_slots

BATCHED = ("scaled_mm", "triton", "dequant")
DEQUANT_MIB = 16  # one dequantised chunk: fits the L2 of an H100 (50 MB) and an H200 (60 MB) with room
# Below this many rows "scaled_mm" layers take the split-K GEMM. Llama-2-7B and 3.1-8B shapes on an
# H100 (bench/results/fp8_decode_crossover_h100.json, one run, step time against bf16's): the GEMM
# 1.57-1.58x at 8 rows, 1.47-1.50x at 32, 1.25-1.38x at 64, 0.74-0.80x at 96; _scaled_mm 1.13-1.16x
# at 8, 1.16-1.18x at 32, 1.19-1.23x at 64, 1.23-1.29x at 96, 1.27-1.30x at 128.
SCALED_MM_MIN_ROWS = 65


class Fp8Linear(nn.Module):
    """FP8 weight linear: x [..., K] -> [..., N] in the replaced weight's dtype."""

    def __init__(self, linear: nn.Linear, batched: str | None = None, qw=None, act_terms: int = 1):
        """``qw``: a model/quant.QuantizedWeight of format FP8 already chosen for this
        layer (model/quant_search.py's GPTQ rounding); None: round to nearest here.
        ``act_terms``: e4m3 terms per activation row on the _scaled_mm path (1 or 2,
        kernels/fp8_scaled_mm.py two_terms)."""
        super().__init__()
        w = linear.weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.in_dtype = w.dtype
        if qw is None:
            q, scale = quantize_fp8(w)
        elif qw.fmt.value != "fp8" or tuple(qw.qweight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"precomputed weight {qw.fmt.value} {tuple(qw.qweight.shape)} does not fit this fp8 layer "
                             f"[{self.out_features}, {self.in_features}]")
        else:
            q, scale = qw.qweight.to(w.device).contiguous(), qw.scales.to(w.device, torch.float32)
        self.register_buffer("qweight", q)  # float8_e4m3fn [N, K]
        self.register_buffer("scales", scale)  # float32 [N]
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(w.dtype).clone())
        if batched is None:
            from swiftinfer_core.kernels import fp8_scaled_mm  # needs triton

            ok = fp8_scaled_mm.supported(w.dtype, self.out_features, self.in_features, w.device)
            batched = "scaled_mm" if ok else "triton"
        if batched not in BATCHED:
            raise ValueError(f"batched must be one of {BATCHED}, got {batched!r}")
        if act_terms not in (1, 2):
            raise ValueError(f"act_terms must be 1 or 2, got {act_terms!r}")
        self.batched, self.act_terms = batched, act_terms

    def dequantized(self) -> torch.Tensor:
        """[N, K] float32: the weight this layer multiplies by."""
        return dequantize_fp8(self.qweight, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from swiftinfer_core.kernels import fp8_gemm, fp8_gemv, fp8_scaled_mm, quant_dequant  # need triton

        x2 = x.reshape(-1, self.in_features).contiguous()  # [M, K]
        if x2.shape[0] == 1:
            y = fp8_gemv.gemv_fp8(x2, self.qweight, self.scales)
        elif self.batched == "scaled_mm" and x2.shape[0] >= SCALED_MM_MIN_ROWS:
            y = fp8_scaled_mm.scaled_mm_fp8(x2, self.qweight, self.scales, two_terms=self.act_terms == 2)
        elif self.batched == "dequant":
            out = torch.empty(x2.shape[0], self.out_features, dtype=x2.dtype, device=x2.device)
            y = quant_dequant.matmul("fp8", x2, self.qweight, self.scales, None, self.in_features, 0, out, DEQUANT_MIB)
        else:
            y = fp8_gemm.gemm_fp8(x2, self.qweight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3, batched={self.batched}"
                + (", two-term e4m3 activations" if self.act_terms == 2 else ""))


DOWN = "w2"  # the MLP down projection's attribute in model/llama.py: its input is the SwiGLU product


def quantize_fp8_linears(model: nn.Module, head: bool, batched: str | None = None, weights: dict | None = None,
                         act_terms: int = 1, down_terms: int | None = None) -> int:
    """Replace the decoder's nn.Linear layers (and ``lm_head`` when ``head``) with
    Fp8Linear, in place; returns how many were replaced. ``weights``: qualified name
    -> precomputed QuantizedWeight (model/quant_search.calibrated_weights). ``act_terms``:
    e4m3 terms per activation row of every layer but the down projections, which take
    ``down_terms`` (None: ``act_terms``)."""
    weights = weights or {}
    targets = linear_slots(model, head)
    for parent, qual, name, child in targets:
        terms = down_terms if name == DOWN and down_terms is not None else act_terms
        setattr(parent, name, Fp8Linear(child, batched, weights.get(qual), terms))
    return len(targets)
