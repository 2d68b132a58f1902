"""Shared pieces of the weight-only quantized kernels (kernels/quant_gemv.py,
kernels/quant_gemm.py): operand checks, integer -> float conversion without the
slow converter, and the split-K fix-up.

Integer -> float. A GPU converts int -> float32 on a quarter-rate unit (16 per
clock per SM on Hopper), which alone would cap a 4-bit GEMV below half of its
bandwidth roofline. Instead the bits go straight into a float's mantissa: a
field of the int32 word at bits p.. and'ed out together with 1.0f's bits is
f = 1 + v 2^(p-23), and fma(f, 2^(23-p), -(2^(23-p) + offset)) = v - offset = q
  int4   nibble v = q + 8 at p = 0..16 in place; nibbles 5..7 from w >> 16 (at 4..12)
  int8   byte v = q + 128 (sign bits flipped) at p = 0 or 8; bytes 2, 3 from w >> 16
Exact (q is an integer the fma's single rounding leaves alone), and cheap: the or
with 1.0f's bits (and the shifts) are done once per word, then each weight costs
one and with a single immediate (field mask | 1.0f's bits) and one fma.

Split-K. When the output tiles alone give too few programs for the GPU, each
tile's K range is cut into SPLIT parts (program axis 1). Each part stores its
float32 partial tile into a workspace [SPLIT, M*N], then bumps the tile's arrival
counter; the part that arrives last sums the SPLIT partials in a fixed order
(deterministic), writes y in its dtype and resets the counter to 0. So one
launch, no memset, no second kernel; the counters start at zero and end at zero
(CUDA-graph safe). A barrier before the (single-thread, acq_rel, GPU-scope)
counter atomic publishes every thread's partial, as cooperative groups' grid
sync does; the last part reads the partials from L2 (.cg).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels import quant_configs
from swiftinfer_core.kernels.triton_common import sm_count

ONE_BITS = tl.constexpr(0x3F800000)  # 1.0f
SIGNS = tl.constexpr(-2139062144)  # 0x80808080 as int32: the sign bit of each byte


@triton.jit
def int8_sources(w):
    """int32 words w of 4 int8 each -> (u, u_hi) for int8_byte: the signs flipped
    (byte = q + 128) and or'ed with 1.0f's bits, in place and shifted down by 16."""
    t = w ^ SIGNS
    return t | ONE_BITS, (t >> 16) | ONE_BITS


@triton.jit
def int8_byte(u, u_hi, B: tl.constexpr):
    """q (float32, exact) of byte B of the words behind int8_sources' (u, u_hi):
    f = 1 + (q + 128) 2^(p-23) for the byte at bits p = 0 or 8, then one fma."""
    if B == 0:
        f = (u & 0x3F8000FF).to(tl.float32, bitcast=True)
        A: tl.constexpr = 8388608.0  # 2^23
    elif B == 1:
        f = (u & 0x3F80FF00).to(tl.float32, bitcast=True)
        A: tl.constexpr = 32768.0  # 2^15
    elif B == 2:
        f = (u_hi & 0x3F8000FF).to(tl.float32, bitcast=True)
        A: tl.constexpr = 8388608.0
    else:
        f = (u_hi & 0x3F80FF00).to(tl.float32, bitcast=True)
        A: tl.constexpr = 32768.0
    return tl.fma(f, A, -(A + 128.0))


@triton.jit
def int4_sources(w):
    """The int32 words w -> (u, u_hi) for int4_nibble: w and w >> 16, each or'ed
    with 1.0f's bits. 3 integer ops per word, shared by its 8 nibbles."""
    return w | ONE_BITS, (w >> 16) | ONE_BITS


@triton.jit
def int4_nibble(u, u_hi, I: tl.constexpr):
    """q (float32, exact) of nibble I of the words behind int4_sources' (u, u_hi).

    One and with one immediate (the nibble's bits | 1.0f's bits, which the sources
    already carry) gives f = 1 + n 2^(p-23); one fma gives n - 8. The mask and the
    float's bits share the and's single immediate slot, so no constant has to sit
    in (or be rematerialised into) a register per use."""
    if I == 0:
        f = (u & 0x3F80000F).to(tl.float32, bitcast=True)
        A: tl.constexpr = 8388608.0  # 2^(23-0)
    elif I == 1:
        f = (u & 0x3F8000F0).to(tl.float32, bitcast=True)
        A: tl.constexpr = 524288.0
    elif I == 2:
        f = (u & 0x3F800F00).to(tl.float32, bitcast=True)
        A: tl.constexpr = 32768.0  # 2^(23-8)
    elif I == 3:
        f = (u & 0x3F80F000).to(tl.float32, bitcast=True)
        A: tl.constexpr = 2048.0  # 2^(23-12)
    elif I == 4:
        f = (u & 0x3F8F0000).to(tl.float32, bitcast=True)
        A: tl.constexpr = 128.0  # 2^(23-16)
    elif I == 5:
        f = (u_hi & 0x3F8000F0).to(tl.float32, bitcast=True)
        A: tl.constexpr = 524288.0
    elif I == 6:
        f = (u_hi & 0x3F800F00).to(tl.float32, bitcast=True)
        A: tl.constexpr = 32768.0
    else:
        f = (u_hi & 0x3F80F000).to(tl.float32, bitcast=True)
        A: tl.constexpr = 2048.0
    return tl.fma(f, A, -(A + 8.0))  # f = 1 + n / A  ->  n - 8


