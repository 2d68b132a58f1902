"""Triton chunked-prefill attention + ring write vs float64 / write_cache_ref,
fresh random inputs each run (interpreter on CPU, native on a GPU)."""

from __future__ import annotations

import random

import pytest
import torch

from kernels_naive import TOL, fresh_seed, make_inputs, naive_attention, rel_err
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.prefill_attention import prefill_attention
from swiftinfer_core.kernels.reference import plan_step, streaming_attention_ref, write_cache_ref
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.kernels.write_cache import write_kv


def _seqs(cap: int, window: int) -> list[tuple[int, int]]:
    """(n, c): fresh chunk < window; from 0 longer than the window (spans the sink
    boundary, drops its own early tokens); n < sinks < n+c; unfilled cache; decode
    row in a mixed batch; wrapped with chunk > window; wrapped many times, > 1e6."""
    return [(0, 7), (0, window + 9), (2, 5), (cap // 2, 3), (5000, 1), (cap + 3, window + 6), (1_234_567, 9)]


def _run(layout, hq, hkv, D, dtype, dev, block_m=16, block_n=16):
    seqs = _seqs(layout.capacity, layout.window)
    random.shuffle(seqs)
    starts, q_lens = [n for n, _ in seqs], [c for _, c in seqs]
    B = len(seqs)
    slots = random.sample(range(B + 2), B)
    q, kn, vn, kc, vc = make_inputs(layout, slots, starts, q_lens, hq, hkv, D, dtype, dev, num_slots=B + 2)
    freqs = inv_freq(D, 10000.0).to(dev)
    ref = naive_attention(q, kn, vn, kc, vc, slots, starts, q_lens, layout, freqs.cpu(), D**-0.5)
    batch = AttnBatch.build(slots, starts, q_lens, dev)
    out = torch.full_like(q, float("nan"))
    prefill_attention(q, kn, vn, kc, vc, batch.slots, batch.starts, batch.cu_seqlens, max(q_lens), freqs, D**-0.5,
                      layout.sinks, layout.window, out=out, block_m=block_m, block_n=block_n)
    want_k, want_v = kc.clone(), vc.clone()
    write_cache_ref(kn, vn, want_k, want_v, batch, layout)
    tok_seq = torch.tensor([i for i, c in enumerate(q_lens) for _ in range(c)], dtype=torch.int32, device=dev)
    write_kv(kn, vn, kc, vc, tok_seq, batch.slots, batch.starts, batch.cu_seqlens, layout.sinks, layout.window)
    torch.testing.assert_close(kc, want_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(vc, want_v, rtol=0, atol=0, equal_nan=True)
    return out, ref


CASES = [  # (sinks, window, hq, hkv, D, dtype)
    (4, 12, 2, 2, 64, torch.float32),
    (0, 12, 4, 2, 64, torch.bfloat16),
    (4, 20, 6, 2, 128, torch.float16),  # group of 3
    (4, 12, 4, 1, 64, torch.float32),
]


@pytest.mark.parametrize("sinks,window,hq,hkv,D,dtype", CASES)
def test_prefill_matches_float64_and_writes_ring(sinks, window, hq, hkv, D, dtype, dev):
    seed = fresh_seed()
    out, ref = _run(StreamLayout(sinks, window), hq, hkv, D, dtype, dev)
    assert not out.isnan().any(), f"seed {seed}: unwritten/NaN output"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"seed {seed}: rel err {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("window", [252, 1020, 4092])
@pytest.mark.parametrize("hkv", [32, 8])
def test_prefill_gpu_7b_shapes(window, hkv):
    seed = fresh_seed()
    dev = torch.device("cuda")
    layout = StreamLayout(4, window)
    cap = layout.capacity
    seqs = [(0, 300), (2, 37), (cap - 5, 64), (7 * cap + 11, 512), (1_000_003, 1)]
    starts, q_lens = [n for n, _ in seqs], [c for _, c in seqs]
    B, T = len(seqs), sum(q_lens)
    slots = list(range(B))
    q = torch.randn(T, 32, 128, device=dev, dtype=torch.bfloat16)
    kn = torch.randn(T, hkv, 128, device=dev, dtype=torch.bfloat16)
    vn = torch.randn_like(kn)
    kc = torch.randn(B, hkv, cap, 128, device=dev, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    freqs = inv_freq(128, 10000.0).to(dev)
    batch = AttnBatch.build(slots, starts, q_lens, dev)
    plans = plan_step(batch, layout, dev)
    ref = streaming_attention_ref(q.double(), kn.double(), vn.double(), kc.double(), vc.double(), plans, freqs, 128**-0.5)
    out = torch.full_like(q, float("nan"))
    prefill_attention(q, kn, vn, kc, vc, batch.slots, batch.starts, batch.cu_seqlens, max(q_lens), freqs, 128**-0.5, 4, window, out=out)
    torch.cuda.synchronize()
    assert not out.isnan().any()
    err = rel_err(out, ref)
    assert err < 1e-2, f"seed {seed}: rel err {err:.2e}"
