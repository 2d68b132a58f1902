"""Weight-only quantized formats for the GPU kernels (kernels/quant_gemv.py,
kernels/quant_gemm.py) and the CPU int4 path: quantize at load, pack, dequantize.

INT8 and INT4 are symmetric (no zero points): w ~ q * scale. INT4 also has an
asymmetric variant (``zero_point``, below).

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
group of 128 bounds how far one outlier stretches a scale. Offset 8 with zero
points 0 is also the format of torch's CPU int4 op (``_weight_int4pack_mm_for_cpu``:
w = (nibble - 8) * scale + zero), which model/quant_linear.py uses on the CPU. -8
(nibble 0) is left unused so that -q is representable, as int8 leaves -128.

- INT4 with zero points (``zero_point=True``, EngineConfig.quant_zero_point): the
  same packed nibbles, all of 0..15 used, and per group a float16 scale AND a
  float16 min, ``mins`` [N, Kp // group] beside ``scales``: w = nibble * scale + min.
  Quantized by min/max per group: scale = (max - min) / 15 and min, both rounded to
  float16, then nibble = round((w - min) / scale) clamped to 0..15 (so |w - w'| <=
  scale / 2 within the group's range). The padding past K is nibble 0 (the kernels
  mask x there). This is GGUF's Q4_1 (blocks of 32, float16 d and m): with group 32
  a model converted from a Q4_1 file, whose quantizer puts each block's min at code
  0 and its max at code 15, gets the file's codes, scales and mins back: the default
  model's 210 decoder matrices bit for bit (tests/model/test_quant_zp_model.py;
  fidelity to weights that were Q4_1 already, not int4's cost on float weights:
  docs/quantization.md "Zero points"). float16, not bf16, for
  both: Q4_1's own dtype, and 11 mantissa bits, so re-quantizing a Q4_1 block does
  not move its scale (weights beyond float16's range are refused). The kernels use
  q = nibble - 8 (the symmetric decode, unchanged) and zero = min + 8 * scale, torch's
  CPU convention (whose op rounds scale and zero to bf16: model/quant_linear.py);
  asymmetric checkpoints with their own zero points (GPTQ/AWQ) are still not read:
  the zero point is computed here at load from the float weights.

Why nibble-planar: the GPU kernels (kernels/quant_gemv.py, quant_gemm.py) load a
row's packed bytes as contiguous 16-byte vectors of 4 words, and each of the 8
nibble positions of those words then covers 4 consecutive columns, so x is read
as 8 contiguous 4-element pieces per block (no stride-2 gathers), and the nibbles
become floats with one mask-and-or each, in place (no shift for 4 of the 8).
Blocks of 32 divide every group (>= 32), so a block never straddles two scales.

Scales (bfloat16; zero points: float16 scale and min) are rounded before q is
chosen: q is then the nearest value for the scale the kernel multiplies by (round
to nearest, |w - q*s| <= s/2).

- FP8: q float8_e4m3fn [N, K], one float32 scale per output row (model/fp8.py,
  which also holds its kernels' reference math; model/fp8_linear.py runs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

from swiftinfer_core.model.cpu_weights import quantize_rows
from swiftinfer_core.model.fp8 import dequantize_fp8, quantize_fp8

INT4_QMAX = 7
INT4_LEVELS = 15  # with zero points: nibbles 0..15
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
    [N, Kp // 2] (INT4); scales bfloat16 [N] (INT8) or [N, Kp // group] (INT4; float16
    with zero points); mins float16 [N, Kp // group] for INT4 with zero points, else None;
    in_perm int64 [K] when the stored columns are the layer's inputs reordered (GPTQ's
    act-order: each group's inputs gathered), so the layer computes W_stored @ x[in_perm]."""

    fmt: QuantFormat
    qweight: torch.Tensor
    scales: torch.Tensor
    out_features: int  # N
    in_features: int  # K (before padding)
    group: int  # INT4 group size; K for INT8 (one group per row)
    mins: torch.Tensor | None = None  # INT4 with zero points: w = (q + 8) * scale + min
    in_perm: torch.Tensor | None = None  # stored column j multiplies input in_perm[j]

    @property
    def zero_point(self) -> bool:
        return self.mins is not None


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


