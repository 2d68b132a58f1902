"""One rank's share of an engine, built from its EngineConfig: sliced weights,
a KV pool of only this rank's KV heads, the attention backend.

``EngineShard(cfg)`` is the ShardBuilder every rank of an engine runs (rank 0
in the replica, the others in their workers). It does not use ``load_model``:
that also loads the tokenizer, and importing transformers costs a worker
several seconds; only rank 0 needs the tokenizer (see engine/make_runner.py).

Cache slots: with ``max_sessions`` unset each rank sizes its pool from its own
free memory, then all ranks take the minimum (rank 0's slot allocator hands out
slot ids that must exist on every rank).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.runner import ModelRunner
from swiftinfer_core.model.fetch import resolve_model
from swiftinfer_core.model.families import build_model
from swiftinfer_core.model.layers import ShardPlan
from swiftinfer_core.model.loader import read_args
from swiftinfer_core.model.setup import fill_weights, make_attention, num_slots, resolve_device, resolve_dtype, resolve_layout
from swiftinfer_core.parallel.groups import TPGroups
from swiftinfer_core.parallel.weights import ShardedCheckpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineShard:
    cfg: EngineConfig  # its ``model`` already resolved to a local folder by rank 0

    def __call__(self, plan: ShardPlan, groups: TPGroups) -> ModelRunner:
        cfg, path = self.cfg, resolve_model(self.cfg.model)
        args = read_args(path)
        device, layout = resolve_device(cfg), resolve_layout(cfg, args)
        dtype = resolve_dtype(cfg, device)
        with torch.device("meta"):
            model = build_model(args, plan).to(dtype)  # dtype on meta: the real allocation is already bf16/fp16
        model = model.to_empty(device=device)
        if cfg.lm_head_fp32:
            model.lm_head.float()  # before loading: keep the checkpoint's own precision
        fill_weights(model, cfg, lambda: ShardedCheckpoint(path))
        model.eval()
        kv_heads = plan.kv_hi - plan.kv_lo
        slots = cfg.max_sessions or groups.min_int(num_slots(cfg, args, layout, device, dtype, kv_heads))
        pool = KVPool(layout, args.num_layers, slots, kv_heads, args.head_dim, dtype, device)
        log.info("rank %d: heads [%d,%d) kv [%d,%d) mlp [%d,%d), %d cache slots on %s",
                 groups.rank, plan.q_lo, plan.q_hi, plan.kv_lo, plan.kv_hi, plan.i_lo, plan.i_hi, slots, device)
        return ModelRunner(model, pool, make_attention(cfg, device, layout, args, plan), device, split_mixed=cfg.split_mixed_steps)
