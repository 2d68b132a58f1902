"""Gemma 2 and Gemma 3 (text): GeGLU MLP, (1 + w) RMSNorm, embeddings scaled by
sqrt(hidden), sandwich norms around attention and MLP, soft-capped attention
scores and logits (Gemma 2), QK-norm (Gemma 3), and interleaved local
(sliding-window) and global layers, with their own RoPE theta in Gemma 3.

How local layers use the streaming cache is written in cache/layout.py
("Local layers"): they read the same sinks + window rows as the global layers,
masked to the model's own sliding window, so the spec of each layer
(layers.layer_specs) is all that differs.
"""

from __future__ import annotations

import torch
from torch import nn

from swiftinfer_core.model.args import ModelArgs, common_args
from swiftinfer_core.model.decoder import MLP, Decoder, SelfAttention
from swiftinfer_core.model.layers import GemmaRMSNorm, ShardPlan, Weights


def gemma_args(cfg: dict, name: str) -> ModelArgs:
    rope = cfg.get("rope_parameters") or {}
    over = {}
    if "full_attention" in rope:  # transformers 5: one rope dict per layer type (Gemma 3)
        full, local = rope["full_attention"], rope.get("sliding_attention")
        cfg = {**cfg, "rope_parameters": full}
        over["rope_local"] = local
    elif cfg.get("rope_local_base_freq"):  # transformers 4 spelling of Gemma 3's local theta
        over["rope_local"] = {"rope_type": "default", "rope_theta": cfg["rope_local_base_freq"]}
    kind = cfg.get("model_type")
    layers = cfg.get("layer_types") or [
        "full_attention" if (i + 1) % cfg.get("sliding_window_pattern", 2) == 0 else "sliding_attention"
        for i in range(cfg["num_hidden_layers"])
    ]
    return common_args(
        cfg, name, **over,
        qkv_bias=bool(cfg.get("attention_bias", False)),
        qk_norm=kind == "gemma3_text",
        attn_scale=cfg.get("query_pre_attn_scalar", cfg.get("head_dim", 256)) ** -0.5,
        layer_types=tuple(layers),
        sliding_window=int(cfg.get("sliding_window") or 0),
        attn_softcap=float(cfg.get("attn_logit_softcapping") or 0.0),
        final_softcap=float(cfg.get("final_logit_softcapping") or 0.0),
        hidden_act=cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


class GemmaBlock(nn.Module):
    def __init__(self, args: ModelArgs, shard: ShardPlan):
        super().__init__()
        h, eps = args.hidden_size, args.rms_eps
        self.input_layernorm = GemmaRMSNorm(h, eps)
        self.self_attn = SelfAttention(args, shard, bias=args.qkv_bias, out_bias=False,
                                       qk_norm=GemmaRMSNorm if args.qk_norm else None)
        self.post_attention_layernorm = GemmaRMSNorm(h, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(h, eps)
        self.mlp = MLP(args, shard, bias=False, gated=True)  # GeGLU
        self.post_feedforward_layernorm = GemmaRMSNorm(h, eps)

    def forward(self, x, attn, plan, k_cache, v_cache, layer: int) -> torch.Tensor:
        dt = self.self_attn.wqkv.weight.dtype
        a = self.self_attn(self.input_layernorm(x).to(dt), attn, plan, k_cache, v_cache, layer)
        h = x + self.post_attention_layernorm(a)  # sandwich: the update is normed before the residual add
        m = self.mlp(self.pre_feedforward_layernorm(h).to(dt))
        return h + self.post_feedforward_layernorm(m)


class Gemma(Decoder):
    def __init__(self, args: ModelArgs, shard: ShardPlan | None = None):
        shard = shard or ShardPlan.single(args)
        super().__init__(args, shard, [GemmaBlock(args, shard) for _ in range(args.num_layers)],
                         GemmaRMSNorm(args.hidden_size, args.rms_eps))
        self.embed_scale = args.hidden_size**0.5

    def load_hf_state(self, state) -> None:
        a, s, d, w = self.args, self.shard, self.args.head_dim, Weights(state)
        self.embed.weight.data.copy_(w.get("model.embed_tokens.weight"))
        head = "lm_head.weight" if not a.tie_embeddings and "lm_head.weight" in w else "model.embed_tokens.weight"
        self.lm_head.weight.data.copy_(w.get(head))
        self.norm.weight.data.copy_(w.get("model.norm.weight"))
        q_rows, kv_rows = (s.q_lo * d, s.q_hi * d), (s.kv_lo * d, s.kv_hi * d)
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            att = layer.self_attn
            att.wqkv.weight.data.copy_(torch.cat([
                w.rows(p + "self_attn.q_proj.weight", *q_rows),
                w.rows(p + "self_attn.k_proj.weight", *kv_rows),
                w.rows(p + "self_attn.v_proj.weight", *kv_rows),
            ]))
            if a.qkv_bias:
                att.wqkv.bias.data.copy_(torch.cat([
                    w.rows(p + "self_attn.q_proj.bias", *q_rows),
                    w.rows(p + "self_attn.k_proj.bias", *kv_rows),
                    w.rows(p + "self_attn.v_proj.bias", *kv_rows),
                ]))
            att.wo.weight.data.copy_(w.cols(p + "self_attn.o_proj.weight", *q_rows))
            if a.qk_norm:
                att.q_norm.weight.data.copy_(w.get(p + "self_attn.q_norm.weight"))
                att.k_norm.weight.data.copy_(w.get(p + "self_attn.k_norm.weight"))
            layer.mlp.up.weight.data.copy_(torch.cat([
                w.rows(p + "mlp.gate_proj.weight", s.i_lo, s.i_hi), w.rows(p + "mlp.up_proj.weight", s.i_lo, s.i_hi),
            ]))
            layer.mlp.down.weight.data.copy_(w.cols(p + "mlp.down_proj.weight", s.i_lo, s.i_hi))
            for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
                getattr(layer, norm).weight.data.copy_(w.get(p + norm + ".weight"))
