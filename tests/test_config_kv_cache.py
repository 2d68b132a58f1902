"""EngineConfig.kv_cache_dtype: validated, described, and resolved to the pool's
storage dtype (runner/resolve.py -> RankConfig.kv_dtype -> cache/kv_fp8.py)."""

from pathlib import Path

import pytest
import torch

from swiftinfer_core.cache.kv_fp8 import FP8
from swiftinfer_core.config import EngineConfig, KVCacheDType
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.runner.resolve import rank_config

ARGS = ModelArgs(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64)


def test_kv_cache_dtype_values():
    assert EngineConfig().kv_cache_dtype is KVCacheDType.AUTO
    assert EngineConfig(kv_cache_dtype="fp8").kv_cache_dtype is KVCacheDType.FP8
    for bad in ("fp16", "int8", "e5m2", ""):
        with pytest.raises(InvalidRequestError, match="kv_cache_dtype"):
            EngineConfig(kv_cache_dtype=bad)
    described = EngineConfig.model_json_schema()["properties"]["kv_cache_dtype"]["description"]
    assert "fp8" in described and "auto" in described


@pytest.mark.parametrize("kv,dtype,want", [("auto", "float32", torch.float32), ("fp8", "float32", FP8),
                                           ("auto", "bfloat16", torch.bfloat16), ("fp8", "bfloat16", FP8)])
def test_resolved_to_the_pool_storage_dtype(kv, dtype, want):
    rc = rank_config(EngineConfig(device="cpu", dtype=dtype, kv_cache_dtype=kv, window=60), Path("/nonexistent"), ARGS)
    assert rc.cache_dtype == want and rc.dtype == getattr(torch, dtype)
