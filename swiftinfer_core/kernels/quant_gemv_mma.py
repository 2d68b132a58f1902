"""Batch-1 int4 GEMV on the tensor cores: y [1, N] = x [1, K] @ W^T, the weights
dequantised by packed integer tricks into 16-bit MMA operands.

Why: the float32 GEMV (kernels/quant_gemv.py) executes about 7 thread instructions per
weight (Nsight Compute on an H100: 11.0 M warp instructions for the 50 M weights of
Llama-2-7B's qkv, bench/results/ncu_gemv_int4_h100.txt): per nibble a shift-and-mask,
a float fma to decode it and a float fma to multiply it by x, plus x's loads and
their index math. Here the multiply-accumulate goes to the MMA (x padded to 16
columns, of which one is real: tensor-core work is cheap next to the bytes) and
the decode to packed 16-bit math: per int32 word (8 weights) three shifts, four
``lop3`` that mask two nibbles and or in the exponent of 128 (bf16; 1024 for fp16)
at once, and four packed fmas that subtract 136 (1032): ~1.4 instructions per weight
(~1.1 for fp16), every value exact (n - 8 in [-8, 7]).

Same format as the float32 kernel (model/quant.py, symmetric int4, nibble-planar
blocks: nibble i of word j of block b is column 32 b + 4 i + j). A K step is 4
packed blocks = 128 columns = 16 words per row; nibble position i of the step's
words is one [BLOCK_N, 16] operand against x's matching 16 columns as a [16, 16]
operand (x in column 0, zeros elsewhere), so 8 dots per step. A step lies inside one
group (group a multiple of 128), so its float32 partial product is multiplied by the
step's scale per row. Split-K as kernels/quant_common.py. Shapes fix the grid.

Needs bf16 or fp16 activations and a group that is a multiple of 128 (the symmetric
format); :func:`supported` says so, and the caller keeps the float32 kernel otherwise.
Under the CPU interpreter (FAST=False) the nibbles decode with plain integer ops and
the dots run in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels import quant_configs
from swiftinfer_core.kernels.quant_common import check_operands, check_out, int4_shape, split_buffers, splitk_store
from swiftinfer_core.kernels.triton_common import dot_precision, interpreting, mma_dtype, sm_count

STEP_BLOCKS = 4  # packed 32-column blocks per K step: 128 columns, 16 words per row (tl.dot's K >= 16)

# $8: one int32 word; $0..$7: its nibbles 0..7 minus 8 as 16-bit floats. Each lop3 keeps
# nibbles i and i + 4 (the word's two halves) and ors in the exponent of MAGIC; the packed
# fma subtracts MAGIC + 8. 0xEA is lop3's truth table for (a & b) | c.
_DEQUANT = (
    "{ .reg .b32 t0, t1, t2, t3, one, bias;\n"
    "mov.b32 one, ONE; mov.b32 bias, BIAS;\n"
    "lop3.b32 t0, $8, 0x000F000F, MAGIC, 0xEA;\n"
    "shr.u32 t1, $8, 4; lop3.b32 t1, t1, 0x000F000F, MAGIC, 0xEA;\n"
    "shr.u32 t2, $8, 8; lop3.b32 t2, t2, 0x000F000F, MAGIC, 0xEA;\n"
    "shr.u32 t3, $8, 12; lop3.b32 t3, t3, 0x000F000F, MAGIC, 0xEA;\n"
    "fma.rn.TY t0, t0, one, bias; fma.rn.TY t1, t1, one, bias;\n"
    "fma.rn.TY t2, t2, one, bias; fma.rn.TY t3, t3, one, bias;\n"
    "mov.b32 {$0, $4}, t0; mov.b32 {$1, $5}, t1; mov.b32 {$2, $6}, t2; mov.b32 {$3, $7}, t3; }"
)
# bf16: 0x4300 | n = 128 + n, 0xC308 = -136; fp16: 0x6400 | n = 1024 + n, 0xE408 = -1032
DEQUANT_BF16 = tl.constexpr(_DEQUANT.replace("MAGIC", "0x43004300").replace("ONE", "0x3F803F80").replace("BIAS", "0xC308C308")
                            .replace("TY", "bf16x2"))
DEQUANT_F16 = tl.constexpr(_DEQUANT.replace("MAGIC", "0x64006400").replace("ONE", "0x3C003C00").replace("BIAS", "0xE408E408")
                           .replace("TY", "f16x2"))


def supported(x: torch.Tensor, group: int, zero_point: bool) -> bool:
    """Whether this kernel runs the product (else the float32 GEMV does)."""
    return x.dtype in (torch.bfloat16, torch.float16) and group % (32 * STEP_BLOCKS) == 0 and not zero_point


@triton.jit
def _nibbles(w, MMA: tl.constexpr, FAST: tl.constexpr):
    """int32 words w [...] -> their 8 nibbles minus 8, each [...] in MMA's dtype (exact)."""
    if FAST:
        if MMA == tl.bfloat16:
            return tl.inline_asm_elementwise(DEQUANT_BF16, "=h,=h,=h,=h,=h,=h,=h,=h,r", [w], dtype=(tl.bfloat16,) * 8,
                                             is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(DEQUANT_F16, "=h,=h,=h,=h,=h,=h,=h,=h,r", [w], dtype=(tl.float16,) * 8,
                                             is_pure=True, pack=1)
    else:
        return (((w & 0xF) - 8).to(MMA), (((w >> 4) & 0xF) - 8).to(MMA), (((w >> 8) & 0xF) - 8).to(MMA),
                (((w >> 12) & 0xF) - 8).to(MMA), (((w >> 16) & 0xF) - 8).to(MMA), (((w >> 20) & 0xF) - 8).to(MMA),
                (((w >> 24) & 0xF) - 8).to(MMA), (((w >> 28) & 0xF) - 8).to(MMA))


@triton.jit
def _step_operand(q0, q1, q2, q3, q4, q5, q6, q7, BLOCK_N: tl.constexpr):
    """The 8 nibble tensors [BLOCK_N, 16] of a step -> one [BLOCK_N, 128] operand whose
    column 8 w + p holds nibble ORDER[p] of word w, ORDER = 0 4 1 5 2 6 3 7: nibbles i
    and i + 4 come out of the dequantisation packed in one register, and side by side
    along K they are one register of the MMA's operand too."""
    lo = tl.join(tl.join(q0, q2), tl.join(q1, q3))  # [BLOCK_N, 16, 2, 2]
    hi = tl.join(tl.join(q4, q6), tl.join(q5, q7))
    return tl.join(lo, hi).reshape(BLOCK_N, 128)  # [n, w, a, b, c] = nibble 2 a + b + 4 c -> column 8 w + 4 a + 2 b + c


@triton.jit
def _x_offsets():
    """[128] column of x, relative to the step's first, for operand column 8 w + p."""
    kk = tl.arange(0, 128)
    w = kk // 8
    p = kk % 8
    nib = 2 * (p // 4) + (p // 2) % 2 + 4 * (p % 2)  # ORDER[p]: p = 4 a + 2 b + c -> 2 a + b + 4 c
    return 32 * (w // 4) + 4 * nib + w % 4


@triton.jit
def _gemv_int4_mma_kernel(
    X, Q, S, Y, WS, CNT, N, K, KB, NG, STEPS, SPLIT,
    BPG: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr, MMA: tl.constexpr, PREC: tl.constexpr,
    FAST: tl.constexpr, PREFETCH_X: tl.constexpr,
):
    NBK: tl.constexpr = 4  # STEP_BLOCKS
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    n64 = rn.to(tl.int64)
    q_rows = Q + n64[:, None] * (KB * 4)
    cw = tl.arange(0, 4 * NBK)  # the step's 16 words of a row
    x_off = _x_offsets()  # [128]
    col = tl.arange(0, 16)
    b_start = tl.program_id(1) * STEPS * NBK
    b_end = tl.minimum(b_start + STEPS * NBK, KB)
    acc = tl.zeros([BLOCK_N, 16], tl.float32)
    kx = b_start * 32 + x_off
    xv = tl.load(X + kx, mask=(kx < K) & (kx < b_end * 32), other=0.0)  # [128]: the first step's x
    for b0 in tl.range(b_start, b_end, NBK, num_stages=STAGES):
        bmask = b0 + cw // 4 < b_end
        w = tl.load(q_rows + b0 * 4 + cw[None, :], mask=nmask[:, None] & bmask[None, :], other=0)  # [BLOCK_N, 16] int32
        q0, q1, q2, q3, q4, q5, q6, q7 = _nibbles(w, MMA, FAST)
        xt = tl.where(col[None, :] == 0, xv[:, None], 0.0).to(MMA)  # [128, 16]: x in the padded batch's column 0
        if PREFETCH_X:  # the next step's x, loaded a step ahead (the pipeliner stages only the weights)
            kx = (b0 + NBK) * 32 + x_off
            xv = tl.load(X + kx, mask=(kx < K) & (kx < b_end * 32), other=0.0)
        else:
            kx = b0 * 32 + x_off
            xt = tl.where(col[None, :] == 0, tl.load(X + kx, mask=(kx < K) & (kx < b_end * 32), other=0.0)[:, None], 0.0).to(MMA)
        part = tl.dot(_step_operand(q0, q1, q2, q3, q4, q5, q6, q7, BLOCK_N), xt, input_precision=PREC)
        s = tl.load(S + n64 * NG + b0 // BPG, mask=nmask, other=0.0).to(tl.float32)  # the step's group scale per row
        acc += part * s[:, None]
    y = tl.sum(tl.where(col[None, :] == 0, acc, 0.0), 1)  # column 0: the one real batch row
    splitk_store(y, Y, rn, WS, rn, nmask, CNT, tl.program_id(0), tl.program_id(1), SPLIT, N)


def gemv_int4_mma(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, k: int, group: int,
                  out: torch.Tensor | None = None, cfg: dict | None = None) -> torch.Tensor:
    """x [1, K] bf16/fp16, packed uint8 [N, Kp/2], scales [N, Kp/group] (group a multiple
    of 128) -> y [1, N] in x's dtype. cfg: block_n, warps, stages, waves, optional
    prefetch_x (default True: x loaded a step ahead) (default: the table's "int4_mma"
    batch-1 entry)."""
    n, ng = int4_shape(packed, scales, k, group)
    if x.dim() != 2 or x.shape[0] != 1 or x.shape[1] != k or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous [1, {k}] tensor, got {tuple(x.shape)}")
    check_operands(x, packed, scales)
    if not supported(x, group, False):
        raise ValueError(f"the MMA GEMV needs bf16/fp16 x and a group multiple of 128, got {x.dtype}, group {group}")
    out = check_out(out, 1, n, x)
    cfg = cfg or quant_configs.config("int4_mma", 1, n, k)
    kb = ng * group // 32
    tiles = triton.cdiv(n, cfg["block_n"])
    split, per = quant_configs.pick_split(tiles, triton.cdiv(kb, STEP_BLOCKS), sm_count(x.device), cfg["waves"])
    ws, cnt = split_buffers(x.device, split, 1, n, tiles)
    _gemv_int4_mma_kernel[(tiles, split)](
        x, packed.view(torch.int32), scales, out, ws, cnt, n, k, kb, ng, per, split,
        BPG=group // 32, BLOCK_N=cfg["block_n"], STAGES=cfg["stages"], MMA=mma_dtype(x.dtype),
        PREC=dot_precision(x.dtype), FAST=not interpreting(), PREFETCH_X=cfg.get("prefetch_x", True), num_warps=cfg["warps"],
    )
    return out
