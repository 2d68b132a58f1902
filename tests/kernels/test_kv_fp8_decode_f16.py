"""The decode kernel's float16 path over an FP8 cache (kernels/kv_fp8_decode_tl.py:
a bf16/fp16 query over e4m3 rows) at the ranges it rescales for: queries beyond
fp16's 65504 (q is divided by a power of two), V row scales 2**-12 .. 2**12 apart
in one window (weights are taken relative to the running max of the V scales, acc
rescaled as it grows), K rows of different scales, padded head dims (80 -> 128: V
is read as int32 words, four strided tiles), GQA, and the ring/sinks cases of test_kv_fp8_attention.
Against float64 attention over the dequantised cache, for every token and head on
its own (V scales 2**24 apart give heads of very different magnitudes; a wrong
rescale shows as an O(1) error in the small ones, which the norm over all heads
would hide), to 1e-2: with scores this spread the fp16 roundings (the rotation
table, the rotated key, the weights; 2**-11 each) give up to ~4e-3 per head, where
the bf16 kernels' tolerance is 2e-2 (kernels_naive.TOL). A split walking the whole
cache checks the query's tile-to-tile rotation over many tiles. Interpreter on the CPU,
native on a GPU (where the packed e4m3x2 conversion runs)."""

from __future__ import annotations

import random

import pytest
import torch
from kernels_naive import fresh_seed, make_inputs, naive_attention, rel_err

from swiftinfer_core.cache.kv_fp8 import Fp8KV
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.decode_attention import decode_attention
from swiftinfer_core.kernels.decode_splits import decode_splits, decode_workspace
from swiftinfer_core.kernels.reference import write_cache_ref
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.kernels.triton_common import sm_count


def _rows_times(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """x [..., D] with each row times 2**U(lo, hi) (NaN rows stay NaN)."""
    return x * torch.pow(2.0, torch.empty(x.shape[:-1] + (1,)).uniform_(lo, hi))


@pytest.mark.parametrize("sinks,window,hq,hkv,D,dtype,variant", [
    (4, 28, 4, 2, 80, torch.bfloat16, {}),
    (1, 27, 2, 2, 64, torch.float16, {}),
    (4, 124, 4, 1, 128, torch.bfloat16, {}),  # 8 tiles in one split
    (4, 28, 4, 2, 64, torch.bfloat16, dict(sliding=9, softcap=3.0, alibi=True)),  # layer variants on the same path
    (4, 124, 4, 1, 128, torch.bfloat16, dict(maxnreg=128)),  # registers capped: spilled code on a GPU (ignored by the interpreter)
    (4, 28, 4, 2, 68, torch.bfloat16, {}),  # 68 -> 128 padded, 17 words of V per row
    (2, 14, 2, 1, 66, torch.bfloat16, dict(tol=3e-2)),  # head_dim % 4 == 2: the float32 path (bf16 operands; bf16's rounding)
])
def test_decode_fp8_f16_path_at_wide_ranges(sinks, window, hq, hkv, D, dtype, variant, dev):
    seed = fresh_seed()
    layout = StreamLayout(sinks, window)
    cap = layout.capacity
    starts = [0, 2, cap // 2, cap - 1, cap, 3 * cap + 5, 1_234_567]
    random.shuffle(starts)
    B = len(starts)
    slots = random.sample(range(B + 2), B)
    q, kn, vn, kc, vc = make_inputs(layout, slots, starts, [1] * B, hq, hkv, D, torch.float32, "cpu", num_slots=B + 2)
    # |q| up to ~4e5 (bf16; fp16 caps at 6e4), keys ~2**-17 so that scores stay O(1)
    q = (q * (1e5 if dtype == torch.bfloat16 else 1e3)).to(dtype)
    kc8 = Fp8KV.quantize(_rows_times(kc, -19 if dtype == torch.bfloat16 else -12, -15 if dtype == torch.bfloat16 else -8))
    vc8 = Fp8KV.quantize(_rows_times(vc, -12, 12))
    kn = _rows_times(kn, -19 if dtype == torch.bfloat16 else -12, -15 if dtype == torch.bfloat16 else -8).to(dtype)
    vn = _rows_times(vn, -12, 12).to(dtype)
    freqs = inv_freq(D, 10000.0)
    slopes = torch.rand(hq) * 0.3 if variant.get("alibi") else None
    sliding, softcap = variant.get("sliding", 0), variant.get("softcap", 0.0)
    ref = naive_attention(q, kn, vn, kc8.dequantize(torch.float64), vc8.dequantize(torch.float64), slots, starts, [1] * B,
                          layout, freqs, D**-0.5, sliding=sliding, slopes=slopes, softcap=softcap)
    want_k, want_v = kc8.clone(), vc8.clone()
    write_cache_ref(kn, vn, want_k, want_v, AttnBatch.build(slots, starts, [1] * B, "cpu"), layout)
    batch = AttnBatch.build(slots, starts, [1] * B, dev)
    for splits in [None, (-(-cap // 16), 16), (1, -(-cap // 16) * 16)]:  # auto, one tile per split, one split
        sp = splits or decode_splits(B, hkv, cap, 16, sm_count(torch.device(dev)))
        k_run = Fp8KV(kc8.data.to(dev), kc8.scale.to(dev))
        v_run = Fp8KV(vc8.data.to(dev), vc8.scale.to(dev))
        out = decode_attention(q.to(dev), kn.to(dev), vn.to(dev), k_run.data, v_run.data, batch.slots, batch.starts,
                               freqs.to(dev), D**-0.5, sinks, window, block_n=16, splits=sp,
                               workspace=decode_workspace(B, hq, hkv, D, sp[0], torch.device(dev)),
                               k_scale=k_run.scale, v_scale=v_run.scale, sliding_window=sliding, softcap=softcap,
                               alibi=slopes.to(dev) if slopes is not None else None, maxnreg=variant.get("maxnreg"))
        assert not out.isnan().any() and not out.isinf().any(), f"seed {seed}"
        # per (token, head): each output has its own magnitude (V scales 2**24 apart)
        for b in range(B):
            for h in range(hq):
                err = rel_err(out[b, h], ref[b, h])
                assert err < variant.get("tol", 1e-2), f"seed {seed} splits {splits} b {b} h {h}: rel err {err:.2e}"
        k_run, v_run = k_run.cpu(), v_run.cpu()
        assert torch.equal(k_run.data.view(torch.uint8), want_k.data.view(torch.uint8)) and torch.equal(k_run.scale, want_k.scale)
        assert torch.equal(v_run.data.view(torch.uint8), want_v.data.view(torch.uint8)) and torch.equal(v_run.scale, want_v.scale)
