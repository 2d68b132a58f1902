"""The model's one entry to streaming attention: pick a backend object by config.

    attn = ATTENTION_BACKENDS["triton"](layout, freqs, scale)
    plan = attn.prepare(batch)                 # once per step, shared by all layers
    out = attn.forward(plan, q, k_new, v_new, k_cache, v_cache)   # per layer

A model whose layers attend differently (Gemma's local sliding-window layers,
per-layer RoPE theta, ALiBi slopes, soft-capping) gives one ``LayerAttn`` per
layer; ``forward(..., layer=i)`` uses layer ``i``'s. Without ``layers`` every
layer uses the backend's own freqs and scale.

``forward`` takes q [T, Hq, D], k_new/v_new [T, Hkv, D] (pre-RoPE, may be strided
views of a fused qkv projection, last dim contiguous) and one layer's caches
[slots, Hkv, capacity, D]; it returns out [T, Hq, D] and leaves this step's
tokens stored in the ring (attention first, then the write, for prefill; the
decode kernel scores the new token from k_new and writes it itself).

A mixed step (sequences feeding one token first, prefill chunks after) runs as
one forward too: ``prepare`` returns a ``MixedPlan`` and each layer sends the
single-token rows through the decode kernel and the chunks through the prefill
kernel, so the step reads the weights once and no decode row walks the window
in the prefill kernel's 64-row query tiles.

Triton decode is CUDA-graph friendly: ``prepare`` builds every device tensor
(slots, starts, split-K workspace) once per step; the per-layer call does no
host work but two kernel launches. To replay a captured graph with new
sequences, ``plan.refresh(batch)`` copies the new slots/starts into the same
tensors (same batch size; slot -1 marks a padding row).

A cache may be FP8 (cache/kv_fp8.py): each layer's k_cache/v_cache is then an
``Fp8KV`` (e4m3 rows + per-row scales) instead of a tensor. The torch paths index
it like a tensor; TritonAttention hands data and scales to the kernels, which
dequantise as they read.

Importing this module does not import triton; TritonAttention does, when built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch

from swiftinfer_core.cache import kv_fp8
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.reference import LayerAttn, plan_step, streaming_attention_ref, write_cache_ref


class Attention(ABC):
    """Streaming attention for one model: layout, RoPE frequencies [D/2] and scale are fixed
    (per layer when ``layers`` is given)."""

    def __init__(self, layout: StreamLayout, freqs: torch.Tensor, scale: float, layers: list[LayerAttn] | None = None):
        self.layout, self.freqs, self.scale = layout, freqs.float(), float(scale)
        self.layers = list(layers) if layers else None
        self.base = LayerAttn(self.freqs, self.scale)

    def spec(self, layer: int | None) -> LayerAttn:
        return self.base if layer is None or self.layers is None else self.layers[layer]

    @abstractmethod
    def prepare(self, batch: AttnBatch):
        """Per-step index work shared by every layer; returns an opaque plan."""

    @abstractmethod
    def forward(self, plan, q, k_new, v_new, k_cache, v_cache, layer: int | None = None) -> torch.Tensor:
        """One layer: attention output [T, Hq, D]; stores the step's K/V in the cache."""

    def mixed_split(self, plan) -> tuple[int, object]:
        """(n, plan of the rest) where ``plan`` sends its first n rows through the decode kernel
        (a mixed step); (0, plan) otherwise."""
        return 0, plan


@dataclass
class TorchPlan:
    batch: AttnBatch
    seqs: list  # reference._SeqPlan per sequence


class TorchAttention(Attention):
    """Plain PyTorch reference (CPU engine, and the semantics the kernels match)."""

    def prepare(self, batch: AttnBatch) -> TorchPlan:
        return TorchPlan(batch, plan_step(batch, self.layout, batch.slots.device))

    def forward(self, plan: TorchPlan, q, k_new, v_new, k_cache, v_cache, layer: int | None = None) -> torch.Tensor:
        spec = self.spec(layer)
        out = streaming_attention_ref(q, k_new, v_new, k_cache, v_cache, plan.seqs, spec.freqs.to(q.device), spec.scale, spec)
        write_cache_ref(k_new, v_new, k_cache, v_cache, plan.batch, self.layout)
        return out