@triton.jit
def gemm_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A batched GEMM program's (tile id, pid_k, rm, rn) (grid: output tiles x split-K parts):
    tiles n-major, so the programs sharing a weight tile run together."""
    tile = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    pid_n = tile // tiles_m
    pid_m = tile % tiles_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return tile, tl.program_id(1), rm, rn


@triton.jit
def gemv_tile(Q, N, KB, STEPS, BLOCK_N: tl.constexpr, NB: tl.constexpr):
    """A batch-1 GEMV program's share (grid: row tiles x split-K parts): its rows [BLOCK_N]
    and their mask, the rows' packed-block pointers (KB blocks of 4 int32 words per row)
    and its part's block range [b_start, b_end) (STEPS steps of NB blocks)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    q_rows = Q + rows.to(tl.int64)[:, None, None] * (KB * 4)  # [BLOCK_N, 1, 1]
    b_start = tl.program_id(1) * STEPS * NB
    return rows, rows < N, q_rows, b_start, tl.minimum(b_start + STEPS * NB, KB)


@triton.jit
def prefetch_l2(Q, rows, N, blk, KB):
    """Ask L2 for the lines holding packed blocks blk [NB] of rows [BLOCK_N] (clamped into the
    weight, so every address is valid; one prefetch per 4 blocks = 64 bytes) without waiting:
    a kernel that may not read its input yet (programmatic dependent launch) can still start
    its weight stream while the previous kernel drains."""
    r = tl.minimum(rows, N - 1).to(tl.int64)
    b = tl.minimum(blk, KB - 1)
    ptrs = Q + r[:, None] * (KB * 4) + (b * 4)[None, :]
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def load_block_words(q_rows, rmask, blk, bmask, CG: tl.constexpr = False):
    """The 4 int32 words (16 contiguous bytes) of packed blocks blk [NB] of every row of
    gemv_tile's q_rows -> [BLOCK_N, NB, 4]; 0 outside rmask / bmask. CG: cached in L2
    only (.cg), so the words, each read once, leave L1 to the x pieces every step rereads."""
    ptrs = q_rows + (blk * 4)[None, :, None] + tl.arange(0, 4)[None, None, :]
    mask = rmask[:, None, None] & bmask[None, :, None]
    if CG:
        return tl.load(ptrs, mask=mask, other=0, cache_modifier=".cg")
    return tl.load(ptrs, mask=mask, other=0)


@triton.jit
def splitk_store(acc, Y, y_offs, WS, ws_offs, mask, CNT, tile, pid_k, SPLIT, MN):
    """Store a program's float32 tile ``acc``: into y directly (SPLIT == 1) or via
    the workspace and the last-arriving part (see the module doc). y_offs and
    ws_offs: acc-shaped offsets into Y and into one [M*N] slice of WS."""
    if SPLIT == 1:
        tl.store(Y + y_offs, acc.to(Y.dtype.element_ty), mask=mask)
    else:
        tl.store(WS + pid_k * MN + ws_offs, acc, mask=mask)
        if splitk_arrive(CNT, tile, SPLIT):
            splitk_sum(Y, y_offs, WS, ws_offs, mask, SPLIT, MN)
            splitk_release(CNT, tile)


@triton.jit
def splitk_arrive(CNT, tile, SPLIT):
    """After a part has stored its partials: count its arrival at ``tile``; True for the last part."""
    tl.debug_barrier()  # every thread's partial is written before the arrival
    return tl.atomic_add(CNT + tile, 1, sem="acq_rel") == SPLIT - 1


