"""The model as the engine sees it (EngineModel: weights, cache, tokenizer) and
its runner: ModelRunner on one device, TPRunner over ``tp_size`` ranks. Both are
built by runner/build.py:build_rank from one RankConfig, resolved once here;
EngineCore calls ``engine_runner`` and is otherwise the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.model.catalog import resolve_model
from swiftinfer_core.model.loader import read_args
from swiftinfer_core.runner.build import build_rank, make_attention
from swiftinfer_core.runner.calibration import calibration_text_ids
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.runner.resolve import rank_config


@dataclass
class EngineModel:
    args: ModelArgs
    model: nn.Module  # the family's model class (model/families.py); rank 0's shard under tensor parallelism
    tokenizer: object
    layout: StreamLayout
    pool: KVPool
    attn: Attention
    device: torch.device
    dtype: torch.dtype
    path: Path


def _tokenizer(path: Path):
    from transformers import AutoTokenizer  # seconds to import: only rank 0 needs it

    return AutoTokenizer.from_pretrained(path)


def build_engine_model(cfg: EngineConfig) -> EngineModel:
    """One device: weights, KV pool and attention (build_rank) plus the tokenizer."""
    path = resolve_model(cfg.model)
    args = read_args(path)
    rc = rank_config(cfg, path, args)
    tokenizer = _tokenizer(path)
    if cfg.quant_calibration_file is not None and rc.calibration_tokens:
        rc = replace(rc, calibration_ids=calibration_text_ids(tokenizer, cfg.quant_calibration_file, rc.calibration_tokens))
    r = build_rank(rc)
    return EngineModel(args=args, model=r.model, tokenizer=tokenizer, layout=rc.layout, pool=r.pool, attn=r.attn,
                       device=r.device, dtype=rc.dtype, path=path)


def relayout(m: EngineModel, cfg: EngineConfig, slots: int) -> EngineModel:
    """The same weights with a fresh KV pool and attention for ``cfg``'s sinks/window."""
    rc = rank_config(cfg, m.path, m.args)
    heads = m.model.shard.kv_hi - m.model.shard.kv_lo
    pool = KVPool(rc.layout, m.args.num_layers, slots, heads, m.args.head_dim, rc.kv_dtype or m.dtype, m.device)
    return replace(m, layout=rc.layout, pool=pool, attn=make_attention(rc, m.device, m.model.shard))


def engine_runner(cfg: EngineConfig, loaded: EngineModel | None = None, **tp_options) -> tuple[EngineModel, ModelRunner]:
    """(model as the engine sees it, runner). ``tp_options``: TPDriver.start's ``launcher``/``timeouts``."""
    if cfg.tp_size == 1:
        m = loaded or build_engine_model(cfg)
        return m, ModelRunner(m.model, m.pool, m.attn, m.device, split_mixed=cfg.split_mixed_steps)
    if loaded is not None:
        raise InvalidRequestError("a preloaded single-device model cannot be used with tp_size > 1; each rank loads its own shard")
    return _start_tp(cfg, **tp_options)


def _start_tp(cfg: EngineConfig, **tp_options) -> tuple[EngineModel, ModelRunner]:
    from swiftinfer_core.parallel.driver import TPDriver
    from swiftinfer_core.parallel.plan import shard_plans
    from swiftinfer_core.parallel.tp_runner import TPRunner

    path = resolve_model(cfg.model)
    args = read_args(path)
    plans = shard_plans(args, cfg.tp_size)  # invalid sizes fail here, before any process starts
    rc = rank_config(cfg, path, args)  # workers get it as it is: they resolve nothing
    if rc.device_type == "cuda" and "launcher" not in tp_options:
        _check_gpus(cfg.tp_size)
    runner = TPRunner(TPDriver.start(plans, rc, **tp_options))
    try:
        tokenizer = _tokenizer(path)
    except BaseException:
        runner.close()
        raise
    m = EngineModel(
        args=args, model=runner.model, tokenizer=tokenizer, layout=rc.layout, pool=runner.pool, attn=runner.attn,
        device=runner.device, dtype=rc.dtype, path=path,
    )
    return m, runner


def _check_gpus(tp: int) -> None:
    from swiftinfer_core.parallel.placement import current_placement_group

    if current_placement_group() is None and torch.cuda.device_count() < tp:
        raise InvalidRequestError(f"tp_size {tp} needs {tp} visible GPUs; {torch.cuda.device_count()} are visible")
