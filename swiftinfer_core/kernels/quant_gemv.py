"""Batch-1 decode GEMV over weight-only quantized weights: y [1, N] = x [1, K] @ W^T.

Batch-1 decode reads every weight once per token, so bytes are the time: int8
halves bf16's bytes, int4 quarters them (plus ~1.6% of bf16 scales at group 128).
The weights are dequantised in registers and never written back; the products
accumulate in float32; y is stored in out's dtype (x's: bf16, fp16 or fp32).

Formats (model/quant.py packs them):
  int8  Q int8 [N, K16] read as int32 words, S [N] (per row); y = S * sum_k Q[n, k] x[k]
        byte-planar blocks of 16 columns: byte t of word j of block b is column 16 b + 4 t + j
  int4  Q uint8 [N, Kp/2] read as int32 words [N, Kp/8], S [N, Kp/G]
        nibble-planar blocks of 32 columns: nibble i of word j of block b is
        column 32 b + 4 i + j; Kp is K rounded up to G, x beyond K reads as 0.
        With zero points (ZP), also MN float16 [N, Kp/G] and w = nibble S + MN:
        per block y += S (q . x_b) + Z sum(x_b), q = nibble - 8 as decoded for the
        symmetric format and Z = MN + 8 S; sum(x_b) is summed from the x pieces
        each thread already holds (shared by its rows), so a block costs one more
        2-byte load and one fma per row, and a thread ~1/rows adds per x element.

Layout for bandwidth. Program (pid_n, pid_k) owns rows [pid_n * BLOCK_N, +BLOCK_N)
and the pid_k-th part of K (split-K, kernels/quant_common.py, when N / BLOCK_N
alone is too few programs for the GPU). Each K step loads a [BLOCK_N, NB, 4] tile
of int32 words whose last axis is 16 contiguous bytes, so every thread issues
16-byte loads and owns whole packed blocks; NB blocks side by side make the step
BLOCK_K = NB * 32 (int4) or NB * 16 (int8) columns wide. The words are split into
their 8 nibbles or 4 bytes by kernels/quant_common.py (one and + one fma each);
each position is a [BLOCK_N, NB, 4] tensor multiplied by its x piece (4
contiguous columns, an 8-byte load), loaded and converted once per thread and
reused for all the rows the thread holds. The per-block sums over the
last axis stay inside a thread; an int4 block's sum is multiplied by its group's
scale (a block never straddles groups); the only cross-thread reduction is the
final sum over the step axis. (Offline sm_90 builds with 4 rows per thread: the
int4 loop is ~4.6 instructions per weight, int8 ~5.7, no shared memory in either;
at 4.6 the H200's issue rate caps int4 near 70% of its HBM roofline. The h2 math
below cut that to 3.5 and measured slower on an H100 (docs/quantization.md), so the
instruction count is not what holds int4 at ~0.3 of its roofline.)
Shapes alone fix the grid, so the launch is CUDA-graph capturable.

Math. A config's "math" picks the symmetric int4 path: "f32" (default, above) or
"h2" (kernels/quant_gemv_h2.py: two weights per instruction on packed half pairs,
fp16 products of power-of-two-scaled x blocks). The zero-point format always takes
the f32 path (h2 has no zero points yet).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels import quant_configs
from swiftinfer_core.kernels.quant_gemv_h2 import gemv_int4_h2_kernel
from swiftinfer_core.kernels.quant_gemv_xres import gemv_int4_xres
from swiftinfer_core.kernels.triton_common import interpreting, sm_count
from swiftinfer_core.kernels.quant_common import (
    check_operands,
    check_out,
    gemv_tile,
    int4_nibble,
    int4_shape,
    int4_sources,
    int4_table,
    int8_byte,
    int8_shape,
    int8_sources,
    load_block_words,
    prefetch_l2,
    split_buffers,
)
from swiftinfer_core.kernels.gemv_fusion import NO_FUSION, Fusion, fused_store, pro_load


@triton.jit
def _gemv_int4_kernel(
    X, Q, S, MN, Y, WS, CNT, N, K, KB, NG, STEPS, SPLIT, NW, RES, eps, SSI, NPARTS, NWN, XN, SSO,
    BPG: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr, STAGES: tl.constexpr, ZP: tl.constexpr,
    PREFETCH: tl.constexpr, CG: tl.constexpr, PDL: tl.constexpr, L2PF: tl.constexpr,
    PRO: tl.constexpr, HAS_RES: tl.constexpr, HANDOFF: tl.constexpr,
):
    if PDL:  # programmatic dependent launch: the next kernel may start its own weight loads now
        tl.extra.cuda.gdc_launch_dependents()
    rows, rmask, q_rows, b_start, b_end = gemv_tile(Q, N, KB, STEPS, BLOCK_N, NB)
    r64 = rows.to(tl.int64)
    nb = tl.arange(0, NB)
    j = tl.arange(0, 4)
    acc = tl.zeros([BLOCK_N, NB], tl.float32)
    ssv = tl.zeros([NB, 4], tl.float32)  # RMSNORM: this part's x^2 (kernels/gemv_fusion.py)
    if PREFETCH >= 1:  # the next steps' words ride in registers: PREFETCH more loads in flight per thread
        w1 = load_block_words(q_rows, rmask, b_start + nb, b_start + nb < b_end, CG)
    if PREFETCH >= 2:
        w2 = load_block_words(q_rows, rmask, b_start + NB + nb, b_start + NB + nb < b_end, CG)
    if L2PF:  # the program's whole weight range on its way to L2 before the wait
        for b0 in range(b_start, b_end, NB):
            prefetch_l2(Q, rows, N, b0 + 4 * tl.arange(0, NB // 4), KB)
    if PDL:  # x, the workspace and the counters belong to the previous kernel until it completes
        tl.extra.cuda.gdc_wait()
    for b0 in tl.range(b_start, b_end, NB, num_stages=STAGES):
        blk = b0 + nb  # [NB] packed blocks of this step
        bmask = blk < b_end
        if PREFETCH == 0:
            w = load_block_words(q_rows, rmask, blk, bmask, CG)  # [BLOCK_N, NB, 4] int32
        elif PREFETCH == 1:
            w = w1
            w1 = load_block_words(q_rows, rmask, blk + NB, blk + NB < b_end, CG)
        else:
            w = w1
            w1 = w2
            w2 = load_block_words(q_rows, rmask, blk + 2 * NB, blk + 2 * NB < b_end, CG)
        u, u_hi = int4_sources(w)
        xsum = tl.zeros([NB], tl.float32)  # ZP: sum(x) per block (dead code otherwise)
        for i in tl.static_range(8):
            kx = blk[:, None] * 32 + 4 * i + j[None, :]  # [NB, 4] columns of nibble i
            xi, xr = pro_load(X, NW, kx, bmask[:, None] & (kx < K), K, PRO)
            if PRO == 1:
                ssv += xr * xr
            if i == 0:
                part = int4_nibble(u, u_hi, i) * xi[None, :, :]  # [BLOCK_N, NB, 4]
            else:
                part += int4_nibble(u, u_hi, i) * xi[None, :, :]
            if ZP:
                xsum += tl.sum(xi, 1)
        if ZP:
            gofs = r64[:, None] * NG + (blk // BPG)[None, :]  # [BLOCK_N, NB]: each block's group
            gmask = rmask[:, None] & bmask[None, :]
            s = tl.load(S + gofs, mask=gmask, other=0.0).to(tl.float32)
            z = tl.fma(s, 8.0, tl.load(MN + gofs, mask=gmask, other=0.0).to(tl.float32))  # min + 8 scale
            acc += tl.sum(part, 2) * s + z * xsum[None, :]
        else:
            s = tl.load(S + r64[:, None] * NG + (blk // BPG)[None, :], mask=rmask[:, None] & bmask[None, :], other=0.0)
            acc += tl.sum(part, 2) * s.to(tl.float32)  # [BLOCK_N, NB]: one scale per block
    y = tl.sum(acc, 1)
    fused_store(y, tl.sum(tl.sum(ssv, 1), 0), Y, rows, rmask, WS, CNT, tl.program_id(0), tl.program_id(1), SPLIT, N,
                X, K, eps, RES, SSI, NPARTS, NWN, XN, SSO, PRO, HAS_RES, HANDOFF)


@triton.jit
def _gemv_int8_kernel(
    X, Q, S, Y, WS, CNT, N, K, KB, STEPS, SPLIT, NW, RES, eps, SSI, NPARTS, NWN, XN, SSO,
    BLOCK_N: tl.constexpr, NB: tl.constexpr, STAGES: tl.constexpr,
    PRO: tl.constexpr, HAS_RES: tl.constexpr, HANDOFF: tl.constexpr,
):
    rows, rmask, q_rows, b_start, b_end = gemv_tile(Q, N, KB, STEPS, BLOCK_N, NB)  # KB blocks of 16 bytes per row
    nb = tl.arange(0, NB)
    j = tl.arange(0, 4)
    acc = tl.zeros([BLOCK_N, NB], tl.float32)
    ssv = tl.zeros([NB, 4], tl.float32)
    for b0 in tl.range(b_start, b_end, NB, num_stages=STAGES):
        blk = b0 + nb
        bmask = blk < b_end
        w = load_block_words(q_rows, rmask, blk, bmask)  # [BLOCK_N, NB, 4] int32
        u, u_hi = int8_sources(w)
        for b in tl.static_range(4):
            kx = blk[:, None] * 16 + 4 * b + j[None, :]  # [NB, 4] columns of byte b
            xb, xr = pro_load(X, NW, kx, bmask[:, None] & (kx < K), K, PRO)
            if PRO == 1:
                ssv += xr * xr
            if b == 0:
                part = int8_byte(u, u_hi, b) * xb[None, :, :]  # [BLOCK_N, NB, 4]
            else:
                part += int8_byte(u, u_hi, b) * xb[None, :, :]
        acc += tl.sum(part, 2)
    # one scale per row: applied once, after the row's sum
    y = tl.sum(acc, 1) * tl.load(S + rows, mask=rmask, other=0.0).to(tl.float32)
    fused_store(y, tl.sum(tl.sum(ssv, 1), 0), Y, rows, rmask, WS, CNT, tl.program_id(0), tl.program_id(1), SPLIT, N,
                X, K, eps, RES, SSI, NPARTS, NWN, XN, SSO, PRO, HAS_RES, HANDOFF)


def _check(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, n: int, k: int, fusion: Fusion) -> None:
    fusion.check(x, n, k)
    check_operands(x, q, scales)


def _grid(x: torch.Tensor, n: int, block_n: int, steps: int, cfg: dict):
    """(grid, split, steps per split, workspace, counters) for n rows in blocks of block_n."""
    tiles = triton.cdiv(n, block_n)
    split, per = quant_configs.pick_split(tiles, steps, sm_count(x.device), cfg["waves"])
    ws, cnt = split_buffers(x.device, split, 1, n, tiles)
    return (tiles, split), split, per, ws, cnt


def gemv_int8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None,
              cfg: dict | None = None, fusion: Fusion = NO_FUSION) -> torch.Tensor:
    """x [1, K], q int8 [N, K16], scales [N] -> y [1, N] in out's dtype (default x's). cfg: a
    kernels/quant_configs.py config (default: the table's for this shape). ``fusion``: the
    norm, SiLU*up and residual folded in (kernels/gemv_fusion.py; x [1, 2K] for SILU_MUL)."""
    k = x.shape[-1] // fusion.x_width(1)
    n = int8_shape(q, scales, k)
    _check(x, q, scales, n, k, fusion)
    out = check_out(out, 1, n, x)
    cfg = cfg or quant_configs.config("int8", 1, n, k)
    nb = cfg["block_k"] // 16
    kb = q.shape[1] // 16
    grid, split, per, ws, cnt = _grid(x, n, cfg["block_n"], triton.cdiv(kb, nb), cfg)
    _gemv_int8_kernel[grid](
        x, q.view(torch.int32), scales, out, ws, cnt, n, k, kb, per, split, *fusion.args(x, out),
        BLOCK_N=cfg["block_n"], NB=nb, STAGES=cfg["stages"], **fusion.flags(), num_warps=cfg["warps"],
    )
    fusion.stored(grid[0])
    return out


def gemv_int4(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, k: int, group: int,
              out: torch.Tensor | None = None, cfg: dict | None = None, mins: torch.Tensor | None = None,
              fusion: Fusion = NO_FUSION) -> torch.Tensor:
    """x [1, K], packed uint8 [N, Kp/2], scales [N, Kp/group] -> y [1, N] in out's dtype (default x's).
    ``mins`` [N, Kp/group]: the zero-point format (w = nibble * scale + min).
    cfg["math"] "h2" (symmetric format only): the packed-half-pair kernel; cfg["x_resident"]:
    kernels/quant_gemv_xres.py (x loaded once per K chunk, rows walked). ``fusion``: the norm,
    SiLU*up and residual folded in (kernels/gemv_fusion.py; x [1, 2K] for SILU_MUL); only the
    default kernel has them, so a fused launch takes it whatever cfg's math and x_resident say."""
    n, ng = int4_shape(packed, scales, k, group, mins)
    _check(x, packed, scales, n, k, fusion)
    zp = mins is not None
    if zp:
        check_operands(x, packed, mins)
    out = check_out(out, 1, n, x)
    cfg = cfg or quant_configs.config(int4_table(zp), 1, n, k)
    if fusion.folds:  # dataclass equality would compare the tensors
        cfg = {**cfg, "math": "f32", "x_resident": False}
    math = cfg.get("math", "f32")
    if math not in ("f32", "h2"):
        raise ValueError(f'int4 GEMV config "math" must be "f32" or "h2", got {math!r}')
    prefetch, cg = quant_configs.gemv_variant(cfg)
    # pdl is a launch hint: off under the interpreter (launches run one after another anyway) and
    # before Hopper (no griddepcontrol), so a table tuned on one GPU still runs on another
    pdl = quant_configs.pdl(cfg) and not interpreting() and torch.cuda.get_device_capability(x.device)[0] >= 9
    l2pf = quant_configs.l2_prefetch(cfg) and not interpreting()  # inline PTX: GPU builds only
    if quant_configs.x_resident(cfg):
        if cg:
            raise ValueError('the x_resident int4 GEMV has no "l2_only"')
        return gemv_int4_xres(x, packed.view(torch.int32), scales, mins, out, n, k, group, cfg, prefetch, math, pdl, l2pf)
    nb = cfg["block_k"] // 32
    kb = ng * group // 32  # packed blocks per row
    grid, split, per, ws, cnt = _grid(x, n, cfg["block_n"], triton.cdiv(kb, nb), cfg)
    if math == "h2" and not zp:
        if pdl:
            raise ValueError('the "h2" int4 GEMV has no "pdl" (its x_resident kernel has)')
        if l2pf:
            raise ValueError('the "h2" int4 GEMV has no "l2_prefetch" (its x_resident kernel has)')
        gemv_int4_h2_kernel[grid](
            x, packed.view(torch.int32), scales, out, ws, cnt, n, k, kb, ng, per, split,
            BPG=group // 32, BLOCK_N=cfg["block_n"], NB=nb, STAGES=cfg["stages"], FAST=not interpreting(),
            num_warps=cfg["warps"],
        )
        return out
    _gemv_int4_kernel[grid](
        x, packed.view(torch.int32), scales, mins if zp else scales, out, ws, cnt, n, k, kb, ng, per, split,
        *fusion.args(x, out), BPG=group // 32, BLOCK_N=cfg["block_n"], NB=nb, STAGES=cfg["stages"], ZP=zp,
        PREFETCH=prefetch, CG=cg, PDL=pdl, L2PF=l2pf, **fusion.flags(), num_warps=cfg["warps"],
        **({"launch_pdl": True} if pdl else {}),
    )
    fusion.stored(grid[0])
    return out
