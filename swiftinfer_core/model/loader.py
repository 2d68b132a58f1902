"""Load a local HF Llama-family checkpoint folder (Llama, Mistral, Qwen2 naming)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

SUPPORTED = {"llama", "mistral", "qwen2"}


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_embeddings: bool = False
    qkv_bias: bool = False
    max_position: int = 4096
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    name: str = "llama"

    @classmethod
    def from_hf(cls, cfg: dict, name: str = "") -> "ModelArgs":
        kind = cfg.get("model_type", "llama")
        if kind not in SUPPORTED:
            raise ValueError(f"model_type {kind!r} is not supported (supported: {sorted(SUPPORTED)})")
        heads = cfg["num_attention_heads"]
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = rope if rope.get("rope_type", rope.get("type", "default")) not in ("default", None) else None
        eos = cfg.get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            intermediate_size=cfg["intermediate_size"],
            rms_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=scaling,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", kind == "qwen2")),
            max_position=cfg.get("max_position_embeddings", 4096),
            eos_token_ids=eos,
            name=name or cfg.get("_name_or_path", kind),
        )

    def weight_bytes(self, dtype: torch.dtype) -> int:
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        per_layer = h * d * (self.num_heads * 2 + self.num_kv_heads * 2) + 3 * h * i + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return (per_layer * self.num_layers + emb + h) * torch.empty((), dtype=dtype).element_size()


def read_args(folder: Path) -> ModelArgs:
    return ModelArgs.from_hf(json.loads((folder / "config.json").read_text()), name=folder.name)


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint (safetensors, single or sharded), on CPU."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors files")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state
