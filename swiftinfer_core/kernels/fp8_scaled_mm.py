"""Batched FP8 products through torch._scaled_mm: y [M, N] = x [M, K] @ W^T in bf16.

The first choice for M > 1 (model/fp8_linear.py): cuBLAS/CUTLASS FP8 tensor
cores, tuned per shape, twice bf16's peak FLOP/s on Hopper, where this
project's own Triton GEMMs stay far behind cuBLAS (docs/quantization.md, quantised kernels).
Both operands must be FP8, so x is quantized per row on the fly, as the weights
are per channel (model/fp8.py):

  xq float8_e4m3fn [M, K], sx float32 [M, 1]   sx[m] = amax(|x[m, :]|) / 448
  y = _scaled_mm(xq, q^T, scale_a=sx, scale_b=S [1, N], out_dtype=bf16)
    = (xq * sx) @ (q * S)^T, accumulated in float32

q^T is the column-major view of the row-major q [N, K] that _scaled_mm wants for
its second operand (no copy). Its conditions (torch 2.11): K and N multiples of
16; row-wise scales write bf16 only (CUTLASS's f8f8bf16_rowwise; cuBLAS on
sm90 takes more, not everywhere). ``supported`` checks them and probes the op
once per device at load: where it fails, the Triton weight-only GEMM
(kernels/fp8_gemm.py) runs instead, and the log says why.

What it costs: x's rounding to e4m3 (each element within 2^-4 of itself, as
the weights; perplexity of both at once: bench/results/fp8_quality_cpu_emulated.json).
A finer scale does not help (e4m3 is a float: 3 mantissa bits at any scale); a
second term does. ``two_terms`` (EngineConfig.fp8_activation_terms 2):

  xq [2M, K] = [hi; lo], sx [2M, 1]   hi = e4m3(x / s_hi), lo = e4m3((x - hi s_hi) / s_lo)
  y = Y[:M] + Y[M:],  Y = _scaled_mm(xq, q^T, sx, S)   (the weight read once, 2M rows)

so x is carried to ~2^-8 of itself (bf16: 2^-9) for twice the tensor-core work.

Row quantization is one Triton program per row: pass 1 takes the row's amax,
pass 2 writes x / sx rounded to e4m3. The rounding is computed explicitly
(_round_e4m3: nearest, ties to even, as torch's cast) and the exact result then
cast, because Triton 3.9's CPU interpreter casts float32 to e4m3 wrongly where
rounding carries into the exponent (31.98 -> 16 instead of 32), and the tests run
this kernel there; on the GPU the cast of an exact value is exact too. Divisions
use div_rn (IEEE), so sx and xq equal model/fp8.quantize_fp8's on the CPU bit for
bit (except -0 for +0); on CUDA torch divides by a scalar through its reciprocal,
an ulp off in some rows' scales (bench/results/fp8_scaled_mm_rows.json). One launch per product, no host syncs: CUDA-graph capturable.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.fp8_gemv import fp8_shape
from swiftinfer_core.model.fp8 import E4M3_MAX, FP8_DTYPE, TINY

log = logging.getLogger(__name__)
MULTIPLE = 16  # _scaled_mm: K and N multiples of 16


@triton.jit
def _round_e4m3(t):
    """t float32, |t| <= 448 -> the nearest e4m3 value (ties to even), as float32."""
    e = (t.to(tl.int32, bitcast=True) >> 23) & 255  # biased exponent: floor(log2 |t|) + 127
    e = tl.maximum(e, 127 - 6) - 3  # e4m3's step there, biased: 2^(E - 3), E >= -6 (subnormal step 2^-9)
    step = (e << 23).to(tl.float32, bitcast=True)
    inv = ((254 - e) << 23).to(tl.float32, bitcast=True)  # 1 / step, exact
    # |t * inv| < 16; adding 1.5 * 2^23 leaves a float32 of step 1, so the add rounds to an integer (ties to even)
    return ((t * inv + 12582912.0) - 12582912.0) * step


@triton.jit
def _to_e4m3(v, s, FMAX: tl.constexpr):
    """v / s clamped to +-FMAX and rounded to e4m3, as float32."""
    return _round_e4m3(tl.minimum(tl.maximum(tl.div_rn(v, s), -FMAX), FMAX))


@triton.jit
def _row_scale(x_row, K, FMAX: tl.constexpr, SMALLEST: tl.constexpr, BLOCK_K: tl.constexpr):
    """amax(|row|) / FMAX (at least SMALLEST) over the row's K values."""
    offs = tl.arange(0, BLOCK_K)
    amax = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs
        amax = tl.maximum(amax, tl.abs(tl.load(x_row + kk, mask=kk < K, other=0.0).to(tl.float32)))
    return tl.maximum(tl.div_rn(tl.max(amax, 0), FMAX), SMALLEST)


