"""Falcon: multi-query / grouped attention, attention and MLP in parallel off one
(old layout, 7B) or two (new layout, 40B/180B) LayerNorms, LayerNorm with bias,
GELU MLP, q/k/v fused in one matrix in one of three layouts (args.qkv_layout).
The ALiBi variant (Falcon-RW) is refused."""

from __future__ import annotations

import torch
from torch import nn

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.args import ModelArgs, common_args
from swiftinfer_core.model.decoder import MLP, Decoder, LayerNorm, SelfAttention
from swiftinfer_core.model.layers import ShardPlan, Weights


def falcon_args(cfg: dict, name: str) -> ModelArgs:
    if cfg.get("alibi"):
        raise InvalidRequestError("Falcon with alibi=true (Falcon-RW) is not supported; the RoPE Falcons are")
    heads, new = cfg["num_attention_heads"], bool(cfg.get("new_decoder_architecture"))
    if new:
        kv, layout = cfg.get("num_kv_heads") or heads, "grouped"
    elif cfg.get("multi_query", True):
        kv, layout = 1, "mqa"
    else:
        kv, layout = heads, "per_head"
    return common_args(
        {**cfg, "num_key_value_heads": kv, "intermediate_size": cfg.get("ffn_hidden_size") or 4 * cfg["hidden_size"],
         "layer_norm_eps": cfg.get("layer_norm_epsilon", 1e-5)},
        name, qkv_bias=bool(cfg.get("bias", False)), hidden_act=cfg.get("activation", "gelu"),
        parallel_residual=new or bool(cfg.get("parallel_attn", True)),
        parallel_norms=(cfg.get("num_ln_in_parallel_attn") or 2) if new else 1,
        qkv_layout=layout, tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


class FalconBlock(nn.Module):
    def __init__(self, args: ModelArgs, shard: ShardPlan):
        super().__init__()
        h, eps = args.hidden_size, args.rms_eps
        self.parallel, self.two_norms = args.parallel_residual, args.parallel_residual and args.parallel_norms == 2
        self.input_layernorm = LayerNorm(h, eps)  # ln_attn in the two-norm layout
        self.mlp_layernorm = LayerNorm(h, eps) if (self.two_norms or not self.parallel) else None  # ln_mlp / post_attention
        self.self_attention = SelfAttention(args, shard, bias=args.qkv_bias, out_bias=args.qkv_bias)
        self.mlp = MLP(args, shard, bias=args.qkv_bias)

    def forward(self, x, attn, plan, k_cache, v_cache, layer: int) -> torch.Tensor:
        dt = self.self_attention.wqkv.weight.dtype
        ln = self.input_layernorm(x).to(dt)
        a = self.self_attention(ln, attn, plan, k_cache, v_cache, layer)
        if not self.parallel:
            h = x + a
            return h + self.mlp(self.mlp_layernorm(h).to(dt))
        return x + a + self.mlp(self.mlp_layernorm(x).to(dt) if self.two_norms else ln)


class Falcon(Decoder):
    def __init__(self, args: ModelArgs, shard: ShardPlan | None = None):
        shard = shard or ShardPlan.single(args)
        super().__init__(args, shard, [FalconBlock(args, shard) for _ in range(args.num_layers)],
                         LayerNorm(args.hidden_size, args.rms_eps))

    def _split_qkv(self, t: torch.Tensor) -> torch.Tensor:
        """The fused matrix (or bias) in its checkpoint layout -> this rank's [q heads; k heads; v heads] rows."""
        a, s, d = self.args, self.shard, self.args.head_dim
        H, kv, rest = a.num_heads, a.num_kv_heads, t.shape[1:]
        if a.qkv_layout == "grouped":  # [kv, g + 2, D]: a group's query heads, then its k and v
            g = H // kv
            t = t.reshape(kv, g + 2, d, *rest)
            q = torch.stack([t[h // g, h % g] for h in range(s.q_lo, s.q_hi)])
            k, v = t[s.kv_lo : s.kv_hi, g], t[s.kv_lo : s.kv_hi, g + 1]
        elif a.qkv_layout == "mqa":  # [H + 2, D]: every query head, then the one k and v
            t = t.reshape(H + 2, d, *rest)
            q, k, v = t[s.q_lo : s.q_hi], t[H : H + 1], t[H + 1 : H + 2]
        else:  # "per_head": [H, 3, D]
            t = t.reshape(H, 3, d, *rest)
            q, k, v = t[s.q_lo : s.q_hi, 0], t[s.kv_lo : s.kv_hi, 1], t[s.kv_lo : s.kv_hi, 2]
        return torch.cat([x.reshape(-1, *rest) for x in (q, k, v)])

    def load_hf_state(self, state) -> None:
        a, s, d, w = self.args, self.shard, self.args.head_dim, Weights(state)
        self.embed.weight.data.copy_(w.get("transformer.word_embeddings.weight"))
        head = "lm_head.weight" if not a.tie_embeddings and "lm_head.weight" in w else "transformer.word_embeddings.weight"
        self.lm_head.weight.data.copy_(w.get(head))
        self.norm.weight.data.copy_(w.get("transformer.ln_f.weight"))
        self.norm.bias.data.copy_(w.get("transformer.ln_f.bias"))
        for i, layer in enumerate(self.layers):
            p = f"transformer.h.{i}."
            att = layer.self_attention
            att.wqkv.weight.data.copy_(self._split_qkv(w.get(p + "self_attention.query_key_value.weight")))
            att.wo.weight.data.copy_(w.cols(p + "self_attention.dense.weight", s.q_lo * d, s.q_hi * d))
            layer.mlp.up.weight.data.copy_(w.rows(p + "mlp.dense_h_to_4h.weight", s.i_lo, s.i_hi))
            layer.mlp.down.weight.data.copy_(w.cols(p + "mlp.dense_4h_to_h.weight", s.i_lo, s.i_hi))
            if a.qkv_bias:
                att.wqkv.bias.data.copy_(self._split_qkv(w.get(p + "self_attention.query_key_value.bias")))
                att.wo.bias.data.copy_(w.get(p + "self_attention.dense.bias"))
                layer.mlp.up.bias.data.copy_(w.rows(p + "mlp.dense_h_to_4h.bias", s.i_lo, s.i_hi))
                layer.mlp.down.bias.data.copy_(w.get(p + "mlp.dense_4h_to_h.bias"))
            norms = {"input_layernorm": "ln_attn" if layer.two_norms else "input_layernorm",
                     "mlp_layernorm": "ln_mlp" if layer.two_norms else "post_attention_layernorm"}
            for ours, theirs in norms.items():
                if getattr(layer, ours) is not None:
                    getattr(layer, ours).weight.data.copy_(w.get(p + theirs + ".weight"))
                    getattr(layer, ours).bias.data.copy_(w.get(p + theirs + ".bias"))
