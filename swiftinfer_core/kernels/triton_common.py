"""What the Triton kernels share: the operand dtype and precision of tl.dot (the
CPU interpreter needs float32), the score transform (scale, soft-cap), the SM
count that sizes split-K grids, and the padded head dim the tiles use."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def score(dot, scale_log2, SCALE_CAP, CAP_LOG2, HAS_CAP: tl.constexpr):
    """Raw q.k -> log2-domain score; with HAS_CAP the soft-cap
    cap * tanh(scale * q.k / cap) (tanh from exp: any backend, the interpreter too)."""
    if HAS_CAP:
        e = tl.exp(2.0 * dot * SCALE_CAP)
        return CAP_LOG2 * (1.0 - 2.0 / (e + 1.0))
    else:
        return dot * scale_log2


_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}
LOG2E = 1.4426950408889634


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def mma_dtype(dtype: torch.dtype):
    """Operand type for tl.dot. The CPU interpreter (triton 3.9) computes bf16
    tl.dot wrongly, so there every dot runs in float32."""
    return tl.float32 if interpreting() else _TL[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    """float32 caches get true float32 dots (not tf32); bf16/fp16 ignore it."""
    return "ieee" if dtype == torch.float32 or interpreting() else "tf32"


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8


def padded(D: int) -> int:
    """Head dim as the kernels tile it: the next power of two (80, 96 -> 128), at least 32."""
    return max(32, triton.next_power_of_2(D))