@triton.jit
def _quantize_rows_kernel(X, XQ, SX, K, stride_xm, FMAX: tl.constexpr, SMALLEST: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    x_row = X + row.to(tl.int64) * stride_xm
    q_row = XQ + row.to(tl.int64) * K
    offs = tl.arange(0, BLOCK_K)
    s = _row_scale(x_row, K, FMAX, SMALLEST, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs
        v = tl.load(x_row + kk, mask=kk < K, other=0.0).to(tl.float32)
        tl.store(q_row + kk, _to_e4m3(v, s, FMAX).to(tl.float8e4nv), mask=kk < K)
    tl.store(SX + row, s)


@triton.jit
def _quantize_rows_two_kernel(X, XQ, SX, M, K, stride_xm, FMAX: tl.constexpr, SMALLEST: tl.constexpr,
                              BLOCK_K: tl.constexpr):
    """Row m of x -> XQ rows m (hi) and M + m (lo): hi = e4m3(x / s_hi), lo = e4m3(r / s_lo) with
    r = x - hi * s_hi; each scale its row's amax / 448. Pass 1: amax(x); pass 2: amax(r); pass 3:
    writes both (hi recomputed, the same bits)."""
    row = tl.program_id(0)
    x_row = X + row.to(tl.int64) * stride_xm
    hi_row = XQ + row.to(tl.int64) * K
    lo_row = XQ + (row + M).to(tl.int64) * K
    offs = tl.arange(0, BLOCK_K)
    s = _row_scale(x_row, K, FMAX, SMALLEST, BLOCK_K)
    amax = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs
        v = tl.load(x_row + kk, mask=kk < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v - _to_e4m3(v, s, FMAX) * s))
    s_lo = tl.maximum(tl.div_rn(tl.max(amax, 0), FMAX), SMALLEST)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs
        v = tl.load(x_row + kk, mask=kk < K, other=0.0).to(tl.float32)
        hi = _to_e4m3(v, s, FMAX)
        tl.store(hi_row + kk, hi.to(tl.float8e4nv), mask=kk < K)
        tl.store(lo_row + kk, _to_e4m3(v - hi * s, s_lo, FMAX).to(tl.float8e4nv), mask=kk < K)
    tl.store(SX + row, s)
    tl.store(SX + M + row, s_lo)


@dataclass(frozen=True)
class RowTile:
    """How a row-quantization program walks its row: ``block_k`` values a step (a row of at
    most that many is loaded once per pass, the later passes hitting L1), ``num_warps`` warps."""

    block_k: int = 1024
    num_warps: int = 4

    def launch(self, k: int) -> dict:
        return {"BLOCK_K": min(self.block_k, triton.next_power_of_2(k)), "num_warps": self.num_warps}


# One H100, per product of the 7B / 8B shapes (bench/results/fp8_row_quant_h100.json): up to 128 rows a
# program that loads its whole row at once (16 warps) takes the quantization of an 11,008-wide row from
# 9.4 to 6.4 us (two terms: 31 to 17 us) and the product from 41.0 to 38.4 us; from 256 rows on it loses
# (more programs than SMs, each holding its row in registers), and the narrow default is as fast as any.
WIDE_ROWS = 128
WIDE = RowTile(16384, 16)


def row_tile(m: int) -> RowTile:
    """The row quantization's tile for an M-row product."""
    return WIDE if m <= WIDE_ROWS else RowTile()


def _rows(x: torch.Tensor) -> tuple[int, int]:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be [M, K] with contiguous rows, got {tuple(x.shape)}")
    return x.shape


def quantize_rows(x: torch.Tensor, tile: RowTile = RowTile()) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (rows contiguous) -> (xq float8_e4m3fn [M, K], sx float32 [M, 1]): each row
    over its own scale amax / 448, as model/fp8.quantize_fp8 does for weights."""
    m, k = _rows(x)
    xq = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    sx = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    _quantize_rows_kernel[(m,)](x, xq, sx, k, x.stride(0), FMAX=E4M3_MAX, SMALLEST=TINY, **tile.launch(k))
    return xq, sx


def quantize_rows_two(x: torch.Tensor, tile: RowTile = RowTile()) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (rows contiguous) -> (xq float8_e4m3fn [2M, K], sx float32 [2M, 1]): rows 0..M-1 are
    quantize_rows(x), rows M..2M-1 the same of what those miss (x - hi * s_hi), so that
    hi * s_hi + lo * s_lo is x to ~2^-8 of each row's amax where hi alone is ~2^-4."""
    m, k = _rows(x)
    xq = torch.empty((2 * m, k), dtype=FP8_DTYPE, device=x.device)
    sx = torch.empty((2 * m, 1), dtype=torch.float32, device=x.device)
    _quantize_rows_two_kernel[(m,)](x, xq, sx, m, k, x.stride(0), FMAX=E4M3_MAX, SMALLEST=TINY, **tile.launch(k))
    return xq, sx


def scaled_mm_fp8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, fast_accum: bool = False,
                  two_terms: bool = False, tile: RowTile | None = None) -> torch.Tensor:
    """x [M, K] bf16, q float8_e4m3fn [N, K], scales float32 [N] -> y [M, N] bf16 (see ``supported``).
    ``fast_accum``: _scaled_mm's use_fast_accum (Hopper: no periodic float32 promotion; off by default).
    ``two_terms``: x as two e4m3 terms (quantize_rows_two), both through one _scaled_mm over 2M rows
    (the weight read once), the halves added in x's dtype. ``tile``: the row quantization's (None: row_tile(M))."""
    n, k = fp8_shape(q, scales)
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [M, {k}], got {tuple(x.shape)}")
    tile = tile or row_tile(x.shape[0])
    xq, sx = quantize_rows_two(x, tile) if two_terms else quantize_rows(x, tile)
    y = torch._scaled_mm(xq, q.t(), scale_a=sx, scale_b=scales.view(1, n), out_dtype=x.dtype,
                         use_fast_accum=fast_accum)
    if two_terms:
        m = x.shape[0]
        return torch.add(y[:m], y[m:])
    return y


