"""quantization 'gguf': a Llama model's linear layers from the GGUF's blocks, compact.

The model folder is the float conversion of a GGUF (model/fetch.py) with that
GGUF kept beside it (the one ``*.gguf`` of the folder; the default model's is
fetched into its folder on first use, checked against the pin: fetch.ensure_default_gguf).
The engine loads the float checkpoint as usual (norms and any tensor the file
stores as F32/F16 stay float), then ``load_gguf_blocks`` replaces

- every layer's q/k/v (one fused GGUFLinear), o, gate/up (fused) and down
  projection with the file's blocks (model/gguf_linear.py);
- the token embedding with GGUFEmbedding when the file stores it in blocks;
- the LM head (``head``: not lm_head_fp32) with the file's ``output.weight``, or
  with the embedding's own blocks when tied (stored once).

Rows only move: llama.cpp's converter permutes q/k rows for its rotary layout;
transformers' reader undoes that (LlamaTensorProcessor._reverse_permute_weights)
and so does this, on the block rows (exact: a row's blocks are its own).
Before a float layer is dropped, the blocks' dequantised weight is checked to be
equal, bit for bit, to the float weight loaded from the folder (which IS the
dequantisation when the folder was converted from this file): a GGUF that does
not belong to the folder is refused, never served.

Only Q8_0, Q4_0, Q4_1 and Q4_K are read; a layer stored in another type (Q6_K,
Q5_*, ...) is refused with its name. Loading reads the float model first, so
the peak is float plus compact; at rest only the compact layers remain.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.gguf_blocks import FORMATS, GGUFBlocks, cat_rows, read_tensor
from swiftinfer_core.model.gguf_linear import GGUFEmbedding, GGUFLinear
from swiftinfer_core.model.layers import permute_heads, rotary_perm


def _reverse_permute_index(rows: int, n_head: int) -> torch.Tensor:
    """Row order of transformers' _reverse_permute_weights: out row j = GGUF row idx[j]."""
    dim = rows // n_head // 2
    return torch.arange(rows).reshape(n_head, dim, 2).transpose(1, 2).reshape(rows)


class _File:
    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = path
        self.reader = GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self.reader.fields.get("general.architecture")
        self.arch = bytes(arch.parts[arch.data[0]]).decode() if arch is not None else "?"

    def blocks(self, name: str) -> GGUFBlocks:
        t = self.tensors.get(name)
        if t is None:
            raise InvalidRequestError(f"quantization 'gguf': {self.path.name} has no tensor {name}")
        kind = t.tensor_type.name
        if kind not in FORMATS:
            raise InvalidRequestError(f"quantization 'gguf': {self.path.name} stores {name} as {kind}; "
                                      f"only {', '.join(FORMATS)} are kept compact")
        return read_tensor(t)

    def kind(self, name: str) -> str | None:
        t = self.tensors.get(name)
        return None if t is None else t.tensor_type.name


def _same(blocks: GGUFBlocks, weight: torch.Tensor, what: str, path: Path) -> None:
    w = blocks.dequantize()
    if w.shape != weight.shape or not torch.equal(w, weight.detach().float().cpu()):
        raise InvalidRequestError(f"quantization 'gguf': {path.name}'s {what} is not the float weight of the model folder "
                                  "(the folder must be the float conversion of this GGUF)")


def load_gguf_blocks(model: nn.Module, path: Path, head: bool, kernels=None) -> int:
    """Replace ``model``'s (a one-device Llama, float32, weights loaded) linears with the
    GGUF's blocks in place (module doc); returns how many modules were replaced.
    ``kernels``: kernels/cpu_native.py's, for GGUFLinear's decode rows."""
    from swiftinfer_core.model.llama import Llama

    if not isinstance(model, Llama):
        raise InvalidRequestError(f"quantization 'gguf' serves the Llama family only, not {type(model).__name__}")
    a = model.args
    if model.shard.all_reduce is not None or a.qkv_bias or a.qk_norm:
        raise InvalidRequestError("quantization 'gguf' serves plain Llama layers on one device (no qkv bias, QK-norm or tensor parallelism)")
    f = _File(path)
    if f.arch != "llama":
        raise InvalidRequestError(f"quantization 'gguf': {path.name} is a '{f.arch}' GGUF; only 'llama' is read")
    d = a.head_dim
    perm = rotary_perm(d, a.rotary)
    q_idx = permute_heads(_reverse_permute_index(a.num_heads * d, a.num_heads), d, perm)
    k_idx = permute_heads(_reverse_permute_index(a.num_kv_heads * d, a.num_kv_heads), d, perm)
    replaced = 0
    for i, layer in enumerate(model.layers):
        p = f"blk.{i}."
        qkv = cat_rows([f.blocks(p + "attn_q.weight").rows(q_idx), f.blocks(p + "attn_k.weight").rows(k_idx),
                        f.blocks(p + "attn_v.weight")])
        parts = {
            "wqkv": qkv,
            "wo": f.blocks(p + "attn_output.weight"),
            "w13": cat_rows([f.blocks(p + "ffn_gate.weight"), f.blocks(p + "ffn_up.weight")]),
            "w2": f.blocks(p + "ffn_down.weight"),
        }
        for name, blocks in parts.items():
            _same(blocks, getattr(layer, name).weight, f"layer {i} {name}", path)
            setattr(layer, name, GGUFLinear(blocks, kernels=kernels))
            replaced += 1
    emb_blocks = None
    if f.kind("token_embd.weight") in FORMATS:
        emb_blocks = f.blocks("token_embd.weight")
        _same(emb_blocks, model.embed.weight, "token_embd", path)
        model.embed = GGUFEmbedding(emb_blocks)
        replaced += 1
    if head:
        untied = "output.weight" in f.tensors and not a.tie_embeddings
        hb = f.blocks("output.weight") if untied else (emb_blocks or f.blocks("token_embd.weight"))
        if hb is not emb_blocks:
            _same(hb, model.lm_head.weight, "LM head", path)
        model.lm_head = GGUFLinear(hb, kernels=kernels)
        replaced += 1
    return replaced