@dataclass
class DecodePlan:
    """Static-shape device state of a decode step (all sequences feed one token)."""

    slots: torch.Tensor  # [B] int32, -1 = padding row
    starts: torch.Tensor  # [B] int64, stream index of each query
    # split-K shape (splits, keys per split), partials [B,Hq,S,D], [B,Hq,S,2] and
    # fused-combine counters [B*Hkv]: made by the first layer's call, reused by
    # every later layer of the step
    splits: tuple[int, int] | None = None
    workspace: tuple[torch.Tensor, torch.Tensor] | None = None

    def refresh(self, batch: AttnBatch) -> None:
        """New slots/starts into the same tensors (for CUDA-graph replay)."""
        assert batch.is_decode and batch.num_seqs == self.slots.shape[0]
        self.slots.copy_(batch.slots, non_blocking=True)
        self.starts.copy_(batch.starts, non_blocking=True)


@dataclass
class PrefillPlan:
    batch: AttnBatch
    tok_seq: torch.Tensor  # [T] int32: sequence of each packed row
    max_q_len: int


@dataclass
class MixedPlan:
    """A step whose first ``n_decode`` sequences feed one token each (rows ``:n_decode``,
    decode kernel) and whose other sequences are prefill chunks (prefill kernel)."""

    decode: DecodePlan
    prefill: PrefillPlan
    n_decode: int


# Decode tiles over an FP8 cache with a bf16/fp16 query (the float16 tile path): 128 keys, 4 stages. On one H100
# at 4+2044 (bench/results/kernels_decode_fp8_regs.json), 32 and 128 conversations, MHA and GQA, fp8's best point
# (128-key tiles) took 0.72-0.85x the time of the bf16 cache's 64-key default, where fp8 at that default took 0.92-1.10x.
FP8_DECODE_TILES = (128, 4)  # (block_n, stages)


