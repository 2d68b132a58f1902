"""What the tests of pre-quantized checkpoints share (test_ct_checkpoint.py for
compressed-tensors, test_gptq_checkpoint.py for GPTQ/AWQ): the engine they build,
the expected fused weights, a config variant, and the float twin of a checkpoint
(the same weights stored float32) with the top-1 / perplexity comparison against it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tests.model.test_cpu_weights import _top1_and_nll

from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.engine_model import build_engine_model
from swiftinfer_core.model.loader import read_state_dict

TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
HF = {"wqkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "wo": ("self_attn.o_proj",),
      "w13": ("mlp.gate_proj", "mlp.up_proj"), "w2": ("mlp.down_proj",)}


def engine(path: Path, **kw):
    return build_engine_model(EngineConfig(model=str(path), device="cpu", sink_tokens=4, window=124, max_sessions=1, **kw))


def expected(ref: dict[str, torch.Tensor], i: int, ours: str) -> torch.Tensor:
    """Layer ``i``'s fused ``ours`` (wqkv, wo, w13, w2) from the HF linears' reference weights."""
    return torch.cat([ref[f"model.layers.{i}.{b}"] for b in HF[ours]])


def copy_tokenizer(src: Path, dst: Path) -> None:
    for f in TOKENIZER:
        if (src / f).exists():
            shutil.copy(src / f, dst / f)


def variant(src: Path, dst: Path, edit) -> Path:
    """``dst``: ``src``'s files linked, its config's ``quantization_config`` changed by ``edit``."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg["quantization_config"])
    (dst / "config.json").unlink()
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def float_twin(path: Path, twin: Path, ref: dict[str, torch.Tensor], packed: tuple[str, ...]) -> Path:
    """``twin``: checkpoint ``path`` without its quantization: tensors named with a ``packed``
    suffix dropped, each HF linear's reference weight stored float32 as ``<name>.weight``."""
    from safetensors.torch import save_file

    twin.mkdir()
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("quantization_config")
    (twin / "config.json").write_text(json.dumps(cfg))
    state = {n: t for n, t in read_state_dict(path).items() if not n.endswith(packed)}
    state |= {n + ".weight": w.float().contiguous() for n, w in ref.items()}
    save_file(state, str(twin / "model.safetensors"))
    copy_tokenizer(path, twin)
    return twin


def agreement(model, twin_model, ids: list[int]) -> tuple[float, float]:
    """(top-1 agreement, perplexity ratio) of ``model`` against ``twin_model``, teacher-forced on ``ids``."""
    f_top, f_nll = _top1_and_nll(twin_model, ids)
    q_top, q_nll = _top1_and_nll(model, ids)
    return (f_top == q_top).float().mean().item(), torch.exp(q_nll.mean() - f_nll.mean()).item()
