"""A Triton GEMV over GGUF blocks kept compact (model/gguf_blocks.py layout):
y [N] = x [K] @ W^T for W [N, K] in Q8_0, Q4_0 or Q4_1, per group of 32 inputs

    y[n] = sum_g s[n, g] * (q[n, g, :] . x[g, :]) + o[n, g] * sum(x[g, :])

(s = d; o = 0 for Q8_0, -8 d for Q4_0, m for Q4_1). One program per BLOCK_N rows
loops over the K / 32 groups: it loads a [BLOCK_N, 16] tile of nibble bytes
(low nibble: inputs 0..15 of the group, high: 16..31) or [BLOCK_N, 32] int8
codes, and the group's f16 scales, and accumulates in float32.

NOT WIRED: quantization 'gguf' stays refused on CUDA (config.py, runner/resolve.py).
This kernel is tested only under Triton's CPU interpreter against a float64
reference (tests/kernels/test_gguf_gemv.py); it has run on no GPU, and is a
first step, not tuned (no split-K, no vector loads, one row of x).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

QTYPES = {"Q8_0": 0, "Q4_0": 1, "Q4_1": 2}


@triton.jit
def _gguf_gemv(x_ptr, qs_ptr, d_ptr, m_ptr, y_ptr, N, K, G, QTYPE: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    j16 = tl.arange(0, 16)
    j32 = tl.arange(0, 32)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for g in range(0, G):
        s = tl.load(d_ptr + rows * G + g, mask=rmask, other=0.0).to(tl.float32)
        if QTYPE == 0:
            q = tl.load(qs_ptr + rows[:, None] * K + g * 32 + j32[None, :], mask=rmask[:, None], other=0).to(tl.float32)
            xg = tl.load(x_ptr + g * 32 + j32).to(tl.float32)
            acc += s * tl.sum(q * xg[None, :], axis=1)
        else:
            b = tl.load(qs_ptr + rows[:, None] * (K // 2) + g * 16 + j16[None, :], mask=rmask[:, None], other=0)
            lo = (b & 0x0F).to(tl.float32)
            hi = (b >> 4).to(tl.float32)
            xlo = tl.load(x_ptr + g * 32 + j16).to(tl.float32)
            xhi = tl.load(x_ptr + g * 32 + 16 + j16).to(tl.float32)
            dot = tl.sum(lo * xlo[None, :], axis=1) + tl.sum(hi * xhi[None, :], axis=1)
            xs = tl.sum(xlo, axis=0) + tl.sum(xhi, axis=0)
            if QTYPE == 1:
                o = -8.0 * s
            else:
                o = tl.load(m_ptr + rows * G + g, mask=rmask, other=0.0).to(tl.float32)
            acc += s * dot + o * xs
    tl.store(y_ptr + rows, acc, mask=rmask)


def gemv_gguf(x: torch.Tensor, qtype: str, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None,
              block_n: int = 32) -> torch.Tensor:
    """x [1, K] float32 -> y [1, N] float32 (module doc); qs/d/m as GGUFBlocks holds them."""
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"gemv_gguf: one row of x, got {tuple(x.shape)}")
    code = QTYPES[qtype]
    K, N = x.shape[1], qs.shape[0]
    if K % 32 or d.shape != (N, K // 32) or qs.shape[1] != (K if code == 0 else K // 2):
        raise ValueError(f"gemv_gguf: x {tuple(x.shape)} does not fit {qtype} qs {tuple(qs.shape)} d {tuple(d.shape)}")
    if (code == 2) != (m is not None):
        raise ValueError("gemv_gguf: m goes with Q4_1 and only then")
    y = torch.empty(1, N, dtype=torch.float32, device=x.device)
    _gguf_gemv[(triton.cdiv(N, block_n),)](x.contiguous(), qs, d, d if m is None else m, y, N, K, K // 32,
                                          QTYPE=code, BLOCK_N=block_n)
    return y
