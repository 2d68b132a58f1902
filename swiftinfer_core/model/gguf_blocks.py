"""GGUF's block-quantized tensors kept compact: Q8_0, Q4_0, Q4_1 and Q4_K.

A GGUF matrix of shape [N, K] (N output rows, K inputs; gguf lists it as
[K, N]) is stored row by row in blocks along K. Read here into torch tensors
without expanding the weights to float (``GGUFBlocks``), all of them in groups
of 32 consecutive inputs of a row (G = K / 32 groups per row):

- Q8_0 (34 bytes per 32): f16 d, 32 int8 q; w = d * q.
  Kept as ``qs`` int8 [N, K], ``d`` float16 [N, G].
- Q4_0 (18 bytes per 32): f16 d, 16 bytes of nibbles; w = d * (q - 8).
- Q4_1 (20 bytes per 32): f16 d, f16 m, 16 bytes; w = d * q + m.
  Both kept as ``qs`` uint8 [N, K / 2] in the file's own nibble order: byte j
  of a group holds input j (low nibble) and input j + 16 (high nibble);
  ``d`` (and ``m``) float16 [N, G].
- Q4_K (144 bytes per super-block of 256): f16 d, f16 dmin, 12 bytes of 6-bit
  scales sc[8] and mins mn[8] (one per 32), 128 bytes of nibbles in which byte j
  of each 32-byte chunk c holds input 64 c + j (low) and 64 c + 32 + j (high);
  w = (d * sc) * q - (dmin * mn). Kept as: the nibbles repacked losslessly into
  the Q4_0 order above (same bytes), ``d``/``dmin`` float16 [N, K / 256] and
  ``sc``/``mn`` uint8 [N, G]. The per-group float32 scale d * sc and offset
  -(dmin * mn) are formed when multiplying (``group_scales``).

``dequantize`` gives the float32 weights exactly as ``gguf.quants.dequantize``
(the same float32 operations in the same order; tests/test_gguf_blocks.py
checks bit equality), and ``group_scales`` returns (s, o) with w = s * q + o per
group, equal in value too (for Q4_0, o = -8 d: d * q and -8 d are exact in
float32, so their sum rounds once, as d * (q - 8) does; only a zero's sign may differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GROUP = 32
QK_K = 256
FORMATS = ("Q8_0", "Q4_0", "Q4_1", "Q4_K")
_BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q4_K": 144}
_BLOCK_SIZE = {"Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q4_K": QK_K}


@dataclass
class GGUFBlocks:
    """One [N, K] matrix in a GGUF block format, compact (see the module doc)."""

    qtype: str
    qs: torch.Tensor  # int8 [N, K] (Q8_0) or uint8 [N, K // 2] (4-bit types)
    d: torch.Tensor  # float16 [N, G] (Q4_K: [N, K // 256])
    m: torch.Tensor | None = None  # Q4_1: float16 [N, G]; Q4_K: dmin float16 [N, K // 256]
    sc: torch.Tensor | None = None  # Q4_K: uint8 [N, G] 6-bit scales
    mn: torch.Tensor | None = None  # Q4_K: uint8 [N, G] 6-bit mins

    @property
    def shape(self) -> tuple[int, int]:
        n = self.qs.shape[0]
        return n, self.qs.shape[1] * (1 if self.qtype == "Q8_0" else 2)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qs, self.d, self.m, self.sc, self.mn) if t is not None)

    def _map(self, fn) -> GGUFBlocks:
        f = lambda t: None if t is None else fn(t)  # noqa: E731
        return GGUFBlocks(self.qtype, fn(self.qs), fn(self.d), f(self.m), f(self.sc), f(self.mn))

    def rows(self, index: torch.Tensor) -> GGUFBlocks:
        """The rows ``index`` (rows are independent: exact)."""
        return self._map(lambda t: t.index_select(0, index).contiguous())

    def to(self, device) -> GGUFBlocks:
        return self._map(lambda t: t.to(device))

    def codes(self) -> torch.Tensor:
        """The quantized values as uint8/int8 [N, G, 32] (4-bit types: 0..15)."""
        n, k = self.shape
        if self.qtype == "Q8_0":
            return self.qs.view(n, k // GROUP, GROUP)
        b = self.qs.view(n, k // GROUP, GROUP // 2)
        return torch.cat([b & 0x0F, b >> 4], dim=-1)

    def group_scales(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(s, o) float32 [N, G] with w = s * q + o per group (o None for Q8_0)."""
        if self.qtype == "Q8_0":
            return self.d.float(), None
        if self.qtype == "Q4_0":
            d = self.d.float()
            return d, d * -8.0
        if self.qtype == "Q4_1":
            return self.d.float(), self.m.float()
        per = QK_K // GROUP  # Q4_K: 8 groups per super-block
        d = self.d.float().repeat_interleave(per, dim=1)
        dmin = self.m.float().repeat_interleave(per, dim=1)
        return d * self.sc.float(), -(dmin * self.mn.float())

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K], bit for bit gguf.quants.dequantize's values."""
        n, k = self.shape
        q = self.codes()
        if self.qtype == "Q8_0":
            w = q.float() * self.d.float()[..., None]
        elif self.qtype == "Q4_0":
            w = self.d.float()[..., None] * (q.to(torch.int8) - 8).float()
        elif self.qtype == "Q4_1":
            w = self.d.float()[..., None] * q.float() + self.m.float()[..., None]
        else:
            s, o = self.group_scales()
            w = s[..., None] * q.float() - (-o)[..., None]
        return w.reshape(n, k)


