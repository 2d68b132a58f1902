"""The layer's small ops folded into a batch-1 GEMV over quantized weights
(kernels/quant_gemv.py int4/int8, kernels/fp8_gemv.py), as kernels/gemv.py does
for float weights:

    y = W @ prologue(x)  (+ residual)

    Prologue.NONE     x as is                                 (o projection)
    Prologue.RMSNORM  rmsnorm(x) * norm_weight                (qkv, gate-up, lm_head)
    Prologue.SILU_MUL silu(x[:K]) * x[K:]  (x = [gate, up])   (down projection)

At batch 1 each of those ops is a few KB of work but a launch of its own, four
per decoder layer; folded in, a layer is its four weight reads and attention.

RMSNORM scales after the product: y = inv_rms * W @ (x * norm_weight). One part
of K (split-K) sees only its columns, so a one-part launch sums x^2 in the same
pass as the product, while under split-K the part that finishes the tile (the
one that sums the partials) sums x^2 over all K from x (L2-resident, K floats),
once per row tile. The residual is added by whichever program stores y, so
``out`` may be the residual itself (in place: each row is read, then written,
by that one program).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.quant_common import splitk_arrive, splitk_release

SS_BLOCK = tl.constexpr(1024)  # x values per step of the full sum of squares


class Prologue(enum.IntEnum):
    NONE = 0
    RMSNORM = 1
    SILU_MUL = 2


@dataclass(frozen=True)
class Fusion:
    """What a batch-1 GEMV folds in. ``norm_weight`` [K] for RMSNORM; ``residual``
    [1, N] float32 (the residual stream) added to y."""

    prologue: Prologue = Prologue.NONE
    norm_weight: torch.Tensor | None = None
    eps: float = 1e-5
    residual: torch.Tensor | None = None

    @property
    def folds(self) -> bool:
        """Whether anything is folded in (a prologue or a residual)."""
        return self.prologue is not Prologue.NONE or self.residual is not None

    def x_width(self, k: int) -> int:
        """x's columns for a weight of K columns: [gate, up] for SILU_MUL."""
        return 2 * k if self.prologue is Prologue.SILU_MUL else k

    def check(self, x: torch.Tensor, n: int, k: int) -> None:
        if x.dim() != 2 or x.shape != (1, self.x_width(k)) or not x.is_contiguous():
            raise ValueError(f"x must be a contiguous [1, {self.x_width(k)}] tensor for a [{n}, {k}] weight "
                             f"with prologue {self.prologue.name}, got {tuple(x.shape)}")
        if (self.norm_weight is None) != (self.prologue is not Prologue.RMSNORM):
            raise ValueError("norm_weight is given exactly when the prologue is RMSNORM")
        if self.norm_weight is not None and (self.norm_weight.shape != (k,) or self.norm_weight.device != x.device):
            raise ValueError(f"norm_weight must be [{k}] on x's device, got {tuple(self.norm_weight.shape)}")
        r = self.residual
        if r is not None and (r.shape != (1, n) or not r.is_contiguous() or r.device != x.device):
            raise ValueError(f"residual must be a contiguous [1, {n}] tensor on x's device, got {tuple(r.shape)}")

    def args(self, x: torch.Tensor, out: torch.Tensor) -> tuple:
        """(NW, RES, eps) kernel arguments; absent tensors point at x / out (never read).
        ``out`` may be the residual but not x: every program reads all of x."""
        if out.data_ptr() == x.data_ptr():
            raise ValueError("out must not be x (every program reads all of x); it may be the residual")
        nw = self.norm_weight if self.norm_weight is not None else x
        return nw, self.residual if self.residual is not None else out, self.eps


NO_FUSION = Fusion()


@triton.jit
def pro_load(X, NW, kx, mask, K, PRO: tl.constexpr):
    """x at columns kx (any shape) after the prologue, float32, and the raw x (for x^2)."""
    if PRO == 2:
        g = tl.load(X + kx, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(X + K + kx, mask=mask, other=0.0).to(tl.float32)
        return g / (1.0 + tl.exp(-g)) * u, g
    else:
        x = tl.load(X + kx, mask=mask, other=0.0).to(tl.float32)
        if PRO == 1:
            return x * tl.load(NW + kx, mask=mask, other=0.0).to(tl.float32), x
        else:
            return x, x


@triton.jit
def full_sum_squares(X, K):
    """sum of x^2 over x[0:K], float32."""
    offs = tl.arange(0, SS_BLOCK)
    acc = tl.zeros([SS_BLOCK], tl.float32)
    for k0 in range(0, K, SS_BLOCK):
        x = tl.load(X + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        acc += x * x
    return tl.sum(acc, 0)


@triton.jit
def epilogue(y, rows, rmask, ss, K, eps, RES, PRO: tl.constexpr, HAS_RES: tl.constexpr):
    """y [BLOCK_N] float32 of rows -> with the norm's 1/rms (ss: sum of x^2 over K) and the residual."""
    if PRO == 1:
        y = y * tl.rsqrt(ss / K + eps)
    if HAS_RES:
        y += tl.load(RES + rows, mask=rmask, other=0.0).to(tl.float32)
    return y


@triton.jit
def split_epilogue(tot, rows, rmask, X, K, eps, RES, PRO: tl.constexpr, HAS_RES: tl.constexpr):
    """The epilogue of a split-K sum ``tot``: no part saw all of x, so x^2 is summed over all of it here."""
    ss = 0.0
    if PRO == 1:
        ss = full_sum_squares(X, K)
    return epilogue(tot, rows, rmask, ss, K, eps, RES, PRO, HAS_RES)


@triton.jit
def fused_store(y, ss, Y, rows, rmask, WS, CNT, tile, pid_k, SPLIT, N, X, K, eps, RES,
                PRO: tl.constexpr, HAS_RES: tl.constexpr):
    """kernels/quant_common.splitk_store with the epilogue (its arrival and release protocol):
    y [BLOCK_N] float32, this part's product (unnormalised), ss this part's sum of x^2."""
    if SPLIT == 1:
        y = epilogue(y, rows, rmask, ss, K, eps, RES, PRO, HAS_RES)
        tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rmask)
    else:
        tl.store(WS + pid_k * N + rows, y, mask=rmask)
        if splitk_arrive(CNT, tile, SPLIT):
            tot = tl.load(WS + rows, mask=rmask, other=0.0, cache_modifier=".cg")
            for s in range(1, SPLIT):
                tot += tl.load(WS + s * N + rows, mask=rmask, other=0.0, cache_modifier=".cg")
            tot = split_epilogue(tot, rows, rmask, X, K, eps, RES, PRO, HAS_RES)
            tl.store(Y + rows, tot.to(Y.dtype.element_ty), mask=rmask)
            splitk_release(CNT, tile)


def fused_ref(x: torch.Tensor, weight: torch.Tensor, fusion: Fusion) -> torch.Tensor:
    """float64 reference: weight [N, K] (dequantised) -> y [1, N] float64."""
    xf = x.double()
    if fusion.prologue is Prologue.RMSNORM:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + fusion.eps) * fusion.norm_weight.double()
    elif fusion.prologue is Prologue.SILU_MUL:
        g, u = xf.chunk(2, dim=-1)
        xf = torch.nn.functional.silu(g) * u
    y = xf @ weight.double().t()
    return y if fusion.residual is None else y + fusion.residual.double()
