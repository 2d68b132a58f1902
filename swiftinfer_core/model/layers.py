"""Pieces every model family shares: the shard plan, norms, the rotary head
permutation, checkpoint access, and each layer's attention spec.

Activations are packed: T tokens of several conversations in one [T, hidden]
tensor; the attention backend knows which rows belong to which cache slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from swiftinfer_core.kernels.reference import LayerAttn
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.rope_scaling import kernel_freqs, rope_frequencies


@dataclass(frozen=True)
class ShardPlan:
    """This rank's share: heads [q_lo, q_hi), kv heads [kv_lo, kv_hi), MLP rows [i_lo, i_hi)."""

    q_lo: int
    q_hi: int
    kv_lo: int
    kv_hi: int
    i_lo: int
    i_hi: int
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def single(cls, args: ModelArgs) -> "ShardPlan":
        return cls(0, args.num_heads, 0, args.num_kv_heads, 0, args.intermediate_size)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of a row-parallel projection's partial outputs over the ranks."""
        return self.all_reduce(x) if self.all_reduce else x


def in_dtype(linear: nn.Module) -> torch.dtype:
    """The dtype a linear layer takes: its weight's, or its own ``in_dtype`` (quantized layers, model/cpu_weights.Int8Linear)."""
    return getattr(linear, "in_dtype", None) or linear.weight.dtype


class RMSNorm(nn.Module):
    """Llama's: normalise in float32, back to x's dtype, times the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class GemmaRMSNorm(nn.Module):
    """Gemma's: scale by (1 + w), all in float32, then back to x's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).to(x.dtype)


def rotary_perm(head_dim: int, rotary_dim: int) -> torch.Tensor:
    """[head_dim] order of a head's dims that turns a partial rotary into a full one.

    HF rotates dims [0, R) as rotate-half (pairs i, i + R/2) and passes [R, D)
    through. The kernels rotate-half the whole head (pairs i, i + D/2). Reordered
    as [rot first half, pass first half, rot second half, pass second half], each
    HF pair lands on a kernel pair, and the passed dims get frequency 0
    (rope_scaling.kernel_freqs). q.k is unchanged by reordering both q and k."""
    if rotary_dim == head_dim:
        return torch.arange(head_dim)
    if rotary_dim % 2 or (head_dim - rotary_dim) % 2:
        raise ValueError(f"partial rotary needs even rotary ({rotary_dim}) and pass-through ({head_dim - rotary_dim}) dims")
    r, p = rotary_dim // 2, (head_dim - rotary_dim) // 2
    return torch.cat([torch.arange(0, r), torch.arange(2 * r, 2 * r + p), torch.arange(r, 2 * r), torch.arange(2 * r + p, head_dim)])


def permute_heads(w: torch.Tensor, head_dim: int, perm: torch.Tensor) -> torch.Tensor:
    """Reorder the dims inside every head of a projection's output rows: w [H * D, ...] or [H * D]."""
    shape = w.shape
    return w.reshape(-1, head_dim, *shape[1:])[:, perm].reshape(shape)


class Weights:
    """HF-named tensors of a checkpoint (a dict, or parallel/weights.ShardedCheckpoint
    whose ``*_proj`` entries are lazy slices): whole, or a row / column range."""

    def __init__(self, state):
        self.state = state

    def __contains__(self, name: str) -> bool:
        return name in self.state

    def get(self, name: str) -> torch.Tensor:
        if name not in self.state:
            raise KeyError(f"checkpoint lacks {name}")
        t = self.state[name]
        return t if isinstance(t, torch.Tensor) else t[:]

    def rows(self, name: str, lo: int, hi: int) -> torch.Tensor:
        if name not in self.state:
            raise KeyError(f"checkpoint lacks {name}")
        return self.state[name][lo:hi]

    def cols(self, name: str, lo: int, hi: int) -> torch.Tensor:
        if name not in self.state:
            raise KeyError(f"checkpoint lacks {name}")
        return self.state[name][:, lo:hi]


def alibi_slopes(heads: int, bias_max: float) -> torch.Tensor:
    """[heads] ALiBi slopes as MPT builds them (a power of two of heads, interleaved beyond)."""
    n = 2 ** math.ceil(math.log2(heads))
    m = torch.arange(1, n + 1, dtype=torch.float32) * (bias_max / n)
    slopes = 1.0 / torch.pow(2, m)
    if n != heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:heads]
    return slopes


def layer_specs(args: ModelArgs, capacity: int, q_lo: int, q_hi: int) -> list[LayerAttn]:
    """Each layer's LayerAttn for a cache of ``capacity`` rows and query heads [q_lo, q_hi)."""
    scale = args.attn_scale or args.head_dim**-0.5
    out = []
    for i in range(args.num_layers):
        local = args.is_local(i)
        if args.alibi:
            freqs, factor = torch.zeros(args.head_dim // 2), 1.0
        else:
            f, factor = rope_frequencies(args.rope(local), args.rotary, args.max_position, capacity)
            freqs = kernel_freqs(f, args.head_dim)
        alibi = alibi_slopes(args.num_heads, args.alibi_bias_max)[q_lo:q_hi].contiguous() if args.alibi else None
        out.append(LayerAttn(
            freqs=freqs, scale=scale * factor * factor,  # the rope's attention factor scales both q and k
            sliding_window=args.sliding_window if local else 0, alibi=alibi, softcap=args.attn_softcap,
        ))
    return out
