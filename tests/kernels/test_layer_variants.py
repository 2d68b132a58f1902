"""Decode and prefill kernels for every model family's attention: head dims 64,
80, 96, 128, 256; MHA, GQA and MQA; partial rotary (q/k dims reordered, passed
dims at frequency 0); ALiBi at in-cache distances; local sliding-window layers;
soft-capped scores. Against float64 references built from layout.py's rules
with transformers' own partial-rotary layout, on fresh random inputs
(the interpreter on CPU, natively on a GPU)."""

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
from swiftinfer_core.kernels.prefill_attention import prefill_attention
from swiftinfer_core.model.layers import alibi_slopes, rotary_perm
from swiftinfer_core.model.rope_scaling import kernel_freqs

# (name, D, rotary dims or 0 for ALiBi, hq, hkv, sliding window, softcap, dtype)
VARIANTS = [
    ("pythia-partial-mqa", 80, 20, 4, 1, 0, 0.0, torch.float32),
    ("phi3-mha", 96, 96, 3, 3, 0, 0.0, torch.float32),
    ("gemma-local-softcap", 256, 256, 2, 1, 7, 1.5, torch.float32),
    ("mpt-alibi-gqa", 64, 0, 4, 2, 0, 0.0, torch.float32),
    ("alibi-local-bf16", 128, 0, 4, 1, 9, 0.0, torch.bfloat16),
    ("partial-gqa-fp16", 128, 32, 4, 2, 0, 2.0, torch.float16),
]


