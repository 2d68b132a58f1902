"""Which model class reads which checkpoint: config.json's ``model_type`` -> family.

Each family module holds its model class and the few config keys only it reads
(``args_from_hf``); the shared pieces live in model/layers.py and model/args.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from swiftinfer_core.errors import InvalidRequestError

from swiftinfer_core.model import falcon, gemma, gpt_neox, llama, mpt
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.layers import ShardPlan


@dataclass(frozen=True)
class Family:
    args_from_hf: Callable[[dict, str], ModelArgs]
    model: Callable[[ModelArgs, ShardPlan | None], nn.Module]


_LLAMA = Family(llama.llama_args, llama.Llama)
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "phi3": _LLAMA,
    "gpt_neox": Family(gpt_neox.neox_args, gpt_neox.GPTNeoX),
    "gemma2": Family(gemma.gemma_args, gemma.Gemma),
    "gemma3_text": Family(gemma.gemma_args, gemma.Gemma),
    "falcon": Family(falcon.falcon_args, falcon.Falcon),
    "mpt": Family(mpt.mpt_args, mpt.Mpt),
}


def family_of(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise InvalidRequestError(f"model_type {model_type!r} is not supported (supported: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[model_type]


def args_from_hf(cfg: dict, name: str = "") -> ModelArgs:
    return family_of(cfg.get("model_type", "llama")).args_from_hf(cfg, name)


def build_model(args: ModelArgs, shard: ShardPlan | None = None) -> nn.Module:
    """The family's model (uninitialised weights: load_hf_state fills them)."""
    return family_of(args.family).model(args, shard)
