"""The float32 LM head on tensor cores: W = hi + lo, two bfloat16 halves (lm_head_fp32 on CUDA).

A float32 [V, H] head has no tensor-core path, so with many rows it is compute
bound: 256 rows x 4096 x 128,256 (Llama-3.1-8B) took 6.8 ms of a 28.7 ms step on
an H200 (bench/results/mixed_step_8b.json), more than all attention but the decode
kernel. Split both operands into a bfloat16 high part and the bfloat16 rounding
of what is left:

    W = W_hi + W_lo + O(2**-16 |W|),   x = x_hi + x_lo + O(2**-16 |x|)
    x W^T ~ x_hi W_hi^T + x_lo W_hi^T + x_hi W_lo^T

Each product of two bfloat16 values is exact in float32, and the GEMMs accumulate
and return float32 (``torch.mm(..., out_dtype=float32)``), so only the dropped
x_lo W_lo^T term (~2**-18 of x W^T) and float32 summation remain: 6e-6 relative
error against float64 on an H200 at the 8B head's shape, where the float32 GEMM
gives 1.1e-6 and a bfloat16 head ~4e-3 (tests/model/test_split_head.py). Bytes stay 4 per weight (hi and
lo are read once each: the two hi products share one GEMM over stacked rows).
"""

from __future__ import annotations

import torch
from torch import nn


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [K, N], bfloat16 operands, float32 accumulation and result. CUDA:
    one cuBLAS GEMM; elsewhere (tests) the same products in float32, where they are exact."""
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def supported(device: torch.device) -> bool:
    """bfloat16 GEMMs with a float32 result: CUDA GPUs with bfloat16 (sm_80+)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


class SplitHead(nn.Module):
    in_dtype = torch.float32  # model/llama.py:in_dtype: the head takes the float32 normed residual

    def __init__(self, weight: torch.Tensor):
        """weight [V, H] float32 (any device); the halves are built on its device."""
        super().__init__()
        w = weight.detach().float()
        hi = w.to(torch.bfloat16)
        self.register_buffer("hi", hi)
        self.register_buffer("lo", (w - hi.float()).to(torch.bfloat16))

    @property
    def out_features(self) -> int:
        return self.hi.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [R, H] float32 -> logits [R, V] float32."""
        xh = x.to(torch.bfloat16)
        xl = (x - xh.float()).to(torch.bfloat16)
        r = x.shape[0]
        both = _mm32(torch.cat([xh, xl]), self.hi.t())  # [2R, V]: x_hi W_hi and x_lo W_hi in one read of W_hi
        return both[:r] + both[r:] + _mm32(xh, self.lo.t())
