"""Triton decode attention vs a float64 naive loop (fresh random inputs each run).

On CPU the kernels run in Triton's interpreter (conftest.py); on a GPU natively."""

from __future__ import annotations

import random

import pytest
import torch

from kernels_naive import TOL, fresh_seed, make_inputs, naive_attention, rel_err
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.decode_attention import decode_attention
from swiftinfer_core.kernels.decode_splits import decode_splits, decode_workspace
from swiftinfer_core.kernels.triton_common import sm_count
from swiftinfer_core.kernels.reference import plan_step, streaming_attention_ref, write_cache_ref
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.kernels.write_cache import write_kv


def _starts(cap: int) -> list[int]:
    # empty cache, inside the sinks, unfilled, exactly full, wrapped once, many times, > 1e6
    return [0, 1, 3, cap // 2, cap - 1, cap, cap + 1, 2 * cap + 3, 4321, 1_234_567]


def _run_decode(layout, hq, hkv, D, dtype, dev, splits, fuse=True, block_n=16, pad_slot=False, stages=3, fused_combine=False):
    starts = _starts(layout.capacity)
    random.shuffle(starts)
    B = len(starts)
    slots = random.sample(range(B + 3), B)
    q, kn, vn, kc, vc = make_inputs(layout, slots, starts, [1] * B, hq, hkv, D, dtype, dev, num_slots=B + 3)
    freqs = inv_freq(D, 10000.0).to(dev)
    scale = D**-0.5
    ref = naive_attention(q, kn, vn, kc, vc, slots, starts, [1] * B, layout, freqs.cpu(), scale)
    run_slots = list(slots)
    if pad_slot:
        run_slots[0] = -1
    batch = AttnBatch.build(run_slots, starts, [1] * B, dev)
    kc0, vc0 = kc.clone(), vc.clone()
    if not fuse:  # write first, then every key (the new one too) comes from the cache
        write_kv(kn, vn, kc, vc, torch.arange(B, dtype=torch.int32, device=dev), batch.slots, batch.starts, batch.cu_seqlens, layout.sinks, layout.window)
    out = torch.full_like(q, float("nan"))
    splits = splits or decode_splits(B, hkv, layout.capacity, block_n, sm_count(q.device))
    ws = decode_workspace(B, hq, hkv, D, splits[0], q.device)
    decode_attention(q, kn, vn, kc, vc, batch.slots, batch.starts, freqs, scale, layout.sinks, layout.window,
                     fuse_write=fuse, out=out, block_n=block_n, splits=splits, stages=stages, workspace=ws,
                     fused_combine=fused_combine)
    assert torch.all(ws[2] == 0)  # fused-combine counters are left zeroed
    # the cache after: exactly write_cache_ref's (the new token in its ring row, nothing else touched)
    want_k, want_v = kc0.clone(), vc0.clone()
    keep = [i for i in range(B) if run_slots[i] >= 0]
    sub = AttnBatch.build([slots[i] for i in keep], [starts[i] for i in keep], [1] * len(keep), dev)
    write_cache_ref(kn[keep], vn[keep], want_k, want_v, sub, layout)
    torch.testing.assert_close(kc, want_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(vc, want_v, rtol=0, atol=0, equal_nan=True)
    if pad_slot:
        assert torch.all(out[0] == 0)
        return out[1:], ref[1:]
    return out, ref


CASES = [  # (sinks, window, hq, hkv, D, dtype); tiles of 16 keys (tl.dot's minimum on GPUs)
    (4, 28, 2, 2, 64, torch.float32),
    (0, 40, 4, 2, 64, torch.bfloat16),
    (4, 44, 8, 2, 128, torch.float16),
    (0, 20, 6, 2, 64, torch.float32),  # group of 3 (not a power of two)
    (1, 27, 2, 1, 128, torch.bfloat16),
]


@pytest.mark.parametrize("sinks,window,hq,hkv,D,dtype", CASES)
def test_decode_matches_float64(sinks, window, hq, hkv, D, dtype, dev):
    seed = fresh_seed()
    layout = StreamLayout(sinks, window)
    # auto splits, and one 16-key tile per split; second kernel or fused (last program) combine
    for splits, fc in [(None, False), ((-(-layout.capacity // 16), 16), False), ((-(-layout.capacity // 16), 16), True)]:
        out, ref = _run_decode(layout, hq, hkv, D, dtype, dev, splits, block_n=16, fused_combine=fc)
        assert not out.isnan().any(), f"seed {seed}: unwritten/NaN output"
        err = rel_err(out, ref)
        assert err < TOL[dtype], f"seed {seed} splits {splits} fused_combine {fc}: rel err {err:.2e}"


def test_decode_unfused_write_then_attend_unpipelined(dev):
    seed = fresh_seed()
    layout = StreamLayout(4, 12)
    out, ref = _run_decode(layout, 4, 2, 64, torch.float32, dev, None, fuse=False, stages=1)
    assert rel_err(out, ref) < TOL[torch.float32], f"seed {seed}"


def test_decode_padding_row_is_zero_and_writes_nothing(dev):
    seed = fresh_seed()
    layout = StreamLayout(4, 28)
    out, ref = _run_decode(layout, 2, 2, 64, torch.float32, dev, (2, 16), block_n=16, pad_slot=True, fused_combine=True)
    assert rel_err(out, ref) < TOL[torch.float32], f"seed {seed}"


# ---- GPU only: bf16 at Llama-2-7B shapes (32 heads x 128), caches 4+252 .. 4+4092


def _ref64(q, kn, vn, kc, vc, batch, layout, freqs, scale):
    """reference.py on float64 copies (its RoPE angles are float32), on the GPU."""
    plans = plan_step(batch, layout, q.device)
    return streaming_attention_ref(q.double(), kn.double(), vn.double(), kc.double(), vc.double(), plans, freqs, scale)


@pytest.mark.gpu
@pytest.mark.parametrize("window", [252, 508, 1020, 2044, 4092])
@pytest.mark.parametrize("hkv", [32, 8])
@pytest.mark.parametrize("fused_combine", [False, True])
@pytest.mark.parametrize("maxnreg", [None, 128])  # 128: ptxas spills (bench/kernels_decode.py --sweep times it)
def test_decode_gpu_7b_shapes(window, hkv, fused_combine, maxnreg):
    seed = fresh_seed()
    dev = torch.device("cuda")
    layout = StreamLayout(4, window)
    cap = layout.capacity
    starts = [0, 3, cap // 3, cap - 1, cap, 5 * cap + 17, 2_000_001]
    B = len(starts)
    slots = list(range(B))[::-1]
    q = torch.randn(B, 32, 128, device=dev, dtype=torch.bfloat16)
    kn = torch.randn(B, hkv, 128, device=dev, dtype=torch.bfloat16)
    vn = torch.randn_like(kn)
    kc = torch.randn(B, hkv, cap, 128, device=dev, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    freqs = inv_freq(128, 10000.0).to(dev)
    batch = AttnBatch.build(slots, starts, [1] * B, dev)
    want_k, want_v = kc.clone(), vc.clone()
    write_cache_ref(kn, vn, want_k, want_v, batch, layout)
    ref = _ref64(q, kn, vn, kc, vc, batch, layout, freqs, 128**-0.5)
    out = torch.full_like(q, float("nan"))
    splits = decode_splits(B, hkv, cap, 64, sm_count(dev))
    ws = decode_workspace(B, 32, hkv, 128, splits[0], dev)
    decode_attention(q, kn, vn, kc, vc, batch.slots, batch.starts, freqs, 128**-0.5, 4, window, out=out,
                     splits=splits, workspace=ws, fused_combine=fused_combine, maxnreg=maxnreg)
    torch.cuda.synchronize()
    assert torch.all(ws[2] == 0)
    assert not out.isnan().any()
    err = rel_err(out, ref)
    assert err < 1e-2, f"seed {seed}: rel err {err:.2e}"
    torch.testing.assert_close(kc, want_k, rtol=0, atol=0)
    torch.testing.assert_close(vc, want_v, rtol=0, atol=0)
