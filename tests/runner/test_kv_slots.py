"""KV pool sizing when engines share one GPU (runner/kv_slots.py shared_kv_budget)."""

import pytest

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.runner.kv_slots import shared_kv_budget

GIB = 1 << 30


def test_two_half_shares_size_the_same_whatever_starts_first():
    total, weights, util = 140 * GIB, 14 * GIB, 0.85
    # first engine: the device is empty but for its weights; second: the first holds its whole share
    first = shared_kv_budget(total - weights, total, weights, 0.5, util)
    first_share = weights + first
    second = shared_kv_budget(total - first_share - weights, total, weights, 0.5, util)
    assert first == second == int(0.5 * total * util) - weights
    assert first_share * 2 <= total * util  # together within the device


def test_a_share_its_weights_fill_or_that_is_not_free_is_refused():
    with pytest.raises(InvalidRequestError, match="used up by its own weights"):
        shared_kv_budget(100 * GIB, 140 * GIB, 60 * GIB, 0.5, 0.85)
    # a third of 140 GiB at 0.85 leaves 25.7 GiB of KV after 14 GiB of weights; others left only 20 free
    with pytest.raises(InvalidRequestError, match="holds more than its share"):
        shared_kv_budget(20 * GIB, 140 * GIB, 14 * GIB, 1 / 3, 0.85)


def test_an_fp8_cache_fits_about_twice_the_slots_in_the_same_memory(monkeypatch):
    """Llama-2-7B's shape (32 layers, 32 KV heads of 128) at 4+2044: bf16 rows of 256
    bytes per head, fp8 rows of 128 + a 4-byte scale: 1.94x the slots (runner/kv_slots.py)."""
    import torch

    from swiftinfer_core.cache.kv_fp8 import FP8
    from swiftinfer_core.cache.layout import StreamLayout
    from swiftinfer_core.model.args import ModelArgs
    from swiftinfer_core.runner.kv_slots import MAX_DEFAULT_SLOTS, num_slots
    from swiftinfer_core.runner.rank_config import RankConfig

    args = ModelArgs(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                     intermediate_size=11008)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * GIB, 141 * GIB))
    cuda = torch.device("cuda", 0)

    def slots(kv_dtype):
        cfg = RankConfig(args=args, layout=StreamLayout(4, 2044), device_type="cuda", dtype=torch.bfloat16, kv_dtype=kv_dtype)
        return num_slots(cfg, cuda, 32)

    bf16, fp8 = slots(None), slots(FP8)
    per_bf16 = 2 * 32 * 32 * 2048 * 256  # 1 GiB per conversation
    assert bf16 == int(100 * GIB * 0.85) // per_bf16 == 85
    assert fp8 == int(100 * GIB * 0.85) // (per_bf16 * 132 // 256) == 164 < MAX_DEFAULT_SLOTS
    assert 1.9 < fp8 / bf16 < 1.95
