"""A checkpoint folder read lazily, so that a rank keeps only its own slice.

``ShardedCheckpoint(folder)`` is a read-only mapping from HF tensor names that
``Llama.load_hf_state`` consumes unchanged: the tensors it slices by ShardPlan
(``*_proj.weight`` / ``*_proj.bias``: q, k, v, o, gate, up, down) come back as
safetensors ``get_slice`` handles, so ``state[name][lo:hi]`` or
``state[name][:, lo:hi]`` reads only those rows/columns from the file (mmap);
everything else (embedding, LM head, norms: replicated on every rank) comes
back as a whole tensor. No rank ever materialises the whole model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

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
