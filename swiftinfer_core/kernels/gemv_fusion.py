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

A handoff moves the norm to the GEMV before: RMSNORM makes every program of the
next weight read x (float32, the residual stream) and the norm weight at each K
step and square x, 6 bytes and three operations per column of weights that are
only 4-16 bytes per column (fp8/int4/bf16 at 8-16 rows a program). With
``Fusion.handoff`` the program that stores y = h (the updated residual) also
stores xn = h * next_norm_weight in the next weight's input dtype and the sum of
h^2 over its rows; the next GEMV takes Prologue.NORMED: x = xn read as is, y
scaled at the end by rsqrt(sum of those partial sums / K + eps), the partials
read once per program from L2, in a fixed order (deterministic).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from swiftinfer_core.kernels.quant_common import splitk_arrive, splitk_release

SS_BLOCK = tl.constexpr(1024)  # values per step of vector_sum


class Prologue(enum.IntEnum):
    NONE = 0
    RMSNORM = 1
    SILU_MUL = 2
    NORMED = 3  # x is a Handoff's xn; 1/rms from its partial sums


@dataclass(eq=False)
class Handoff:
    """What a GEMV's epilogue leaves for the next GEMV of the chain (module doc), from its stored y = h [1, N]:
    xn [1, N] = h * norm_weight in xn's dtype, and ss[:parts] float32, the sums of h^2 over the row tiles
    that stored them. ``parts`` is set by the launch that writes them (its storing tiles)."""

    norm_weight: torch.Tensor  # [N]
    xn: torch.Tensor  # [1, N]
    ss: torch.Tensor  # [N] float32: room for one part per row
    parts: int = 0

    @classmethod
    def new(cls, norm_weight: torch.Tensor, dtype: torch.dtype) -> Handoff:
        n, dev = norm_weight.shape[0], norm_weight.device
        return cls(norm_weight, torch.empty(1, n, dtype=dtype, device=dev), torch.empty(n, dtype=torch.float32, device=dev))


@dataclass(frozen=True)
class Fusion:
    """What a batch-1 GEMV folds in. ``norm_weight`` [K] for RMSNORM; ``source`` for NORMED (x is its xn);
    ``residual`` [1, N] float32 (the residual stream) added to y; ``handoff``: y's normed copy and partial
    sums of squares for the next GEMV."""

    prologue: Prologue = Prologue.NONE
    norm_weight: torch.Tensor | None = None
    eps: float = 1e-5
    residual: torch.Tensor | None = None
    source: Handoff | None = None
    handoff: Handoff | None = None

    @property
    def folds(self) -> bool:
        """Whether anything is folded in (a prologue, a residual or a handoff)."""
        return self.prologue is not Prologue.NONE or self.residual is not None or self.handoff is not None

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
        src = self.source
        if (src is not None) != (self.prologue is Prologue.NORMED):
            raise ValueError("source is given exactly when the prologue is NORMED")
        if src is not None and (src.xn.data_ptr() != x.data_ptr() or src.parts < 1):
            raise ValueError("a NORMED x must be its source's xn, after the launch that wrote it")
        ho = self.handoff
        if ho is not None and (ho.norm_weight.shape != (n,) or ho.xn.shape != (1, n) or ho.ss.shape != (n,)
                               or ho.ss.dtype != torch.float32 or not ho.xn.is_contiguous()):
            raise ValueError(f"a handoff of a [{n}, {k}] weight takes norm_weight [{n}], xn [1, {n}] and ss float32 [{n}]")

    def args(self, x: torch.Tensor, out: torch.Tensor) -> tuple:
        """(NW, RES, eps, SSI, NPARTS, NWN, XN, SSO) kernel arguments; absent tensors point at x / out (never
        read). ``out`` may be the residual but not x: every program reads all of x."""
        if out.data_ptr() == x.data_ptr():
            raise ValueError("out must not be x (every program reads all of x); it may be the residual")
        nw = self.norm_weight if self.norm_weight is not None else x
        src, ho = self.source, self.handoff
        return (nw, self.residual if self.residual is not None else out, self.eps,
                x if src is None else src.ss, 0 if src is None else src.parts,
                out if ho is None else ho.norm_weight, out if ho is None else ho.xn, out if ho is None else ho.ss)

    def flags(self) -> dict:
        """The kernels' constexprs: PRO, HAS_RES, HANDOFF."""
        return dict(PRO=int(self.prologue), HAS_RES=self.residual is not None, HANDOFF=self.handoff is not None)

    def stored(self, parts: int) -> None:
        """After a launch: its handoff (if any) holds ``parts`` partial sums."""
        if self.handoff is not None:
            self.handoff.parts = parts


NO_FUSION = Fusion()


