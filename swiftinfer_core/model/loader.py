"""Read a local HF checkpoint folder: its ModelArgs and its tensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.families import FAMILIES, args_from_hf

__all__ = ["ModelArgs", "SUPPORTED", "read_args", "read_state_dict"]

SUPPORTED = set(FAMILIES)


def read_args(folder: Path) -> ModelArgs:
    return args_from_hf(json.loads((folder / "config.json").read_text()), name=folder.name)


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