def _setup(D, rot, hq):
    """(kernel freqs [D/2], reference freqs [rot/2], dim order, ALiBi slopes or None)."""
    if rot == 0:
        return torch.zeros(D // 2), torch.zeros(D // 2), torch.arange(D), alibi_slopes(hq, 8.0) * 4  # steeper: the bias matters
    f = 1.0 / (10000.0 ** (torch.arange(0, rot, 2).double() / rot))
    return kernel_freqs(f.float(), D), f.float(), rotary_perm(D, rot), None


def _check(out, ref, dtype, seed, name):
    assert not out.isnan().any(), f"{name} seed {seed}: NaN output"
    err = rel_err(out, ref)
    assert err < TOL[dtype] * (2 if dtype != torch.float32 else 1), f"{name} seed {seed}: rel err {err:.2e}"


@pytest.mark.parametrize("name,D,rot,hq,hkv,sliding,cap,dtype", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_decode_variants_match_float64(name, D, rot, hq, hkv, sliding, cap, dtype, dev):
    seed = fresh_seed()
    layout = StreamLayout(2, 14)
    starts = [0, 1, 5, 15, 16, 17, 40, 1_000_003]
    random.shuffle(starts)
    B = len(starts)
    slots = random.sample(range(B + 1), B)
    q, kn, vn, kc, vc = make_inputs(layout, slots, starts, [1] * B, hq, hkv, D, dtype, dev, num_slots=B + 1)
    kfreqs, rfreqs, perm, slopes = _setup(D, rot, hq)
    ref = naive_attention(q, kn, vn, kc, vc, slots, starts, [1] * B, layout, rfreqs, D**-0.5, sliding, slopes, cap)
    batch = AttnBatch.build(slots, starts, [1] * B, dev)
    out = torch.full_like(q, float("nan"))
    for block_n, fc in [(16, False), (32, True)]:
        splits = decode_splits(B, hkv, layout.capacity, block_n, sm_count(q.device))
        ws = decode_workspace(B, hq, hkv, D, splits[0], q.device)
        kcp, vcp = kc[..., perm].contiguous(), vc.clone()  # the cache holds reordered keys, as the model writes them
        decode_attention(q[..., perm].contiguous(), kn[..., perm].contiguous(), vn, kcp, vcp, batch.slots, batch.starts,
                         kfreqs.to(dev), D**-0.5, layout.sinks, layout.window, out=out, block_n=block_n, splits=splits,
                         workspace=ws, fused_combine=fc, sliding_window=sliding,
                         alibi=None if slopes is None else slopes.to(dev), softcap=cap)
        _check(out, ref, dtype, seed, f"{name} block_n {block_n}")


@pytest.mark.parametrize("name,D,rot,hq,hkv,sliding,cap,dtype", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_prefill_variants_match_float64(name, D, rot, hq, hkv, sliding, cap, dtype, dev):
    seed = fresh_seed()
    layout = StreamLayout(2, 10)
    seqs = [(0, 7), (0, 19), (1, 4), (6, 3), (30, 12), (777_777, 5)]
    random.shuffle(seqs)
    starts, q_lens = [n for n, _ in seqs], [c for _, c in seqs]
    slots = random.sample(range(len(seqs) + 1), len(seqs))
    q, kn, vn, kc, vc = make_inputs(layout, slots, starts, q_lens, hq, hkv, D, dtype, dev, num_slots=len(seqs) + 1)
    kfreqs, rfreqs, perm, slopes = _setup(D, rot, hq)
    ref = naive_attention(q, kn, vn, kc, vc, slots, starts, q_lens, layout, rfreqs, D**-0.5, sliding, slopes, cap)
    batch = AttnBatch.build(slots, starts, q_lens, dev)
    out = torch.full_like(q, float("nan"))
    prefill_attention(q[..., perm].contiguous(), kn[..., perm].contiguous(), vn, kc[..., perm].contiguous(), vc,
                      batch.slots, batch.starts, batch.cu_seqlens, max(q_lens), kfreqs.to(dev), D**-0.5,
                      layout.sinks, layout.window, out=out, block_m=16, block_n=16, sliding_window=sliding,
                      alibi=None if slopes is None else slopes.to(dev), softcap=cap)
    _check(out, ref, dtype, seed, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("D", [128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_default_tiles_fit_the_gpu(D, dtype):
    """The kernels at their default tiles (what the engine launches) on every head size the
    families use, float32 too: prefill at 64 x 64 with head_dim 256 in float32 asked for more
    shared memory than an H200 has until the tiles were fitted (Gemma 3 270M in eval-ppl)."""
    dev = torch.device("cuda")
    seed = fresh_seed()
    layout = StreamLayout(4, 124)
    seqs = [(0, 70), (3, 130), (500, 64), (90, 1)]
    starts, q_lens = [n for n, _ in seqs], [c for _, c in seqs]
    slots = [2, 0, 3, 1]
    hq, hkv = 4, 1
    q, kn, vn, kc, vc = make_inputs(layout, slots, starts, q_lens, hq, hkv, D, dtype, dev, num_slots=4)
    kfreqs, rfreqs, perm, _ = _setup(D, D, hq)
    ref = naive_attention(q, kn, vn, kc, vc, slots, starts, q_lens, layout, rfreqs, D**-0.5, 0, None, 0.0)
    batch = AttnBatch.build(slots, starts, q_lens, dev)
    out = prefill_attention(q[..., perm].contiguous(), kn[..., perm].contiguous(), vn, kc[..., perm].contiguous(), vc,
                            batch.slots, batch.starts, batch.cu_seqlens, max(q_lens), kfreqs.to(dev), D**-0.5,
                            layout.sinks, layout.window)
    _check(out, ref, dtype, seed, f"prefill D {D}")
    B = 6
    dstarts, dslots = [0, 7, 127, 128, 129, 10_000], [5, 0, 1, 2, 3, 4]
    q, kn, vn, kc, vc = make_inputs(layout, dslots, dstarts, [1] * B, hq, hkv, D, dtype, dev, num_slots=B)
    ref = naive_attention(q, kn, vn, kc, vc, dslots, dstarts, [1] * B, layout, rfreqs, D**-0.5, 0, None, 0.0)
    batch = AttnBatch.build(dslots, dstarts, [1] * B, dev)
    out = decode_attention(q[..., perm].contiguous(), kn[..., perm].contiguous(), vn, kc[..., perm].contiguous(), vc.clone(),
                           batch.slots, batch.starts, kfreqs.to(dev), D**-0.5, layout.sinks, layout.window)
    _check(out, ref, dtype, seed, f"decode D {D}")