class TritonAttention(Attention):
    """Triton kernels: decode_attention.py (write fused), prefill_attention.py + write_cache.py."""

    def __init__(self, layout: StreamLayout, freqs: torch.Tensor, scale: float, layers: list[LayerAttn] | None = None, *,
                 block_n: int = 64, num_warps: int = 4, waves: int | None = None, stages: int = 3, fused_combine: bool = False):
        super().__init__(layout, freqs, scale, layers)
        from swiftinfer_core.kernels import decode_attention, decode_splits, prefill_attention, triton_common, write_cache  # needs triton

        self._decode, self._prefill, self._write = decode_attention, prefill_attention, write_cache
        self._splits, self._common = decode_splits, triton_common
        self.block_n, self.num_warps, self.waves, self.stages = block_n, num_warps, waves, stages
        self.fused_combine = fused_combine
        self._dev: dict[tuple[int | None, torch.device], LayerAttn] = {}

    def _spec(self, layer: int | None, device) -> LayerAttn:
        """The layer's spec with its tensors on ``device`` (moved once, then cached)."""
        key = (None if self.layers is None else layer, device)
        if key not in self._dev:
            s = self.spec(layer)
            alibi = None if s.alibi is None else s.alibi.float().to(device).contiguous()
            self._dev[key] = replace(s, freqs=s.freqs.float().to(device).contiguous(), alibi=alibi)
        return self._dev[key]

    def prepare(self, batch: AttnBatch):
        if batch.is_decode:
            return DecodePlan(batch.slots, batch.starts)
        n = batch.leading_single_rows()
        if n:
            return MixedPlan(DecodePlan(batch.slots[:n], batch.starts[:n]), self._prefill_plan(batch.tail(n)), n)
        return self._prefill_plan(batch)

    def mixed_split(self, plan) -> tuple[int, object]:
        return (plan.n_decode, plan.prefill) if isinstance(plan, MixedPlan) else (0, plan)

    @staticmethod
    def _prefill_plan(batch: AttnBatch) -> PrefillPlan:
        seq = [i for i, c in enumerate(batch.q_lens_list) for _ in range(c)]
        tok_seq = torch.tensor(seq, dtype=torch.int32, device=batch.slots.device)
        return PrefillPlan(batch, tok_seq, max(batch.q_lens_list, default=0))

    def _decode_tiles(self, q: torch.Tensor, fp8: bool) -> tuple[int, int]:
        """(block_n, stages) of the decode kernel: FP8_DECODE_TILES where it runs its float16 tiles."""
        return FP8_DECODE_TILES if self._decode.f16_tiles(q.dtype, fp8, q.shape[-1]) else (self.block_n, self.stages)

    def _decode_workspace(self, plan: DecodePlan, q: torch.Tensor, hkv: int, block_n: int) -> None:
        B, hq, D = q.shape
        ws = plan.workspace
        if ws is None or ws[0].shape[1] != hq or ws[0].shape[3] != self._common.padded(D):
            sms = self._common.sm_count(q.device)
            plan.splits = self._splits.decode_splits(B, hkv, self.layout.capacity, block_n, sms, self.waves)
            plan.workspace = self._splits.decode_workspace(B, hq, hkv, D, plan.splits[0], q.device)

    def forward(self, plan, q, k_new, v_new, k_cache, v_cache, layer: int | None = None) -> torch.Tensor:
        # QK-norm (Qwen3, Gemma 3, MPT qk_ln): k is a new tensor, v a view of qkv. The kernels read both with
        # one set of strides, so the pair is packed, once per step (a mixed step's halves slice the packed pair).
        if k_new.stride() != v_new.stride():
            k_new, v_new = torch.stack([k_new, v_new])
        if isinstance(plan, MixedPlan):
            n = plan.n_decode
            return torch.cat([self.forward(plan.decode, q[:n], k_new[:n], v_new[:n], k_cache, v_cache, layer),
                              self.forward(plan.prefill, q[n:], k_new[n:], v_new[n:], k_cache, v_cache, layer)])
        lay, spec = self.layout, self._spec(layer, q.device)
        freqs = spec.freqs
        (k_cache, ks), (v_cache, vs) = kv_fp8.split(k_cache), kv_fp8.split(v_cache)  # scales None unless FP8
        if isinstance(plan, DecodePlan):
            block_n, stages = self._decode_tiles(q, ks is not None)
            self._decode_workspace(plan, q, k_cache.shape[1], block_n)
            return self._decode.decode_attention(
                q, k_new, v_new, k_cache, v_cache, plan.slots, plan.starts, freqs, spec.scale,
                lay.sinks, lay.window, fuse_write=True, block_n=block_n,
                num_warps=self.num_warps, stages=stages, splits=plan.splits, workspace=plan.workspace,
                fused_combine=self.fused_combine, sliding_window=spec.sliding_window, alibi=spec.alibi, softcap=spec.softcap,
                k_scale=ks, v_scale=vs,
            )
        b = plan.batch
        out = self._prefill.prefill_attention(
            q, k_new, v_new, k_cache, v_cache, b.slots, b.starts, b.cu_seqlens, plan.max_q_len,
            freqs, spec.scale, lay.sinks, lay.window,
            sliding_window=spec.sliding_window, alibi=spec.alibi, softcap=spec.softcap, k_scale=ks, v_scale=vs,
        )
        self._write.write_kv(k_new, v_new, k_cache, v_cache, plan.tok_seq, b.slots, b.starts, b.cu_seqlens, lay.sinks, lay.window,
                             k_scale=ks, v_scale=vs)
        return out


ATTENTION_BACKENDS: dict[str, type[Attention]] = {"torch": TorchAttention, "triton": TritonAttention}
