"""ModelArgs: the shape and options of a checkpoint, read from its config.json.

The common fields serve every family; the family-specific ones default to the
Llama behaviour and are set by that family's ``args_from_hf`` (model/families.py
lists them). Nothing here is user configuration: it describes the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from swiftinfer_core.model.rope_scaling import RopeParams


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_eps: float = 1e-5  # the eps of every norm (RMSNorm or LayerNorm)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # the rope dict of the config (rope_type and its keys), None = default
    tie_embeddings: bool = False
    qkv_bias: bool = False
    max_position: int = 4096
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    name: str = "llama"
    # ---- family options (defaults: Llama) ----
    family: str = "llama"
    rotary_dim: int = 0  # dims of each head that rotate (partial rotary); 0 = all of head_dim
    attn_scale: float = 0.0  # softmax scale; 0 = head_dim ** -0.5
    qk_norm: bool = False  # RMSNorm over each q and k head before RoPE (Qwen3, Gemma 3)
    layer_types: tuple[str, ...] = ()  # per layer "full_attention" / "sliding_attention"; () = all full
    sliding_window: int = 0  # the model's own window of its sliding_attention layers
    rope_local: dict | None = None  # rope dict of the sliding layers where it differs (Gemma 3)
    attn_softcap: float = 0.0  # tanh soft-cap of attention scores (Gemma 2); 0 = none
    final_softcap: float = 0.0  # tanh soft-cap of the logits (Gemma 2); 0 = none
    hidden_act: str = "silu"
    parallel_residual: bool = False  # x + attn(ln1(x)) + mlp(ln2(x)) (GPT-NeoX, Falcon)
    parallel_norms: int = 1  # parallel blocks: 2 = separate norms for attention and MLP (Falcon's new layout)
    qkv_layout: str = "stacked"  # fused q/k/v rows: "stacked" [q; k; v], "per_head" [h: q, k, v],
    #                              "grouped" [kv group: g q heads, k, v] (Falcon new), "mqa" [q heads; k; v]
    alibi: bool = False  # ALiBi biases instead of RoPE (MPT)
    alibi_bias_max: float = 8.0
    clip_qkv: float = 0.0  # clamp the fused q/k/v activations to [-clip, clip] (MPT); 0 = none
    qk_layernorm: bool = False  # LayerNorm over all of q and all of k, across heads (MPT qk_ln)

    @property
    def rotary(self) -> int:
        return self.rotary_dim or self.head_dim

    def rope(self, local: bool = False) -> RopeParams:
        if local and self.rope_local is not None:
            return RopeParams.from_hf(self.rope_local)
        return RopeParams.from_hf(self.rope_scaling, self.rope_theta)

    def is_local(self, layer: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer] == "sliding_attention"

    def weight_bytes(self, dtype: torch.dtype) -> int:
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        per_layer = h * d * (self.num_heads * 2 + self.num_kv_heads * 2) + 3 * h * i + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return (per_layer * self.num_layers + emb + h) * torch.empty((), dtype=dtype).element_size()


def eos_ids(cfg: dict) -> tuple[int, ...]:
    eos = cfg.get("eos_token_id")
    return tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())


def rope_dict(cfg: dict) -> tuple[float, dict | None]:
    """(theta, rope dict or None for plain default) of a single-rope config.
    An unsupported rope_type fails here (RopeParams.from_hf names it)."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))
    p = RopeParams.from_hf(rope, theta)
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"} if p.rope_type != "default" else None
    return float(theta), scaling


def common_args(cfg: dict, name: str, **over) -> ModelArgs:
    """The fields every HF decoder config spells the same way, plus ``over``."""
    heads = cfg["num_attention_heads"]
    theta, scaling = rope_dict(cfg)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = cfg.get("rope_parameters") or {}
    part = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", cfg.get("rotary_pct", 1.0)))
    base = dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rotary_dim=int(head_dim * part) if part < 1.0 else 0,
        intermediate_size=cfg.get("intermediate_size") or 4 * cfg["hidden_size"],
        rms_eps=cfg.get("rms_norm_eps", cfg.get("layer_norm_eps", 1e-5)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position=cfg.get("max_position_embeddings", 4096),
        eos_token_ids=eos_ids(cfg),
        name=name or cfg.get("_name_or_path") or cfg.get("model_type", "llama"),
        family=cfg.get("model_type", "llama"),
    )
    base.update(over)
    return ModelArgs(**base)