def quantize_int4_zp(w: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (packed uint8 [N, Kp // 2], scales float16 [N, Kp // group],
    mins float16 [N, Kp // group]): min/max per group, round to nearest (module doc)."""
    check_group(group)
    n, k = w.shape
    kp = -(-k // group) * group
    wf = w.detach().float()
    if not torch.isfinite(wf).all():
        raise ValueError("asymmetric int4: the weight holds inf or NaN")
    pad = (0, kp - k)
    lo = F.pad(wf, pad, value=float("inf")).view(n, kp // group, group).amin(dim=2)  # [N, G]: padding left out
    hi = F.pad(wf, pad, value=float("-inf")).view(n, kp // group, group).amax(dim=2)
    mins = lo.to(torch.float16)
    scales = ((hi - lo) / INT4_LEVELS).to(torch.float16)
    if not (torch.isfinite(mins).all() and torch.isfinite(scales).all()):
        raise ValueError("asymmetric int4 stores float16 scales and mins: this weight exceeds float16's range")
    s = scales.float()[..., None]
    wg = F.pad(wf, pad).view(n, kp // group, group)
    nib = torch.where(s > 0, torch.round((wg - mins.float()[..., None]) / s.clamp(min=torch.finfo(torch.float32).tiny)),
                      torch.zeros_like(wg)).clamp_(0, INT4_LEVELS).view(n, kp)
    nib[:, k:] = 0  # padding: x is 0 there (the kernels mask it; the CPU path pads x with zeros)
    return pack_int4((nib - INT4_OFFSET).to(torch.int8)), scales, mins


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


def quantize(w: torch.Tensor, fmt: QuantFormat, group: int = 128, zero_point: bool = False) -> QuantizedWeight:
    """w [N, K] float (any device) -> its QuantizedWeight on the same device.
    ``zero_point``: INT4 only, the asymmetric variant (module doc)."""
    n, k = w.shape
    if zero_point:
        if fmt is not QuantFormat.INT4:
            raise ValueError(f"zero points exist for int4 only, not {fmt.value}")
        p, s, m = quantize_int4_zp(w, group)
        return QuantizedWeight(fmt, p, s, n, k, group, m)
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
    """[N, K] float32: the weight the kernels multiply by (padding dropped), in the
    layer's input order (an ``in_perm`` undone)."""
    w = _dequantize_stored(qw)
    if qw.in_perm is None:
        return w
    out = torch.empty_like(w)
    out[:, qw.in_perm.to(w.device)] = w
    return out


def _dequantize_stored(qw: QuantizedWeight) -> torch.Tensor:
    if qw.fmt is QuantFormat.INT8:
        return unpack_int8(qw.qweight)[:, : qw.in_features].float() * qw.scales.float()[:, None]
    if qw.fmt is QuantFormat.FP8:
        return dequantize_fp8(qw.qweight, qw.scales)
    q = unpack_int4(qw.qweight).float()  # [N, Kp]
    s = qw.scales.float().repeat_interleave(qw.group, dim=1)  # [N, Kp]
    if qw.mins is not None:  # nibble * scale + min, in float32 as GGUF's Q4_1 dequantisation
        return ((q + INT4_OFFSET) * s + qw.mins.float().repeat_interleave(qw.group, dim=1))[:, : qw.in_features]
    return (q * s)[:, : qw.in_features]


def weight_bytes(fmt: QuantFormat | None, n: int, k: int, group: int = 128, float_bytes: int = 2,
                 zero_point: bool = False) -> int:
    """Bytes one [N, K] weight occupies in ``fmt`` (None: float of ``float_bytes``),
    scales (and int4's mins with ``zero_point``) included: what one batch-1 product
    must read (the roofline)."""
    if fmt is None:
        return n * k * float_bytes
    if fmt is QuantFormat.INT8:
        return n * (-(-k // INT8_BLOCK) * INT8_BLOCK) + n * 2
    if fmt is QuantFormat.FP8:
        return n * k + n * 4
    kp = -(-k // group) * group
    return n * kp // 2 + n * (kp // group) * (4 if zero_point else 2)
