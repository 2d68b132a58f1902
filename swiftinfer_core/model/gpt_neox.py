"""GPT-NeoX / Pythia: partial rotary (``rotary_pct``), parallel residual, LayerNorm
with bias, GELU MLP, biases everywhere, q/k/v interleaved per head in one matrix.

Partial rotary needs nothing of the kernels: q/k dims are reordered at load so
the rotated pairs are the kernels' rotate-half pairs and the rest rotate at
frequency 0 (layers.rotary_perm).
"""

from __future__ import annotations

import torch
from torch import nn

from swiftinfer_core.model.args import ModelArgs, common_args
from swiftinfer_core.model.decoder import MLP, Decoder, LayerNorm, SelfAttention
from swiftinfer_core.model.layers import ShardPlan, Weights, permute_heads, rotary_perm


def neox_args(cfg: dict, name: str) -> ModelArgs:
    return common_args(cfg, name, qkv_bias=bool(cfg.get("attention_bias", True)), hidden_act=cfg.get("hidden_act", "gelu"),
                       parallel_residual=bool(cfg.get("use_parallel_residual", True)))


class NeoXBlock(nn.Module):
    def __init__(self, args: ModelArgs, shard: ShardPlan):
        super().__init__()
        self.parallel = args.parallel_residual
        self.input_layernorm = LayerNorm(args.hidden_size, args.rms_eps)
        self.post_attention_layernorm = LayerNorm(args.hidden_size, args.rms_eps)
        self.attention = SelfAttention(args, shard, bias=args.qkv_bias, out_bias=args.qkv_bias)
        self.mlp = MLP(args, shard, bias=True)

    def forward(self, x, attn, plan, k_cache, v_cache, layer: int) -> torch.Tensor:
        dt = self.attention.wqkv.weight.dtype
        a = self.attention(self.input_layernorm(x).to(dt), attn, plan, k_cache, v_cache, layer)
        if self.parallel:  # both halves read the same input
            return x + a + self.mlp(self.post_attention_layernorm(x).to(dt))
        h = x + a
        return h + self.mlp(self.post_attention_layernorm(h).to(dt))


class GPTNeoX(Decoder):
    def __init__(self, args: ModelArgs, shard: ShardPlan | None = None):
        shard = shard or ShardPlan.single(args)
        super().__init__(args, shard, [NeoXBlock(args, shard) for _ in range(args.num_layers)],
                         LayerNorm(args.hidden_size, args.rms_eps))

    def load_hf_state(self, state) -> None:
        a, s, d, w = self.args, self.shard, self.args.head_dim, Weights(state)
        perm = rotary_perm(d, a.rotary)
        self.embed.weight.data.copy_(w.get("gpt_neox.embed_in.weight"))
        self.lm_head.weight.data.copy_(w.get("embed_out.weight" if "embed_out.weight" in w else "gpt_neox.embed_in.weight"))
        self.norm.weight.data.copy_(w.get("gpt_neox.final_layer_norm.weight"))
        self.norm.bias.data.copy_(w.get("gpt_neox.final_layer_norm.bias"))
        for i, layer in enumerate(self.layers):
            p = f"gpt_neox.layers.{i}."

            def split_qkv(t: torch.Tensor) -> torch.Tensor:
                """[H * 3 * D, ...] (per head: q, k, v) -> this rank's [q heads; k heads; v heads] rows."""
                t = t.reshape(a.num_heads, 3, d, *t.shape[1:])[s.q_lo : s.q_hi]
                q, k, v = (t[:, j].reshape(-1, *t.shape[3:]) for j in range(3))
                return torch.cat([permute_heads(q, d, perm), permute_heads(k, d, perm), v])

            att = layer.attention
            att.wqkv.weight.data.copy_(split_qkv(w.get(p + "attention.query_key_value.weight")))
            att.wo.weight.data.copy_(w.cols(p + "attention.dense.weight", s.q_lo * d, s.q_hi * d))
            if a.qkv_bias:
                att.wqkv.bias.data.copy_(split_qkv(w.get(p + "attention.query_key_value.bias")))
                att.wo.bias.data.copy_(w.get(p + "attention.dense.bias"))
            layer.mlp.up.weight.data.copy_(w.rows(p + "mlp.dense_h_to_4h.weight", s.i_lo, s.i_hi))
            layer.mlp.up.bias.data.copy_(w.rows(p + "mlp.dense_h_to_4h.bias", s.i_lo, s.i_hi))
            layer.mlp.down.weight.data.copy_(w.cols(p + "mlp.dense_4h_to_h.weight", s.i_lo, s.i_hi))
            layer.mlp.down.bias.data.copy_(w.get(p + "mlp.dense_4h_to_h.bias"))
            for norm in ("input_layernorm", "post_attention_layernorm"):
                getattr(layer, norm).weight.data.copy_(w.get(p + norm + ".weight"))
                getattr(layer, norm).bias.data.copy_(w.get(p + norm + ".bias"))