@triton.jit
def pro_load(X, NW, kx, mask, K, PRO: tl.constexpr):
    """x at columns kx (any shape) after the prologue, float32, and the raw x (for x^2; NORMED: x as is)."""
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
def vector_sum(X, n, SQUARE: tl.constexpr):
    """sum of X[0:n] (SQUARE: of its squares), float32, in a fixed order: RMSNORM's x^2 under split-K,
    NORMED's partial sums of a handoff."""
    offs = tl.arange(0, SS_BLOCK)
    acc = tl.zeros([SS_BLOCK], tl.float32)
    for i0 in range(0, n, SS_BLOCK):
        v = tl.load(X + i0 + offs, mask=i0 + offs < n, other=0.0).to(tl.float32)
        if SQUARE:
            v = v * v
        acc += v
    return tl.sum(acc, 0)


@triton.jit
def epilogue(y, rows, rmask, ss, K, eps, RES, SSI, NPARTS, NWN, XN, SSO, tile,
             PRO: tl.constexpr, HAS_RES: tl.constexpr, HANDOFF: tl.constexpr):
    """y [BLOCK_N] float32 of rows -> with the norm's 1/rms (RMSNORM: ss, the sum of x^2 over K; NORMED: from
    the source's partial sums) and the residual; HANDOFF: stores xn of these rows and their sum of y^2 at SSO[tile]."""
    if PRO == 1:
        y = y * tl.rsqrt(ss / K + eps)
    if PRO == 3:
        y = y * tl.rsqrt(vector_sum(SSI, NPARTS, False) / K + eps)
    if HAS_RES:
        y += tl.load(RES + rows, mask=rmask, other=0.0).to(tl.float32)
    if HANDOFF:
        nwn = tl.load(NWN + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(XN + rows, (y * nwn).to(XN.dtype.element_ty), mask=rmask)
        tl.store(SSO + tile, tl.sum(tl.where(rmask, y * y, 0.0), 0))
    return y


@triton.jit
def split_epilogue(tot, rows, rmask, X, K, eps, RES, SSI, NPARTS, NWN, XN, SSO, tile,
                   PRO: tl.constexpr, HAS_RES: tl.constexpr, HANDOFF: tl.constexpr):
    """The epilogue of a split-K sum ``tot``: no part saw all of x, so RMSNORM's x^2 is summed over all of it here."""
    ss = 0.0
    if PRO == 1:
        ss = vector_sum(X, K, True)
    return epilogue(tot, rows, rmask, ss, K, eps, RES, SSI, NPARTS, NWN, XN, SSO, tile, PRO, HAS_RES, HANDOFF)


@triton.jit
def fused_store(y, ss, Y, rows, rmask, WS, CNT, tile, pid_k, SPLIT, N, X, K, eps, RES, SSI, NPARTS, NWN, XN, SSO,
                PRO: tl.constexpr, HAS_RES: tl.constexpr, HANDOFF: tl.constexpr):
    """kernels/quant_common.splitk_store with the epilogue (its arrival and release protocol):
    y [BLOCK_N] float32, this part's product (unnormalised), ss this part's sum of x^2. A handoff's
    partial sums are per row ``tile``."""
    if SPLIT == 1:
        y = epilogue(y, rows, rmask, ss, K, eps, RES, SSI, NPARTS, NWN, XN, SSO, tile, PRO, HAS_RES, HANDOFF)
        tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rmask)
    else:
        tl.store(WS + pid_k * N + rows, y, mask=rmask)
        if splitk_arrive(CNT, tile, SPLIT):
            tot = tl.load(WS + rows, mask=rmask, other=0.0, cache_modifier=".cg")
            for s in range(1, SPLIT):
                tot += tl.load(WS + s * N + rows, mask=rmask, other=0.0, cache_modifier=".cg")
            tot = split_epilogue(tot, rows, rmask, X, K, eps, RES, SSI, NPARTS, NWN, XN, SSO, tile, PRO, HAS_RES, HANDOFF)
            tl.store(Y + rows, tot.to(Y.dtype.element_ty), mask=rmask)
            splitk_release(CNT, tile)


def fused_ref(x: torch.Tensor, weight: torch.Tensor, fusion: Fusion) -> torch.Tensor:
    """float64 reference: weight [N, K] (dequantised) -> y [1, N] float64 (a handoff's outputs: handoff_ref).
    NORMED: x is the source's xn and its 1/rms comes from the source's partial sums."""
    xf = x.double()
    if fusion.prologue is Prologue.NORMED:
        src = fusion.source
        y = xf @ weight.double().t() * torch.rsqrt(src.ss[: src.parts].double().sum() / x.shape[-1] + fusion.eps)
        return y if fusion.residual is None else y + fusion.residual.double()
    if fusion.prologue is Prologue.RMSNORM:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + fusion.eps) * fusion.norm_weight.double()
    elif fusion.prologue is Prologue.SILU_MUL:
        g, u = xf.chunk(2, dim=-1)
        xf = torch.nn.functional.silu(g) * u
    y = xf @ weight.double().t()
    return y if fusion.residual is None else y + fusion.residual.double()


def handoff_ref(y: torch.Tensor, norm_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 reference of what a handoff stores for y [1, N]: (xn [1, N], the sum of y^2 over all rows)."""
    yd = y.double()
    return yd * norm_weight.double(), yd.pow(2).sum()