def cat_rows(blocks: list[GGUFBlocks]) -> GGUFBlocks:
    """Stack matrices of one format and K along the rows (N)."""
    first = blocks[0]
    if any(b.qtype != first.qtype or b.shape[1] != first.shape[1] for b in blocks):
        raise ValueError("cat_rows: all parts need one format and one K, got "
                         + ", ".join(f"{b.qtype} {b.shape}" for b in blocks))
    c = lambda ts: None if ts[0] is None else torch.cat(ts).contiguous()  # noqa: E731
    return GGUFBlocks(first.qtype, c([b.qs for b in blocks]), c([b.d for b in blocks]), c([b.m for b in blocks]),
                      c([b.sc for b in blocks]), c([b.mn for b in blocks]))


def _f16(b: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 2] little-endian -> float16 [...]."""
    return b.contiguous().view(torch.float16).squeeze(-1)


def _q4k_scale_min(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes [..., 12] -> 6-bit scales and mins uint8 [..., 8] (gguf's Q4_K.get_scale_min)."""
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def from_bytes(qtype: str, raw, n: int, k: int) -> GGUFBlocks:
    """A matrix of ``n`` rows and ``k`` inputs from its GGUF block bytes (numpy or
    torch uint8, [n, row_bytes] or flat); the bytes are copied, not kept."""
    if qtype not in FORMATS:
        raise ValueError(f"GGUF type {qtype} is not read compact (only {', '.join(FORMATS)})")
    size, nb = _BLOCK_SIZE[qtype], _BLOCK_BYTES[qtype]
    if k % size:
        raise ValueError(f"{qtype}: K = {k} is not a multiple of its block of {size}")
    t = torch.from_numpy(np.array(raw, dtype=np.uint8)) if not isinstance(raw, torch.Tensor) else raw  # a writable copy
    blocks = t.reshape(n, k // size, nb)
    if qtype == "Q8_0":
        return GGUFBlocks(qtype, blocks[..., 2:].contiguous().view(torch.int8).reshape(n, k), _f16(blocks[..., 0:2]))
    if qtype == "Q4_0":
        return GGUFBlocks(qtype, blocks[..., 2:].reshape(n, k // 2).contiguous(), _f16(blocks[..., 0:2]))
    if qtype == "Q4_1":
        return GGUFBlocks(qtype, blocks[..., 4:].reshape(n, k // 2).contiguous(), _f16(blocks[..., 0:2]),
                          _f16(blocks[..., 2:4]))
    # Q4_K: chunk c (32 bytes) holds inputs 64c..64c+31 (low nibbles) and 64c+32.. (high)
    d, dmin = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
    sc, mn = _q4k_scale_min(blocks[..., 4:16])
    chunks = blocks[..., 16:].reshape(n, k // size, 4, 32)
    vals = torch.stack([chunks & 0x0F, chunks >> 4], dim=3).reshape(n, k // GROUP, GROUP)  # [.., c, lo/hi, 32]
    packed = vals[..., :16] | (vals[..., 16:] << 4)  # Q4_0 order: byte j = input j | input j + 16
    return GGUFBlocks(qtype, packed.reshape(n, k // 2).contiguous(), d, dmin, sc.reshape(n, -1).contiguous(),
                      mn.reshape(n, -1).contiguous())


def read_tensor(tensor) -> GGUFBlocks:
    """A ``gguf.GGUFReader`` tensor of a block type -> GGUFBlocks (copied out of the mmap)."""
    k, n = int(tensor.shape[0]), int(np.prod(tensor.shape[1:]))
    return from_bytes(tensor.tensor_type.name, tensor.data, n, k)
