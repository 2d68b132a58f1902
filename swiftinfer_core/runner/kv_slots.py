"""How many KV cache slots (conversations resident at once) a rank's pool gets.

A slot is ``layers x 2 x kv_heads x (sinks + window)`` rows of ``head_dim``
elements in the cache's storage dtype (fp8: plus a 4-byte scale per row,
cache/kv_fp8.py; so the same memory holds ~1.9x the slots of bf16). With
``slots`` unset: CPU_DEFAULT_SLOTS on a CPU; on a GPU as many as the free memory
allows (``gpu_memory_utilization`` of it), or, when several engines share one
GPU (``memory_share < 1``), as many as this engine's share leaves after its own
weights. Never more than MAX_DEFAULT_SLOTS.
"""

from __future__ import annotations

import torch

from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.runner.rank_config import RankConfig

CPU_DEFAULT_SLOTS = 16
MAX_DEFAULT_SLOTS = 1024


def num_slots(cfg: RankConfig, device: torch.device, kv_heads: int) -> int:
    if cfg.slots is not None:
        return cfg.slots
    if device.type != "cuda":
        return CPU_DEFAULT_SLOTS
    args = cfg.args
    free, total = torch.cuda.mem_get_info(device)
    per_slot = KVPool.bytes_per_slot(cfg.layout, args.num_layers, kv_heads, args.head_dim, cfg.cache_dtype)
    if cfg.memory_share < 1:
        budget = shared_kv_budget(free, total, torch.cuda.memory_reserved(device), cfg.memory_share, cfg.gpu_memory_utilization)
    else:
        budget = int(free * cfg.gpu_memory_utilization)
    slots = budget // per_slot
    if slots < 1:
        raise InvalidRequestError(f"no GPU memory for even one cache slot ({per_slot / 2**20:.0f} MiB each)")
    return min(slots, MAX_DEFAULT_SLOTS)


def shared_kv_budget(free: int, total: int, held: int, share: float, utilization: float) -> int:
    """KV bytes of an engine that owns ``share`` of a device of ``total`` bytes and
    already ``held`` some (weights): ``share * total * utilization - held``. Refused
    when that is not free: another process on the device holds more than its share."""
    budget = int(share * total * utilization) - held
    if budget <= 0:
        raise InvalidRequestError(f"this engine's share of the GPU ({share:g} x {total / 2**30:.1f} GiB x {utilization:g}) "
                                  f"is used up by its own weights ({held / 2**30:.1f} GiB): raise the share or use fewer engines per GPU")
    if budget > free:
        raise InvalidRequestError(f"this engine's share of the GPU leaves {budget / 2**30:.1f} GiB for its KV cache but only "
                                  f"{free / 2**30:.1f} GiB are free: another process on the GPU holds more than its share")
    return budget
