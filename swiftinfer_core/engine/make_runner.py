"""The runner for an EngineConfig: ModelRunner on one device, TPRunner over
``tp_size`` ranks. EngineCore calls this and is otherwise the same either way.
"""

from __future__ import annotations

from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.runner import ModelRunner
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.setup import LoadedModel, load_model


def make_runner(cfg: EngineConfig, loaded: LoadedModel | None = None, **tp_options) -> tuple[LoadedModel, ModelRunner]:
    """(model as the engine sees it, runner). ``tp_options``: TPDriver.start's ``launcher``/``timeouts``."""
    if cfg.tp_size == 1:
        m = loaded or load_model(cfg)
        return m, ModelRunner(m.model, m.pool, m.attn, m.device, split_mixed=cfg.split_mixed_steps)
    if loaded is not None:
        raise InvalidRequestError("a preloaded single-device model cannot be used with tp_size > 1; each rank loads its own shard")
    return _start_tp(cfg, **tp_options)


def _start_tp(cfg: EngineConfig, **tp_options) -> tuple[LoadedModel, ModelRunner]:
    from transformers import AutoTokenizer

    from swiftinfer_core.model.fetch import resolve_model
    from swiftinfer_core.model.loader import read_args
    from swiftinfer_core.model.setup import resolve_device, resolve_dtype, resolve_layout
    from swiftinfer_core.parallel.driver import TPDriver
    from swiftinfer_core.parallel.load import EngineShard
    from swiftinfer_core.parallel.plan import shard_plans
    from swiftinfer_core.parallel.runner import TPRunner

    path = resolve_model(cfg.model)
    args = read_args(path)
    plans = shard_plans(args, cfg.tp_size)  # invalid sizes fail here, before any process starts
    layout = resolve_layout(cfg, args)
    device = resolve_device(cfg)
    if device.type == "cuda" and "launcher" not in tp_options:
        _check_gpus(cfg.tp_size)
    cfg = cfg.model_copy(update={"model": str(path)})  # workers skip the name lookup / fetch
    driver = TPDriver.start(plans, EngineShard(cfg), device, **tp_options)
    runner = TPRunner(driver)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except BaseException:
        runner.close()
        raise
    m = LoadedModel(
        args=args, model=runner.model, tokenizer=tokenizer, layout=layout, pool=runner.pool, attn=runner.attn,
        device=runner.device, dtype=resolve_dtype(cfg, device), path=path,
    )
    return m, runner


def _check_gpus(tp: int) -> None:
    import torch

    from swiftinfer_core.parallel.launcher import current_placement_group

    if current_placement_group() is None and torch.cuda.device_count() < tp:
        raise InvalidRequestError(f"tp_size {tp} needs {tp} visible GPUs; {torch.cuda.device_count()} are visible")
