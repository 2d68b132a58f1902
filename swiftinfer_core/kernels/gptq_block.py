"""GPTQ's column loop over one block of columns in one launch (model/quant_search.round_block's
contract, its torch version the reference).

In torch the loop costs ~6 launches per column: 852k columns at the Llama-3.1-8B shape,
about 120 s of the 141 s an fp8 GPTQ load took on an H200 (bench/results/gptq_load_8b_gpu.json).
Rows are independent inside a block (each row's updates read only itself and the block's
Hinv factor), so one program owns BLOCK_N rows of the block, [BLOCK_N, B] in registers,
and walks the block's columns in order:

    t = w[:, i] / s                  (IEEE division, as torch)
    q = nearest(t) * s               int4: clamp to qmin..7, then round half to even;
                                     fp8: clamp to +-448, then the nearest e4m3 value
    e = (w[:, i] - q) / Hinv[i, i]
    w[:, i:] -= e Hinv[i, i:]

Column i is picked out of the register tile by a masked row sum (exact: one term is
non-zero). The update may contract to an FMA on a GPU, where torch rounds the product
first, so results can differ from torch's in the last bit and then, rarely, in a rounded
value; the tests bound that against a float64 reference. The block's trailing update (a
GEMM) stays in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.kv_fp8_tl import round_e4m3

BLOCK_N = 16  # rows per program; not tuned on a GPU yet


@triton.jit
def _round_block_kernel(W, HINV, S, DEQ, ERR, N, NCOLS, stride_w, stride_h, stride_s, stride_o, QMIN,
                        B: tl.constexpr, BLOCK_N: tl.constexpr, ROW_SCALE: tl.constexpr, FP8: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, B)
    rmask = rows < N
    cmask = cols < NCOLS
    mask = rmask[:, None] & cmask[None, :]
    w = tl.load(W + rows[:, None] * stride_w + cols[None, :], mask=mask, other=0.0)  # [BLOCK_N, B]
    if ROW_SCALE:
        srow = tl.load(S + rows, mask=rmask, other=1.0)  # [BLOCK_N]
        s = srow[:, None] + tl.zeros([BLOCK_N, B], tl.float32)
    else:
        s = tl.load(S + rows[:, None] * stride_s + cols[None, :], mask=mask, other=1.0)
    deq = tl.zeros([BLOCK_N, B], tl.float32)
    err = tl.zeros([BLOCK_N, B], tl.float32)
    for i in range(NCOLS):
        sel = cols == i
        wi = tl.sum(tl.where(sel[None, :], w, 0.0), axis=1)  # [BLOCK_N]
        si = tl.sum(tl.where(sel[None, :], s, 0.0), axis=1)
        t = tl.math.div_rn(wi, si)
        if FP8:
            q = round_e4m3(tl.minimum(tl.maximum(t, -448.0), 448.0))
        else:  # |t| <= 8 after the clamp: adding 1.5 * 2**23 rounds to an integer, ties to even
            q = (tl.minimum(tl.maximum(t, QMIN), 7.0) + 12582912.0) - 12582912.0
        q = q * si
        hrow = tl.load(HINV + i * stride_h + cols, mask=cmask, other=0.0)  # [B]: row i of the factor
        d = tl.sum(tl.where(sel, hrow, 0.0), axis=0)
        e = tl.math.div_rn(wi - q, d + tl.zeros_like(wi))
        w = w - e[:, None] * tl.where(cols >= i, hrow, 0.0)[None, :]
        deq = tl.where(sel[None, :], q[:, None], deq)
        err = tl.where(sel[None, :], e[:, None], err)
    out = rows[:, None] * stride_o + cols[None, :]
    tl.store(DEQ + out, deq, mask=mask)
    tl.store(ERR + out, err, mask=mask)


def round_block(w1: torch.Tensor, hinv1: torch.Tensor, scale1: torch.Tensor, qmin: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """w1 [N, B] float32, hinv1 [B, B] float32, scale1 [N, B] (int4) or [N] (fp8) float32
    -> (dequantized weights, scaled errors), both [N, B] float32; ``qmin`` None: e4m3.
    w1 is read, not written (the torch version uses it as scratch)."""
    n, nc = w1.shape
    w1, hinv1, scale1 = w1.float().contiguous(), hinv1.float().contiguous(), scale1.float().contiguous()
    deq, err = torch.empty_like(w1), torch.empty_like(w1)
    _round_block_kernel[(triton.cdiv(n, BLOCK_N),)](
        w1, hinv1, scale1, deq, err, n, nc, w1.stride(0), hinv1.stride(0), scale1.stride(0) if scale1.dim() == 2 else 0,
        deq.stride(0), float(qmin if qmin is not None else 0), B=max(16, triton.next_power_of_2(nc)), BLOCK_N=BLOCK_N,
        ROW_SCALE=scale1.dim() == 1, FP8=qmin is None)
    return deq, err
