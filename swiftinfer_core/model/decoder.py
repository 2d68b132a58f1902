"""The shared skeleton of the non-Llama families: embedding, blocks, final norm,
LM head, and the attention and MLP halves their blocks are made of.

Tensor parallelism as in llama.py: q/k/v and MLP-up are column-parallel (this
rank's heads / rows), O and MLP-down are row-parallel and all-reduced; a
row-parallel bias is added once, after the reduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.layers import ShardPlan

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,  # exact erf GELU
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (with or without bias), back to x's dtype."""

    def __init__(self, dim: int, eps: float, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), x.shape[-1:], self.weight.float(), b, self.eps).to(x.dtype)


class RowLinear(nn.Module):
    """Row-parallel linear: this rank's input columns, summed over ranks, then the bias."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool, shard: ShardPlan):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_out, fan_in))
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None
        self.shard = shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shard.reduce(F.linear(x, self.weight).float())
        return y if self.bias is None else y + self.bias.float()


class SelfAttention(nn.Module):
    """Fused q/k/v projection [T, (hq + 2 hkv) D], optional per-head QK-norm, streaming
    attention, O projection. Returns the float32 [T, hidden] update."""

    def __init__(self, args: ModelArgs, shard: ShardPlan, bias: bool, out_bias: bool, qk_norm: type[nn.Module] | None = None):
        super().__init__()
        d = args.head_dim
        self.hq, self.hkv, self.head_dim = shard.q_hi - shard.q_lo, shard.kv_hi - shard.kv_lo, d
        self.wqkv = nn.Linear(args.hidden_size, (self.hq + 2 * self.hkv) * d, bias=bias)
        self.q_norm = qk_norm(d, args.rms_eps) if qk_norm else None
        self.k_norm = qk_norm(d, args.rms_eps) if qk_norm else None
        self.wo = RowLinear(self.hq * d, args.hidden_size, out_bias, shard)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, hidden] (weights' dtype) -> q [T, hq, D], k, v [T, hkv, D]."""
        T, d = x.shape[0], self.head_dim
        q, k, v = self.wqkv(x).split([self.hq * d, self.hkv * d, self.hkv * d], dim=-1)
        q, k, v = q.view(T, self.hq, d), k.view(T, self.hkv, d), v.view(T, self.hkv, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(self, x, attn: Attention, plan, k_cache, v_cache, layer: int) -> torch.Tensor:
        q, k, v = self.qkv(x)
        o = attn.forward(plan, q, k, v, k_cache, v_cache, layer)
        return self.wo(o.reshape(x.shape[0], self.hq * self.head_dim))


class MLP(nn.Module):
    """up -> act -> down (GPT-NeoX, Falcon, MPT); ``gated``: act(gate) * up (GeGLU, SwiGLU)."""

    def __init__(self, args: ModelArgs, shard: ShardPlan, bias: bool, gated: bool = False):
        super().__init__()
        inter = shard.i_hi - shard.i_lo
        self.gated, self.act = gated, activation(args.hidden_act)
        self.up = nn.Linear(args.hidden_size, (2 if gated else 1) * inter, bias=bias)  # [gate; up] when gated
        self.down = RowLinear(inter, args.hidden_size, bias, shard)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        return self.down(self.act(h))


class Decoder(nn.Module):
    """embed -> blocks -> final norm -> LM head; a family sets the parts and ``load_hf_state``."""

    embed_scale: float = 1.0  # Gemma multiplies the embeddings by sqrt(hidden)

    def __init__(self, args: ModelArgs, shard: ShardPlan | None, blocks: list[nn.Module], norm: nn.Module):
        super().__init__()
        self.args = args
        self.shard = shard or ShardPlan.single(args)
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(blocks)
        self.norm = norm
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.gemv_decode = False  # the fused batch-1 path is Llama's only

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attn: Attention, plan, pool: KVPool, rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [T] -> logits [R, vocab] (float32) for the token rows ``rows`` (all if None)."""
        x = self.embed(input_ids)
        if self.embed_scale != 1.0:  # in the weights' dtype, as transformers does
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        x = x.float()  # float32 residual stream (see llama.py)
        for i, layer in enumerate(self.layers):
            x = layer(x, attn, plan, pool.k[i], pool.v[i], i)
        if rows is not None:
            x = x.index_select(0, rows)
        logits = self.lm_head(self.norm(x).to(self.lm_head.weight.dtype)).float()
        cap = self.args.final_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits
