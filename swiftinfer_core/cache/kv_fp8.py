"""FP8 (e4m3) KV cache storage: one power-of-two scale per written row and KV head.

For StreamingLLM serving a conversation's cache is fixed (sinks + window rows),
so the conversations a GPU holds are set by KV bytes per row. ``Fp8KV`` halves
them. One layer's K (V alike) is

    data  [slots, Hkv, capacity, D]  torch.float8_e4m3fn
    scale [slots, Hkv, capacity]     float32

so a row of one KV head takes ``D + 4`` bytes: 132 at head_dim 128 against 256
in bf16 (1.94x the slots in the same memory), 68 at head_dim 64 (1.88x; 3.8x
against a float32 cache).

Scales: per token and head, computed when the row is written (no calibration,
nothing to go stale when a prompt's range differs from a calibration set's).
``s = 2**k``, the smallest power of two with ``amax / s <= 448`` (e4m3's
largest finite value), amax over the row's D values. A power of two makes both
directions exact apart from the one rounding to e4m3: ``x / s`` and ``q * s``
change only the exponent, so every backend (the Triton kernels, the torch
reference, the CPU decode path) stores bit-identical rows and reads back
bit-identical float32 values. The cost against ``s = amax / 448`` is at most
one bit of headroom at the top of the range, which e4m3's relative precision
(3 mantissa bits, the same at every magnitude) does not feel; only values
below ``2**-6 * s`` (under ~1e-4 of amax) fall into the coarser subnormals.
Rounding is to nearest, ties to even (torch's ``.to(float8_e4m3fn)``; the
Triton kernels round explicitly in kernels/kv_fp8_tl.py). Error bound per value:
``|x - q*s| <= 2**-4 * |x|`` for ``|x| >= 2**-6 * s``, else ``<= 2**-10 * s``.

What is quantised: rows in the cache. A step's own tokens are attended from
this step's k_new/v_new as computed; they enter the cache quantised and later
steps read them back dequantised (decode, chunked prefill and the references
all do the same, so they agree exactly up to float rounding in the sums).

``Fp8KV`` is the pair as one value, indexed like the data tensor over its
leading dims (the scale tensor takes the same index), so the pool and the
torch attention paths handle both storages with the same indexing code:
``cache[slot, :, rows]`` reads a (still quantised) ``Fp8KV``, and assigning a
float tensor to it quantises (``__setitem__``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0
SCALE_BYTES = 4  # one float32 per row and head


def pow2_scale(amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, 1/s) float32 for amax >= 0 [...]: s = 2**k, the smallest with amax / s <= 448
    (k >= -126; amax 0 gives s = 2**-126 and rows of zeros). From the float32 bits:
    amax = f * 2**p, f in [1, 2); 448 = 1.75 * 2**8, so k = p - 8 if f <= 1.75 else p - 7."""
    bits = amax.float().contiguous().view(torch.int32)
    e = (bits >> 23) & 0xFF  # biased exponent p + 127
    es = torch.where((bits & 0x7FFFFF) <= 0x600000, e - 8, e - 7).clamp(min=1)  # biased k
    return (es << 23).view(torch.float32), ((254 - es) << 23).view(torch.float32)


@dataclass
class Fp8KV:
    """e4m3 values ``data [..., D]`` and their float32 row scales ``scale [...]``."""

    data: torch.Tensor
    scale: torch.Tensor

    @staticmethod
    def zeros(shape: tuple[int, ...], device) -> Fp8KV:
        """A cache of ``shape`` [..., D] that reads as zeros."""
        return Fp8KV(torch.zeros(shape, dtype=FP8, device=device), torch.zeros(shape[:-1], dtype=torch.float32, device=device))

    @staticmethod
    def quantize(x: torch.Tensor) -> Fp8KV:
        """x [..., D] (any float dtype) -> rows of e4m3 with their scales."""
        xf = x.float()
        s, inv = pow2_scale(xf.abs().amax(-1))
        return Fp8KV((xf * inv[..., None]).to(FP8), s)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[..., D] values q * s: exact in float32, and so in bf16, float64 (e4m3's 3
        mantissa bits times a power of two)."""
        return (self.data.float() * self.scale[..., None]).to(dtype)

    # tensor-like surface: what the pool, the engine's fingerprint and the torch paths use
    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scale.nbytes

    def __getitem__(self, idx) -> Fp8KV:
        return Fp8KV(self.data[idx], self.scale[idx])

    def __setitem__(self, idx, x: torch.Tensor | Fp8KV) -> None:
        """Store rows: a float tensor [..., D] is quantised first; an Fp8KV is copied as it is."""
        q = x if isinstance(x, Fp8KV) else Fp8KV.quantize(x)
        self.data[idx] = q.data
        self.scale[idx] = q.scale

    def copy_(self, other: Fp8KV) -> Fp8KV:
        self.data.copy_(other.data)
        self.scale.copy_(other.scale)
        return self

    def cpu(self) -> Fp8KV:
        return Fp8KV(self.data.cpu(), self.scale.cpu())

    def clone(self) -> Fp8KV:
        return Fp8KV(self.data.clone(), self.scale.clone())


def stack(parts: list) -> torch.Tensor | Fp8KV:
    """torch.stack of tensors or of Fp8KVs (data and scales stacked alike)."""
    if parts and isinstance(parts[0], Fp8KV):
        return Fp8KV(torch.stack([p.data for p in parts]), torch.stack([p.scale for p in parts]))
    return torch.stack(parts)


def read(cache, idx, dtype: torch.dtype) -> torch.Tensor:
    """``cache[idx]`` as values: a plain cache's own slice (its dtype, no copy), an
    fp8 cache's rows dequantised to ``dtype``."""
    if isinstance(cache, Fp8KV):
        return cache[idx].dequantize(dtype)
    return cache[idx]


def split(cache) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(data, scales or None): what the Triton kernels take."""
    if isinstance(cache, Fp8KV):
        return cache.data, cache.scale
    return cache, None


def row_bytes(head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of one cached row of one KV head (K or V) in storage ``dtype``."""
    if dtype == FP8:
        return head_dim + SCALE_BYTES
    return head_dim * torch.empty((), dtype=dtype).element_size()
