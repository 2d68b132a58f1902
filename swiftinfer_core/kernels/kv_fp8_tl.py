"""Triton helpers for the FP8 (e4m3) KV cache; the format is cache/kv_fp8.py's.

Write side (write_cache.py, the decode kernel's fused write): a row's float32
values -> (e4m3 values, power-of-two float32 scale), bit-identical to
``Fp8KV.quantize`` in torch:

- ``pow2_scale``: from amax's float32 bits, as cache/kv_fp8.pow2_scale.
- ``round_e4m3``: round to the e4m3 grid in float32, explicitly, so that the
  conversion that follows is exact. Triton 3.9's CPU interpreter converts
  float32 -> float8e4nv wrongly when rounding carries into the exponent
  (124.08 -> 64 instead of 128); a value already on the grid converts right
  everywhere, and on a GPU this costs a few integer ops per written value.

Read side (decode / prefill attention): the scale is folded in after the
products instead of multiplying every loaded value. RoPE mixes only the two
halves of one row, which share a scale, so ``rot(s*k) = s*rot(k)`` and the
score is ``s_k * (q . rot(k_e4m3))``; the PV product takes ``p * s_v`` per key.
With s a power of two both are exactly what the dequantised cache gives
(scaling by 2**k commutes with every rounding, bf16's for tl.dot included).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pow2_scale(amax):
    """amax >= 0 (any shape, float32) -> (s, 1/s): s = 2**k, the smallest with amax / s <= 448."""
    bits = amax.to(tl.int32, bitcast=True)
    e = (bits >> 23) & 0xFF
    es = tl.where((bits & 0x7FFFFF) <= 0x600000, e - 8, e - 7)  # 448 = 1.75 * 2**8
    es = tl.maximum(es, 1)
    return (es << 23).to(tl.float32, bitcast=True), ((254 - es) << 23).to(tl.float32, bitcast=True)


@triton.jit
def round_e4m3(y):
    """float32 |y| <= 448 -> the nearest e4m3 value (ties to even), still float32.
    Normal range (|y| >= 2**-6): keep 3 mantissa bits of the float32 (the add carries
    into the exponent when it must). Subnormals: multiples of 2**-9, by adding and
    removing 1.5 * 2**14, whose float32 ulp is 2**-9, on |y|; y's sign put back
    (so -2**-10 gives -0, as torch)."""
    b = y.to(tl.int32, bitcast=True)
    normal = (b + 0x7FFFF + ((b >> 20) & 1)) & -1048576  # -1048576 = 0xFFF00000: sign, exponent, 3 bits
    sub = ((tl.abs(y) + 24576.0) - 24576.0).to(tl.int32, bitcast=True) | (b & -2147483648)  # -2**31: the sign bit
    return tl.where(tl.abs(y) < 0.015625, sub, normal).to(tl.float32, bitcast=True)


@triton.jit
def quantize_rows(x):
    """x [R, C] float32 (padding columns 0) -> (e4m3 [R, C], scale [R])."""
    s, inv = pow2_scale(tl.max(tl.abs(x), 1))
    return round_e4m3(x * inv[:, None]).to(tl.float8e4nv), s


@triton.jit
def quantize_vec(x):
    """x [C] float32 (padding 0) -> (e4m3 [C], scale scalar)."""
    s, inv = pow2_scale(tl.max(tl.abs(x), 0))
    return round_e4m3(x * inv).to(tl.float8e4nv), s


@triton.jit
def store_row(dst, scale_dst, x, mask, own):
    """Quantise one row x [C] float32 and store it at ``dst`` (pointers [C], ``mask``)
    and its scale at ``scale_dst`` (when ``own``)."""
    q, s = quantize_vec(x)
    tl.store(dst, q, mask=mask)
    tl.store(scale_dst, s, mask=own)
