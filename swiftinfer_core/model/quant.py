"""Weight-only quantized formats for the GPU kernels (kernels/quant_gemv.py,
kernels/quant_gemm.py) and the CPU int4 path: quantize at load, pack, dequantize.

Both formats are symmetric (no zero points): w ~ q * scale.

- INT8: q int8 [N, K16] in -127..127, one scale per output row, scale [N] bfloat16.
  The same numbers as the CPU int8 path (model/cpu_weights.quantize_rows, reused),
  stored for the GPU kernels: K16 is K rounded up to 16 (q = 0 columns), and each
  16-byte block is "byte-planar", 4 little-endian int32 words where byte t of word
  j holds column 16 b + 4 t + j (pack_int8). The CPU int8 path keeps its own [N, K].
- INT4: q in -7..7, one scale per group of ``group`` consecutive inputs of a row,
  scale [N, Kp // group] bfloat16, Kp = K rounded up to a multiple of ``group``
  (the padding is q = 0; the kernels mask x beyond K, so it is never read as data).
  Stored offset-binary, nibble = q + 8 in 1..15, packed uint8 [N, Kp // 2] in
  "nibble-planar" blocks of 32 columns (16 bytes = 4 little-endian int32 words):
  within block b of a row, nibble i (bits 4i..4i+3) of word j holds column
  k = 32 b + 4 i + j. In bytes: byte 4 j + t of the block holds k = 32 b + 8 t + j
  (low nibble) and k = 32 b + 8 t + 4 + j (high nibble).

Why symmetric: one multiply per weight in the kernel and no zero-point tensor; the
group of 128 bounds how far one outlier stretches a scale. Asymmetric checkpoints
(GPTQ/AWQ zero points) are not read. Offset 8 with zero points 0 is also the
format of torch's CPU int4 op (``_weight_int4pack_mm_for_cpu``: w = (nibble - 8)
* scale + zero), which model/quant_linear.py uses on the CPU. -8 (nibble 0) is
left unused so that -q is representable, as int8 leaves -128.

Why nibble-planar: the GPU kernels (kernels/quant_gemv.py, quant_gemm.py) load a
row's packed bytes as contiguous 16-byte vectors of 4 words, and each of the 8
nibble positions of those words then covers 4 consecutive columns, so x is read
as 8 contiguous 4-element pieces per block (no stride-2 gathers), and the nibbles
become floats with one mask-and-or each, in place (no shift for 4 of the 8).
Blocks of 32 divide every group (>= 32), so a block never straddles two scales.

Scales are rounded to bfloat16 before q is chosen: q is then the nearest value
for the scale the kernel multiplies by (round to nearest, |w - q*s| <= s/2).

- FP8: q float8_e4m3fn [N, K], one float32 scale per output row (model/fp8.py,
  which also holds its kernels' reference math; model/fp8_linear.py runs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from swiftinfer_core.model.cpu_weights import quantize_rows
from swiftinfer_core.model.fp8 import dequantize_fp8, quantize_fp8

INT4_QMAX = 7
INT4_OFFSET = 8  # nibble = q + 8
INT4_BLOCK = 32  # columns per nibble-planar block: 16 bytes, 4 int32 words
INT8_BLOCK = 16  # int8 rows: whole byte-planar 16-byte blocks


class QuantFormat(str, Enum):
    INT8 = "int8"  # per output channel
    INT4 = "int4"  # per group of ``group`` inputs, two per byte
    FP8 = "fp8"  # e4m3, per output channel (model/fp8.py)


@dataclass(frozen=True)
class QuantizedWeight:
    """One linear layer's quantized weight: qweight int8 [N, K16] (INT8) or uint8
    [N, Kp // 2] (INT4); scales bfloat16 [N] (INT8) or [N, Kp // group] (INT4)."""

    fmt: QuantFormat
    qweight: torch.Tensor
    scales: torch.Tensor
    out_features: int  # N
    in_features: int  # K (before padding)
    group: int  # INT4 group size; K for INT8 (one group per row)


def check_group(group: int) -> None:
    """A group the kernels can tile: a power of two in 32..1024 (the GEMM splits a
    group into even/odd halves of >= 16 for tl.dot)."""
    if not (32 <= group <= 1024 and group & (group - 1) == 0):
        raise ValueError(f"int4 group size must be a power of two in 32..1024, got {group}")


def quantize_int4(w: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (packed uint8 [N, Kp // 2], scales bfloat16 [N, Kp // group])."""
    check_group(group)
    n, k = w.shape
    kp = -(-k // group) * group
    wf = torch.nn.functional.pad(w.detach().float(), (0, kp - k)).view(n, kp // group, group)
    amax = wf.abs().amax(dim=2)  # [N, G]
    scale = (amax / INT4_QMAX).clamp(min=torch.finfo(torch.float32).tiny).to(torch.bfloat16)
    q = torch.round(wf / scale.float()[..., None]).clamp_(-INT4_QMAX, INT4_QMAX).view(n, kp)
    return pack_int4(q.to(torch.int8)), scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q int8 [N, Kp] in -8..7 (Kp a multiple of 32) -> uint8 [N, Kp // 2], nibble-planar."""
    n, kp = q.shape
    if kp % INT4_BLOCK:
        raise ValueError(f"pack_int4 needs a multiple of {INT4_BLOCK} columns, got {kp}")
    nib = (q.to(torch.int16) + INT4_OFFSET).to(torch.uint8).view(n, kp // INT4_BLOCK, 4, 2, 4)  # [N, B, t, lo/hi, j]
    byte = nib[:, :, :, 0, :] | (nib[:, :, :, 1, :] << 4)  # [N, B, t, j]: k = 32b + 8t + j (+ 4 high)
    return byte.transpose(2, 3).reshape(n, kp // 2).contiguous()  # byte 4j + t of the block


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, Kp // 2] -> q int8 [N, Kp] in -8..7 (inverse of pack_int4)."""
    n, half = packed.shape
    byte = packed.view(n, half // 16, 4, 4).transpose(2, 3)  # [N, B, t, j]
    lo = (byte & 0xF).to(torch.int8) - INT4_OFFSET
    hi = (byte >> 4).to(torch.int8) - INT4_OFFSET
    return torch.stack([lo, hi], dim=3).reshape(n, 2 * half)  # [N, B, t, lo/hi, j] -> k order


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """q int8 [N, K16] (K16 a multiple of 16) -> the byte-planar int8 [N, K16]."""
    n, k16 = q.shape
    if k16 % INT8_BLOCK:
        raise ValueError(f"pack_int8 needs a multiple of {INT8_BLOCK} columns, got {k16}")
    return q.view(n, k16 // 16, 4, 4).transpose(2, 3).reshape(n, k16).contiguous()  # [N, B, t, j] -> [N, B, j, t]


def unpack_int8(packed: torch.Tensor) -> torch.Tensor:
    """Byte-planar int8 [N, K16] -> q int8 [N, K16] in column order (inverse of pack_int8)."""
    n, k16 = packed.shape
    return packed.view(n, k16 // 16, 4, 4).transpose(2, 3).reshape(n, k16)


def quantize(w: torch.Tensor, fmt: QuantFormat, group: int = 128) -> QuantizedWeight:
    """w [N, K] float (any device) -> its QuantizedWeight on the same device."""
    n, k = w.shape
    if fmt is QuantFormat.INT8:
        q, s = quantize_rows(w)
        q = pack_int8(torch.nn.functional.pad(q, (0, -k % INT8_BLOCK)))  # [N, K16]
        return QuantizedWeight(fmt, q, s, n, k, k)
    if fmt is QuantFormat.FP8:
        q, s = quantize_fp8(w)
        return QuantizedWeight(fmt, q, s, n, k, k)
    q, s = quantize_int4(w, group)
    return QuantizedWeight(fmt, q, s, n, k, group)


def dequantize(qw: QuantizedWeight) -> torch.Tensor:
    """[N, K] float32: the weight the kernels multiply by (padding dropped)."""
    if qw.fmt is QuantFormat.INT8:
        return unpack_int8(qw.qweight)[:, : qw.in_features].float() * qw.scales.float()[:, None]
    if qw.fmt is QuantFormat.FP8:
        return dequantize_fp8(qw.qweight, qw.scales)
    q = unpack_int4(qw.qweight).float()  # [N, Kp]
    s = qw.scales.float().repeat_interleave(qw.group, dim=1)  # [N, Kp]
    return (q * s)[:, : qw.in_features]


def weight_bytes(fmt: QuantFormat | None, n: int, k: int, group: int = 128, float_bytes: int = 2) -> int:
    """Bytes one [N, K] weight occupies in ``fmt`` (None: float of ``float_bytes``),
    scales included: what one batch-1 product must read (the roofline)."""
    if fmt is None:
        return n * k * float_bytes
    if fmt is QuantFormat.INT8:
        return n * (-(-k // INT8_BLOCK) * INT8_BLOCK) + n * 2
    if fmt is QuantFormat.FP8:
        return n * k + n * 4
    kp = -(-k // group) * group
    return n * kp // 2 + n * (kp // group) * 2
