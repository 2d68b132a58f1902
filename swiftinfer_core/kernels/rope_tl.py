"""RoPE inside Triton kernels: angles from positions on the fly, in float32.

HF "rotate_half" convention, so a head vector is handled as two halves
``x1 = x[:D/2]``, ``x2 = x[D/2:]`` and rotation by angle ``a_k = pos * f_k`` is

    out1 = x1 * cos(a) - x2 * sin(a)
    out2 = x2 * cos(a) + x1 * sin(a)

Kernels never rotate at raw stream indices (those may be in the millions);
layout.py keeps every position inside ``[-chunk, capacity)``, so ``pos`` is an
exact float32 integer. Two tricks keep this exact and cheap:

* :func:`cos_sin` reduces the angle to ``[-pi, pi]`` itself, adding back the
  rounding error of ``pos * f`` (an exact ``fma`` residual). So it is as good as
  float64 angles rounded once, whether ``tl.cos`` lowers to the fast
  ``cos.approx`` unit (accurate only near zero) or to libdevice.
* A tile of keys whose positions are consecutive, ``p0 + i`` for ``i <
  BLOCK_N``, rotates with the angle-addition identity from a per-program table
  ``cos(i f), sin(i f)`` [BLOCK_N, D/2] and one row ``cos(p0 f), sin(p0 f)``
  [D/2] per tile (:func:`rotate_tile`): four multiply-adds per element instead
  of a sine and a cosine. Decode is memory bound on H100/H200 only with this;
  full sincos for every key element costs about as much time as reading it.
"""

from __future__ import annotations

import triton
import triton.language as tl

_TWO_PI_HI = tl.constexpr(6.2831854820251465)  # float32(2 pi)
_TWO_PI_LO = tl.constexpr(-1.7484556000744883e-07)  # 2 pi - float32(2 pi)
_INV_TWO_PI = tl.constexpr(0.15915494309189535)


@triton.jit
def _fast_cos(x):
    return tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _fast_sin(x):
    return tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def cos_sin(pos, f, FAST: tl.constexpr = False):
    """cos, sin of ``pos * f`` (both float32, same shape or broadcastable).

    FAST (GPU only, not the interpreter): the hardware sin/cos unit (MUFU,
    ~2^-21 absolute error on [-pi, pi], where the reduction below puts the
    angle) instead of libdevice's, which costs ~100 instructions per call with
    its range checks."""
    pos, f = tl.broadcast(pos, f)
    ang = pos * f
    err = tl.fma(pos, f, -ang)  # exact: pos * f - ang
    k = tl.floor(ang * _INV_TWO_PI + 0.5)
    r = tl.fma(-k, _TWO_PI_HI, ang)
    r = tl.fma(-k, _TWO_PI_LO, r) + err  # in [-pi, pi] up to an ulp
    if FAST:
        c = _fast_cos(r)
        s = _fast_sin(r)
    else:
        c = tl.cos(r)
        s = tl.sin(r)
    return c, s


@triton.jit
def rotate(x1, x2, c, s):
    """Rotate halves x1, x2 (float32) by angles with cosine c and sine s."""
    return x1 * c - x2 * s, x2 * c + x1 * s


@triton.jit
def offset_table(f, BLOCK_N: tl.constexpr, FAST: tl.constexpr = False):
    """cos(i f), sin(i f) for i in [0, BLOCK_N): [BLOCK_N, D/2] each, once per program."""
    i = tl.arange(0, BLOCK_N).to(tl.float32)
    return cos_sin(i[:, None], f[None, :], FAST)


@triton.jit
def rotate_tile(x1, x2, p0, f, ci, si, FAST: tl.constexpr = False):
    """Rotate key rows x1, x2 [BLOCK_N, D/2] (float32) at positions p0 + row.

    p0: int scalar (position of row 0); f: [D/2] inverse frequencies;
    ci, si: :func:`offset_table`. cos(p0 f + i f) = c0 ci - s0 si, etc."""
    c0, s0 = cos_sin(tl.zeros_like(f) + p0, f, FAST)  # p0 may be a python int (interpreter)
    c = c0[None, :] * ci - s0[None, :] * si
    s = s0[None, :] * ci + c0[None, :] * si
    return rotate(x1, x2, c, s)