@triton.jit
def splitk_sum(Y, y_offs, WS, ws_offs, mask, SPLIT, MN):
    """The last part: y = the SPLIT partials at ws_offs summed in order, stored in Y's dtype."""
    tot = tl.load(WS + ws_offs, mask=mask, other=0.0, cache_modifier=".cg")
    for s in range(1, SPLIT):
        tot += tl.load(WS + s * MN + ws_offs, mask=mask, other=0.0, cache_modifier=".cg")
    tl.store(Y + y_offs, tot.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def splitk_release(CNT, tile):
    tl.atomic_xchg(CNT + tile, 0)  # ready for the next launch


_COUNTERS: dict[torch.device, torch.Tensor] = {}
_KEEP: list[torch.Tensor] = []  # replaced counter buffers: graphs captured with them still use them
_MIN_COUNTERS = 1 << 16


def gemm_prepare(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, k: int, out, n: int, fmt: str, cfg):
    """A batched GEMM's checked operands: (M, out [M, n], cfg with block_m), x [M, k] with contiguous
    rows; cfg None: quant_configs' for ``fmt`` at this shape."""
    if x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1:
        raise ValueError(f"x must be [M, {k}] with contiguous rows, got {tuple(x.shape)}")
    check_operands(x, q, scales)
    m = x.shape[0]
    out = check_out(out, m, n, x)
    cfg = dict(cfg or quant_configs.config(fmt, m, n, k))
    cfg.setdefault("block_m", min(128, max(16, triton.next_power_of_2(m))))
    return m, out, cfg


def gemm_split(x: torch.Tensor, m: int, n: int, steps: int, cfg: dict):
    """A batched GEMM launch's (grid, split, steps per split, workspace, counters) for ``steps`` K
    steps: cfg's tiles (block_m x block_n) cut along K until >= cfg["waves"] x SMs programs."""
    tiles = triton.cdiv(m, cfg["block_m"]) * triton.cdiv(n, cfg["block_n"])
    split, per = quant_configs.pick_split(tiles, steps, sm_count(x.device), cfg["waves"])
    ws, cnt = split_buffers(x.device, split, m, n, tiles)
    return (tiles, split), split, per, ws, cnt


def split_buffers(device: torch.device, split: int, m: int, n: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(workspace float32 [split, m*n], counters int32 [>= tiles], all zero) for a
    split-K launch; with split == 1 the kernel touches neither, and both are the
    counters (no allocation per call).

    The counters are shared by every launch on the device (each leaves them zero),
    so split-K launches must not run concurrently on two streams. A first use
    inside a CUDA-graph capture gets fresh zeros recorded in the graph (a memset
    node) rather than a cached buffer whose zeroing the capture would not run."""
    cnt = _COUNTERS.get(device)
    if cnt is None or cnt.numel() < tiles:
        fresh = torch.zeros(max(tiles, _MIN_COUNTERS), dtype=torch.int32, device=device)
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            cnt = fresh
        else:
            if cnt is not None:
                _KEEP.append(cnt)
            _COUNTERS[device] = cnt = fresh
    if split == 1:
        return cnt.view(torch.float32), cnt
    return torch.empty((split, m * n), dtype=torch.float32, device=device), cnt


def int8_shape(q: torch.Tensor, scales: torch.Tensor, k: int) -> int:
    """N of int8 weights q [N, K16] (K rounded up to 16) with scales [N]; ValueError if not."""
    n, k16 = q.shape
    if q.dtype != torch.int8 or scales.shape != (n,) or k16 != -(-k // 16) * 16:
        raise ValueError(f"int8 weights for K={k} must be int8 [N, {-(-k // 16) * 16}] with scales [N]; "
                         f"got {q.dtype} {tuple(q.shape)} and {tuple(scales.shape)}")
    return n


def int4_shape(packed: torch.Tensor, scales: torch.Tensor, k: int, group: int,
               mins: torch.Tensor | None = None) -> tuple[int, int]:
    """(N, groups) of int4 weights packed uint8 [N, Kp/2] with scales [N, Kp/group]
    (and, with zero points, mins of the scales' shape); ValueError if not."""
    n, half = packed.shape
    ng = -(-k // group)
    if packed.dtype != torch.uint8 or 2 * half != ng * group or scales.shape != (n, ng) or group % 32:
        raise ValueError(f"int4 weights for K={k}, group {group}: uint8 [N, {ng * group // 2}] and scales [N, {ng}]; "
                         f"got {packed.dtype} {tuple(packed.shape)} and {tuple(scales.shape)}")
    if mins is not None and (mins.shape != (n, ng) or not mins.is_floating_point()):
        raise ValueError(f"int4 zero-point mins must be float [N, {ng}] like the scales, got {mins.dtype} {tuple(mins.shape)}")
    return n, ng


def int4_table(zero_point: bool) -> str:
    """kernels/quant_configs.py's table for int4 weights with or without zero points."""
    return "int4_zp" if zero_point else "int4"


def check_operands(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> None:
    if not (q.is_contiguous() and scales.is_contiguous()) or q.device != x.device or scales.device != x.device:
        raise ValueError("weights and scales must be contiguous and on x's device")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"activations must be float32, bfloat16 or float16, got {x.dtype}")


def check_out(out: torch.Tensor | None, m: int, n: int, x: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty((m, n), dtype=x.dtype, device=x.device)
    if out.shape != (m, n) or out.stride(1) != 1 or out.device != x.device:
        raise ValueError(f"out must be [{m}, {n}] with contiguous rows on x's device, got {tuple(out.shape)}")
    return out
