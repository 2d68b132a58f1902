"""Where a rank's weights come from (``RankConfig.weights``), as mappings that
``model.load_hf_state`` consumes, or a random fill in place.

* CHECKPOINT on one device: ``model/loader.py:read_state_dict``, the whole folder.
* CHECKPOINT on a tensor-parallel rank: ``ShardedCheckpoint``, read lazily below.
* RANDOM (``load_format: random``): ``fill_random``, normal(0, 0.02) per parameter
  of this rank's model (benchmarks at any shape; output is noise).
* SEEDED: ``SeededCheckpoint``, every HF tensor drawn from (seed, name), the same
  full model on every rank, so TP=1 and each rank of TP=N slice one model
  (the tensor-parallel GPU test and bench/tp_decode.py; Llama shapes only).

``ShardedCheckpoint(folder)`` is a read-only mapping from HF tensor names that
``Llama.load_hf_state`` consumes unchanged: the tensors it slices by ShardPlan
(``*_proj.weight`` / ``*_proj.bias``: q, k, v, o, gate, up, down) come back as
safetensors ``get_slice`` handles, so ``state[name][lo:hi]`` or
``state[name][:, lo:hi]`` reads only those rows/columns from the file (mmap);
everything else (embedding, LM head, norms: replicated on every rank) comes
back as a whole tensor. No rank ever materialises the whole model.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.layers import GemmaRMSNorm

_SLICED = ("_proj.weight", "_proj.bias")


class ShardedCheckpoint(Mapping):
    def __init__(self, folder: Path):
        from safetensors import safe_open

        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder}: no *.safetensors files")
        self._handles = [safe_open(str(f), framework="pt", device="cpu") for f in files]
        # name -> the open file that holds it (sharded checkpoints: model-0000k-of-n)
        self._where = {name: h for h in self._handles for name in h.keys()}

    def __getitem__(self, name: str):
        h = self._where.get(name)
        if h is None:
            raise KeyError(name)
        if name.endswith(_SLICED):
            return h.get_slice(name)  # indexable: [lo:hi] / [:, lo:hi] -> torch.Tensor of just that part
        return h.get_tensor(name)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def fill_random(model: nn.Module, seed: int) -> None:
    """Random weights in place: norms 1 (Gemma's ``1 + w`` norms: w = 0), the rest normal(0, 0.02)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.fill_(1.0)
        else:
            p.data.normal_(0.0, 0.02, generator=gen)
    for mod in model.modules():  # Gemma's norms scale by (1 + w): the identity is w = 0
        if isinstance(mod, GemmaRMSNorm):
            mod.weight.data.zero_()


def llama_hf_shapes(a: ModelArgs) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape of a Llama checkpoint of ``a``'s shape (untied head)."""
    h, d, i = a.hidden_size, a.head_dim, a.intermediate_size
    out = {"model.embed_tokens.weight": (a.vocab_size, h), "model.norm.weight": (h,), "lm_head.weight": (a.vocab_size, h)}
    for n in range(a.num_layers):
        p = f"model.layers.{n}."
        out |= {
            p + "self_attn.q_proj.weight": (a.num_heads * d, h), p + "self_attn.k_proj.weight": (a.num_kv_heads * d, h),
            p + "self_attn.v_proj.weight": (a.num_kv_heads * d, h), p + "self_attn.o_proj.weight": (h, a.num_heads * d),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        }
    return out


class SeededCheckpoint(Mapping):
    """name -> full float32 tensor on ``device``, the same on every rank for the same seed."""

    def __init__(self, args: ModelArgs, seed: int, device: torch.device):
        self.shapes, self.seed, self.device = llama_hf_shapes(args), seed, device
        self.fan_in = {n: s[-1] for n, s in self.shapes.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        if len(shape) == 1:  # norms: near 1
            base = torch.ones(shape, device=self.device)
        else:
            base = torch.zeros(shape, device=self.device)
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        noise = torch.randn(shape, generator=g, device=self.device)
        scale = 0.02 if len(shape) == 1 else (1.0 if "embed" in name else self.fan_in[name] ** -0.5)
        return base + noise * scale

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)
