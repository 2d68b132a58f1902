"""The Triton kernels' head-shape check: a clear ValueError for unsupported heads,
raised when the attention is chosen (runner/build.py), not at the first step."""

from __future__ import annotations

import pytest
import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.kernels.triton_shapes import MAX_HEAD_DIM, check_triton_heads, fit_tiles, max_shared_memory, unsupported_heads
from swiftinfer_core.model.args import ModelArgs
from swiftinfer_core.runner.build import make_attention
from swiftinfer_core.runner.rank_config import RankConfig


@pytest.mark.parametrize("head_dim, hq, hkv", [(64, 9, 3), (128, 32, 8), (MAX_HEAD_DIM, 4, 4), (2, 1, 1)])
def test_supported_heads_pass(head_dim, hq, hkv):
    assert unsupported_heads(head_dim, hq, hkv) is None
    check_triton_heads(head_dim, hq, hkv)


@pytest.mark.parametrize("head_dim, hq, hkv, why", [
    (MAX_HEAD_DIM + 2, 4, 4, "exceeds"), (65, 4, 4, "odd"), (64, 9, 2, "not a multiple"), (64, 4, 0, "not a multiple"),
])
def test_unsupported_heads_raise_a_value_error_naming_the_reason(head_dim, hq, hkv, why):
    with pytest.raises(ValueError, match=why):
        check_triton_heads(head_dim, hq, hkv)


def test_choosing_triton_for_an_unsupported_model_fails_at_start_up():
    args = ModelArgs(vocab_size=32, hidden_size=1024, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=512,
                     intermediate_size=64, name="wide-heads")
    cfg = RankConfig(args=args, layout=StreamLayout(4, 60), device_type="cpu", dtype=torch.float32, attention="triton")
    with pytest.raises(InvalidRequestError, match=r"wide-heads: Triton attention cannot run this model: head_dim 512 exceeds.*'torch'"):
        make_attention(cfg, torch.device("cpu"))
    make_attention(RankConfig(args=args, layout=StreamLayout(4, 60), device_type="cpu", dtype=torch.float32), torch.device("cpu"))


H200_SMEM = 232_448  # bytes a block may use (Triton's max_shared_mem on the H200)


@pytest.mark.parametrize("d_pad, elem, q_rows, want", [
    (128, 2, 64, (64, 3)),   # 7B prefill, bf16: (128 + 384) * 128 * 2 = 131,072 bytes, as requested
    (64, 4, 64, (64, 3)),    # the default model in float32: 131,072, as requested
    (256, 2, 64, (64, 2)),   # Gemma prefill, bf16 (took 245,760 on the H200 at 3 stages): 196,608
    (256, 4, 64, (16, 2)),   # Gemma prefill, float32 (took 458,752): 196,608
    (256, 4, 16, (32, 2)),   # Gemma decode, float32: 163,840
    (128, 4, 64, (64, 2)),   # 7B shapes in float32: 196,608
])
def test_fit_tiles_shrinks_only_tiles_that_overflow_shared_memory(d_pad, elem, q_rows, want):
    got = fit_tiles(d_pad, elem, q_rows, 64, 3, H200_SMEM)
    assert got == want
    bn, st = got
    assert (2 * q_rows + 2 * st * bn) * d_pad * elem <= H200_SMEM


def test_fit_tiles_keeps_the_request_without_a_limit_and_stops_at_the_smallest_tile():
    assert fit_tiles(256, 4, 64, 64, 3, None) == (64, 3)
    assert fit_tiles(256, 4, 64, 64, 3, 1_000) == (16, 1)
    assert max_shared_memory(torch.device("cpu")) is None
