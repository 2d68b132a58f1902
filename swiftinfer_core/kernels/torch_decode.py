"""CPU attention with a lean one-token decode path (the CPU engine's default).

``TorchAttention`` (reference.py) is the semantics: per layer it gathers the
attended rows in stream order, rebuilds cos/sin for every key, rotates the
query twice (window and sink positions), expands the KV heads to the query
heads and masks a [Hq, C, K] score matrix. On a 2-core CPU that was half of a
decode step of the default model (bench/results/cpu_decode_profile.md).

For a step in which every sequence feeds one token, ``CpuAttention`` does the
same function with less work:

- The new token's K/V are written first, into its ring row ``layout.row(t)``;
  it overwrites the window token ``t - window``, which ``t`` no longer attends.
  Then the query attends over the slot's filled rows ``0 .. fill-1`` as they
  lie, a contiguous slice: no gather, no concatenation, no mask (every filled
  row is attended). Softmax does not depend on the order of the keys.
- Positions (cache/layout.py): the attended keys in stream order sit at cache
  positions 0..K-1 and the query at K-1, so for one query the window and sink
  rotations coincide. Row ``r`` holds position ``r`` until the cache is full;
  after, a window row ``r`` holds position ``cap-1 - ((row(t) - r) mod window)``.
  cos/sin come from one table over positions 0..cap-1 computed as
  ``rope.rotate`` computes them, gathered once per step for all layers.
- GQA without repeat_interleave: q [Hkv, group, D] against k [Hkv, F, D].
- With ``kernels`` (kernels/cpu_native.py) and a float32 cache, each sequence's
  attention is one C call (cpu_native_attn.c): the same steps with
  every key rotated on the fly as it is read, nothing materialised; ~20 torch
  ops per layer become one.

- FP8 caches (cache/kv_fp8.Fp8KV): the new token is stored quantised, the filled
  rows are read back dequantised (a float32 copy), and the new token's own row
  in that copy is its K/V as computed, as the Triton decode kernel scores it
  (from k_new) and as the reference does. The C kernel takes float32 caches
  only, so FP8 runs the torch ops.

Prefill and mixed steps take the reference path unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swiftinfer_core.cache.kv_fp8 import Fp8KV
from swiftinfer_core.kernels.attention import TorchAttention
from swiftinfer_core.kernels.batch import AttnBatch


@dataclass
class _DecodeSeq:
    slot: int
    row: int  # cache row the new token is written to
    fill: int  # rows attended once it is written (1 .. capacity)
    cos: torch.Tensor  # [fill, D] float32 per cache row: (c, c)
    sin: torch.Tensor  # [fill, D]: (-s, s), the sign of rotate_half folded in
    q_cos: torch.Tensor  # [D] at the query position fill-1
    q_sin: torch.Tensor


@dataclass
class CpuDecodePlan:
    seqs: list[_DecodeSeq]


class CpuAttention(TorchAttention):
    """TorchAttention with the one-token decode path described above."""

    def __init__(self, layout, freqs, scale, kernels=None):
        super().__init__(layout, freqs, scale)
        self.kernels = kernels  # cpu_native.NativeKernels, or None: torch ops
        # [capacity, D/2]: angles as rope.rotate forms them (float32 position * float32 freq)
        ang = torch.arange(layout.capacity, dtype=torch.float32)[:, None] * self.freqs.cpu()[None, :]
        self._cos = torch.cat([ang.cos(), ang.cos()], dim=-1)  # [capacity, D]
        self._sin = torch.cat([-ang.sin(), ang.sin()], dim=-1)

    def row_positions(self, t: int) -> torch.Tensor:
        """[fill] long: cache position of the key in each row 0..fill-1 once token t is written."""
        lay = self.layout
        cap = lay.capacity
        if t < cap:
            return torch.arange(t + 1)
        r = torch.arange(cap)
        win = cap - 1 - torch.remainder(lay.row(t) - r, lay.window)
        return torch.where(r < lay.sinks, r, win)

    def prepare(self, batch: AttnBatch):
        if not batch.is_decode or batch.slots.device.type != "cpu":
            return super().prepare(batch)
        seqs = []
        for slot, t in zip(batch.slots_list, batch.starts_list):
            pos = self.row_positions(t)
            qp = int(pos.numel()) - 1  # query position: min(t, cap-1)
            seqs.append(_DecodeSeq(slot, self.layout.row(t), pos.numel(), self._cos[pos], self._sin[pos],
                                   self._cos[qp], self._sin[qp]))
        return CpuDecodePlan(seqs)

    def forward(self, plan, q, k_new, v_new, k_cache, v_cache, layer: int | None = None) -> torch.Tensor:
        """``layer`` is accepted for the protocol: every layer attends alike here (runner/build.py plain_attention)."""
        if not isinstance(plan, CpuDecodePlan):
            return super().forward(plan, q, k_new, v_new, k_cache, v_cache, layer)
        # q [B, Hq, D]; k_new/v_new [B, Hkv, D]; caches [slots, Hkv, cap, D]
        B, hq, D = q.shape
        hkv, h = k_new.shape[1], D // 2  # h: rotate_half's shift
        out = torch.empty_like(q)
        native = self.kernels is not None and q.dtype == k_cache.dtype == torch.float32
        for i, s in enumerate(plan.seqs):
            if s.slot < 0:  # a padding row (runner/cuda_graph.py): no cache, zero output
                out[i] = 0
                continue
            if native:
                self.kernels.attn_decode(q[i].contiguous(), k_new[i].contiguous(), v_new[i].contiguous(), k_cache[s.slot],
                                         v_cache[s.slot], s.row, s.fill, s.cos, s.sin, s.q_cos, s.q_sin, self.scale, out[i])
                continue
            k_cache[s.slot, :, s.row] = k_new[i]
            v_cache[s.slot, :, s.row] = v_new[i]
            if isinstance(k_cache, Fp8KV):
                k = k_cache[s.slot, :, : s.fill].dequantize()  # [Hkv, F, D] float32 copies
                v = v_cache[s.slot, :, : s.fill].dequantize()
                k[:, s.row], v[:, s.row] = k_new[i].float(), v_new[i].float()
            else:
                k = k_cache[s.slot, :, : s.fill].float()  # [Hkv, F, D], a view for float32 caches
                v = v_cache[s.slot, :, : s.fill].float()
            k_rot = _rotate(k, s.cos, s.sin, h)  # [Hkv, F, D]
            qr = _rotate(q[i].float().view(hkv, hq // hkv, D), s.q_cos, s.q_sin, h)  # [Hkv, g, D]
            scores = torch.matmul(qr, k_rot.transpose(1, 2)) * self.scale  # [Hkv, g, F]
            o = torch.matmul(torch.softmax(scores, dim=-1), v)  # [Hkv, g, D]
            out[i] = o.reshape(hq, D).to(q.dtype)
        return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, h: int) -> torch.Tensor:
    """rope.rotate's arithmetic in 4 ops: x [..., N, D] (or [..., D] with cos [D]),
    cos (c, c) and sin (-s, s) [N, D]: x*cos + roll(x, h)*sin = (x1*c - x2*s, x2*c + x1*s),
    the same products and sums as rope.rotate's x*cos + rotate_half(x)*sin."""
    return x * cos + torch.roll(x, h, dims=-1) * sin