def supported(dtype: torch.dtype, n: int, k: int, device: torch.device) -> bool:
    """Whether scaled_mm_fp8 runs an [N, K] weight for ``dtype`` activations on ``device``."""
    return (device.type == "cuda" and dtype == torch.bfloat16 and n % MULTIPLE == 0 and k % MULTIPLE == 0
            and _rowwise_works(device.index if device.index is not None else torch.cuda.current_device()))


@functools.lru_cache(maxsize=None)
def _rowwise_works(index: int) -> bool:
    """One tiny row-wise _scaled_mm on device ``index``, at load (never inside a graph capture)."""
    dev = torch.device("cuda", index)
    try:
        a = torch.ones(16, 32, device=dev).to(FP8_DTYPE)
        y = torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1, device=dev), scale_b=torch.ones(1, 16, device=dev),
                             out_dtype=torch.bfloat16)
        ok = bool((y == 32).all())
    except (RuntimeError, ValueError, NotImplementedError, AttributeError, TypeError) as exc:
        log.warning("torch._scaled_mm with row-wise scales fails on %s (%s): FP8 batches run the Triton GEMM "
                    "(kernels/fp8_gemm.py)", dev, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False
    if not ok:
        log.warning("torch._scaled_mm with row-wise scales gave wrong numbers on %s: FP8 batches run the Triton GEMM", dev)
    return ok
