"""MPT: ALiBi instead of RoPE (distances inside the cache, cache/layout.py), one
fused q/k/v matrix, optional clamp of it (``clip_qkv``) and LayerNorm over all
of q and all of k (``qk_ln``), LayerNorm without bias, GELU MLP, no biases."""

from __future__ import annotations

import torch
from torch import nn

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.args import ModelArgs, eos_ids
from swiftinfer_core.model.decoder import MLP, Decoder, LayerNorm, SelfAttention
from swiftinfer_core.model.layers import ShardPlan, Weights


def mpt_args(cfg: dict, name: str) -> ModelArgs:
    att = cfg.get("attn_config") or {}
    refused = {
        "alibi=false (learned positions)": not att.get("alibi", True),
        "no_bias=false (biases)": not cfg.get("no_bias", True),
        f"attn_type {att.get('attn_type')!r}": att.get("attn_type", "multihead_attention") != "multihead_attention",
        "prefix_lm": bool(att.get("prefix_lm")),
        "attn_uses_sequence_id": bool(att.get("attn_uses_sequence_id")),
    }
    bad = [k for k, v in refused.items() if v]
    if bad:
        raise InvalidRequestError(f"MPT with {', '.join(bad)} is not supported")
    d, heads = cfg["d_model"], cfg["n_heads"]
    return ModelArgs(
        vocab_size=cfg["vocab_size"], hidden_size=d, num_layers=cfg["n_layers"], num_heads=heads, num_kv_heads=heads,
        head_dim=d // heads, intermediate_size=int(cfg.get("expansion_ratio", 4) * d),
        rms_eps=cfg.get("layer_norm_epsilon", 1e-5), tie_embeddings=True, max_position=cfg.get("max_seq_len", 2048),
        eos_token_ids=eos_ids(cfg), name=name or cfg.get("_name_or_path") or "mpt", family="mpt",
        attn_scale=float(att.get("softmax_scale") or 0.0), hidden_act="gelu",
        alibi=True, alibi_bias_max=float(att.get("alibi_bias_max", 8)),
        clip_qkv=float(att.get("clip_qkv") or 0.0), qk_layernorm=bool(att.get("qk_ln")),
    )


class ShardedLayerNorm(nn.Module):
    """LayerNorm (no bias) over a vector split across tensor-parallel ranks: x [T, local
    dims], statistics of the whole [T, dims] through one all-reduce of two sums."""

    def __init__(self, local: int, total: int, eps: float, shard: ShardPlan):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(local))
        self.total, self.eps, self.shard = total, eps, shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        sums = self.shard.reduce(torch.stack([xf.sum(-1), xf.pow(2).sum(-1)], -1))  # [T, 2]
        mean = sums[:, :1] / self.total
        var = sums[:, 1:] / self.total - mean * mean
        return ((xf - mean) * torch.rsqrt(var + self.eps) * self.weight.float()).to(x.dtype)


class MptAttention(SelfAttention):
    def __init__(self, args: ModelArgs, shard: ShardPlan):
        super().__init__(args, shard, bias=False, out_bias=False)
        self.clip = args.clip_qkv
        local, total = self.hq * args.head_dim, args.num_heads * args.head_dim
        self.q_ln = ShardedLayerNorm(local, total, args.rms_eps, shard) if args.qk_layernorm else None
        self.k_ln = ShardedLayerNorm(local, total, args.rms_eps, shard) if args.qk_layernorm else None

    def qkv(self, x: torch.Tensor):
        T, d = x.shape[0], self.head_dim
        qkv = self.wqkv(x)
        if self.clip:
            qkv = qkv.clamp(min=-self.clip, max=self.clip)
        q, k, v = qkv.split([self.hq * d, self.hkv * d, self.hkv * d], dim=-1)
        if self.q_ln is not None:  # over every head at once, before the split into heads
            q, k = self.q_ln(q), self.k_ln(k)
        return q.reshape(T, self.hq, d), k.reshape(T, self.hkv, d), v.view(T, self.hkv, d)


class MptBlock(nn.Module):
    def __init__(self, args: ModelArgs, shard: ShardPlan):
        super().__init__()
        self.norm_1 = LayerNorm(args.hidden_size, args.rms_eps, bias=False)
        self.attn = MptAttention(args, shard)
        self.norm_2 = LayerNorm(args.hidden_size, args.rms_eps, bias=False)
        self.ffn = MLP(args, shard, bias=False)

    def forward(self, x, attn, plan, k_cache, v_cache, layer: int) -> torch.Tensor:
        dt = self.attn.wqkv.weight.dtype
        h = x + self.attn(self.norm_1(x).to(dt), attn, plan, k_cache, v_cache, layer)
        return h + self.ffn(self.norm_2(h).to(dt))


class Mpt(Decoder):
    def __init__(self, args: ModelArgs, shard: ShardPlan | None = None):
        shard = shard or ShardPlan.single(args)
        super().__init__(args, shard, [MptBlock(args, shard) for _ in range(args.num_layers)],
                         LayerNorm(args.hidden_size, args.rms_eps, bias=False))

    def load_hf_state(self, state) -> None:
        a, s, d, w = self.args, self.shard, self.args.head_dim, Weights(state)
        H = a.num_heads * d
        self.embed.weight.data.copy_(w.get("transformer.wte.weight"))
        self.lm_head.weight.data.copy_(w.get("transformer.wte.weight"))  # always tied
        self.norm.weight.data.copy_(w.get("transformer.norm_f.weight"))
        q_rows = (s.q_lo * d, s.q_hi * d)
        for i, layer in enumerate(self.layers):
            p = f"transformer.blocks.{i}."
            wqkv = w.get(p + "attn.Wqkv.weight")  # [q; k; v], each H rows
            layer.attn.wqkv.weight.data.copy_(torch.cat([wqkv[j * H + q_rows[0] : j * H + q_rows[1]] for j in range(3)]))
            layer.attn.wo.weight.data.copy_(w.cols(p + "attn.out_proj.weight", *q_rows))
            if a.qk_layernorm:
                layer.attn.q_ln.weight.data.copy_(w.get(p + "attn.q_ln.weight")[q_rows[0] : q_rows[1]])
                layer.attn.k_ln.weight.data.copy_(w.get(p + "attn.k_ln.weight")[q_rows[0] : q_rows[1]])
            layer.ffn.up.weight.data.copy_(w.rows(p + "ffn.up_proj.weight", s.i_lo, s.i_hi))
            layer.ffn.down.weight.data.copy_(w.cols(p + "ffn.down_proj.weight", s.i_lo, s.i_hi))
            layer.norm_1.weight.data.copy_(w.get(p + "norm_1.weight"))
            layer.norm_2.weight.data.copy_(w.get(p + "norm_2.weight"))
