"""Llama-family decoder that runs on the streaming cache.

Reads as single-device code. Tensor parallelism enters only through the
``ShardPlan`` (which heads/rows this rank holds) and one all-reduce after the
row-parallel O and down projections.

Activations are packed: T tokens of several conversations in one [T, hidden]
tensor; the attention backend knows which rows belong to which cache slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.model.fused_decode import fused_decode
from swiftinfer_core.model.loader import ModelArgs


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


def in_dtype(linear: nn.Module) -> torch.dtype:
    """The dtype a linear layer takes: its weight's, or its own ``in_dtype`` (model/cpu_weights.Int8Linear)."""
    return getattr(linear, "in_dtype", None) or linear.weight.dtype


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Block(nn.Module):
    def __init__(self, args: ModelArgs, shard: ShardPlan):
        super().__init__()
        d = args.head_dim
        self.hq, self.hkv = shard.q_hi - shard.q_lo, shard.kv_hi - shard.kv_lo
        self.head_dim = d
        self.shard = shard
        self.attn_norm = RMSNorm(args.hidden_size, args.rms_eps)
        self.wqkv = nn.Linear(args.hidden_size, (self.hq + 2 * self.hkv) * d, bias=args.qkv_bias)
        self.wo = nn.Linear(self.hq * d, args.hidden_size, bias=False)
        self.mlp_norm = RMSNorm(args.hidden_size, args.rms_eps)
        inter = shard.i_hi - shard.i_lo
        self.w13 = nn.Linear(args.hidden_size, 2 * inter, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(inter, args.hidden_size, bias=False)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self.shard.all_reduce(x) if self.shard.all_reduce else x

    def forward(self, x, attn: Attention, plan, k_cache, v_cache) -> torch.Tensor:
        """x: [T, hidden] float32 residual stream; matmuls run in the weights' dtype."""
        T, d, dt = x.shape[0], self.head_dim, in_dtype(self.wqkv)
        qkv = self.wqkv(self.attn_norm(x).to(dt))
        q, k, v = qkv.split([self.hq * d, self.hkv * d, self.hkv * d], dim=-1)
        o = attn.forward(plan, q.view(T, self.hq, d), k.view(T, self.hkv, d), v.view(T, self.hkv, d), k_cache, v_cache)
        h = x + self._reduce(self.wo(o.reshape(T, self.hq * d)))
        gate, up = self.w13(self.mlp_norm(h).to(dt)).chunk(2, dim=-1)
        return h + self._reduce(self.w2(F.silu(gate) * up))


class Llama(nn.Module):
    def __init__(self, args: ModelArgs, shard: ShardPlan | None = None):
        super().__init__()
        self.args = args
        self.shard = shard or ShardPlan.single(args)
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args, self.shard) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.gemv_decode = False  # set by the loader on GPU: batch-1 steps take model/fused_decode.py

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attn: Attention, plan, pool: KVPool, rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [T] -> logits [R, vocab] (float32) for the token rows ``rows`` (all if None)."""
        if self.gemv_decode and input_ids.shape[0] == 1:
            return fused_decode(self, input_ids, attn, plan, pool)
        # the residual stream stays float32 even for bf16 weights: with bf16 residuals
        # and logits, top-1 agreed with float32 on only ~97% of teacher-forced tokens
        x = self.embed(input_ids).float()
        for i, layer in enumerate(self.layers):
            x = layer(x, attn, plan, pool.k[i], pool.v[i])
        if rows is not None:
            x = x.index_select(0, rows)
        return self.lm_head(self.norm(x).to(in_dtype(self.lm_head))).float()

    def load_hf_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy HF-named weights in, slicing this rank's shard and fusing qkv / gate-up."""
        a, s, d = self.args, self.shard, self.args.head_dim

        def get(name: str) -> torch.Tensor:
            if name not in state:
                raise KeyError(f"checkpoint lacks {name}")
            return state[name]

        self.embed.weight.data.copy_(get("model.embed_tokens.weight"))
        self.norm.weight.data.copy_(get("model.norm.weight"))
        head = state.get("lm_head.weight") if not a.tie_embeddings else None
        self.lm_head.weight.data.copy_(head if head is not None else get("model.embed_tokens.weight"))
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            q = get(p + "self_attn.q_proj.weight")[s.q_lo * d : s.q_hi * d]
            k = get(p + "self_attn.k_proj.weight")[s.kv_lo * d : s.kv_hi * d]
            v = get(p + "self_attn.v_proj.weight")[s.kv_lo * d : s.kv_hi * d]
            layer.wqkv.weight.data.copy_(torch.cat([q, k, v]))
            if a.qkv_bias:
                qb = get(p + "self_attn.q_proj.bias")[s.q_lo * d : s.q_hi * d]
                kb = get(p + "self_attn.k_proj.bias")[s.kv_lo * d : s.kv_hi * d]
                vb = get(p + "self_attn.v_proj.bias")[s.kv_lo * d : s.kv_hi * d]
                layer.wqkv.bias.data.copy_(torch.cat([qb, kb, vb]))
            layer.wo.weight.data.copy_(get(p + "self_attn.o_proj.weight")[:, s.q_lo * d : s.q_hi * d])
            gate = get(p + "mlp.gate_proj.weight")[s.i_lo : s.i_hi]
            up = get(p + "mlp.up_proj.weight")[s.i_lo : s.i_hi]
            layer.w13.weight.data.copy_(torch.cat([gate, up]))
            layer.w2.weight.data.copy_(get(p + "mlp.down_proj.weight")[:, s.i_lo : s.i_hi])
            layer.attn_norm.weight.data.copy_(get(p + "input_layernorm.weight"))
            layer.mlp_norm.weight.data.copy_(get(p + "post_attention_layernorm.weight"))
