"""FP8 (e4m3) KV cache in the Triton kernels (cache/kv_fp8.py, kernels/kv_fp8_tl.py).

The write path is bit-identical to torch's quantisation (Fp8KV.quantize through
reference.write_cache_ref); decode and prefill attention over an fp8 cache match
float64 attention over the *dequantised* cache, i.e. exactly the values the
kernels read, on fresh random inputs: ring wrap-around, sinks, streams past 1e6,
GQA, rows of very different magnitudes (so different scales). Interpreter on the
CPU, native on a GPU; the 7B-shape bf16 cases need a GPU."""

from __future__ import annotations

import random

import pytest
import torch
from kernels_naive import TOL, fresh_seed, make_inputs, naive_attention, rel_err

from swiftinfer_core.cache.kv_fp8 import E4M3_MAX, FP8, Fp8KV
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.attention import FP8_DECODE_TILES, TorchAttention, TritonAttention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.decode_attention import decode_attention
from swiftinfer_core.kernels.decode_splits import decode_splits, decode_workspace
from swiftinfer_core.kernels.prefill_attention import prefill_attention
from swiftinfer_core.kernels.triton_common import sm_count
from swiftinfer_core.kernels.reference import (
    plan_step,
    streaming_attention_ref,
    write_cache_ref,
)
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.kernels.write_cache import write_kv


def _spread(x: torch.Tensor) -> torch.Tensor:
    """x [..., D] with each row scaled by 10**U(-2, 0.5): rows get different scales
    (while scores stay in a range where bf16's rounding of q keeps its tolerance)."""
    return x * torch.pow(10.0, torch.empty(x.shape[:-1] + (1,), device=x.device).uniform_(-2, 0.5)).to(x)


def _fp8(cache: torch.Tensor) -> Fp8KV:
    """A float cache (NaN rows stay NaN: rows no kernel may read) quantised, rows spread."""
    return Fp8KV.quantize(_spread(cache.float()))


def _same(a: Fp8KV, b: Fp8KV) -> bool:
    """Bit-identical e4m3 bytes (NaN poison included) and scales."""
    return torch.equal(a.data.view(torch.uint8), b.data.view(torch.uint8)) and torch.equal(a.scale, b.scale)


def _e4m3_midpoints() -> torch.Tensor:
    """[448, every midpoint between neighbouring finite e4m3 values]: with amax 448 the
    scale is 1, so the kernel rounds exactly these (ties to even, carries into the exponent)."""
    vals = torch.arange(256, dtype=torch.uint8).view(FP8).float()
    vals = vals[vals.isfinite() & (vals >= 0)].unique().sort().values
    mids = (vals[1:] + vals[:-1]) / 2
    return torch.cat([torch.tensor([E4M3_MAX]), mids, -mids])


def test_write_kv_fp8_is_bit_identical_to_torch_quantize(dev):
    seed = fresh_seed()
    mids = _e4m3_midpoints()
    for layout in (StreamLayout(4, 8), StreamLayout(0, 8)):
        seqs = [(0, 3), (0, 30), (2, 5), (9, 1), (13, 9), (987_654, 20), (40, 0)]
        random.shuffle(seqs)
        B = len(seqs)
        slots = random.sample(range(B + 1), B)
        starts, q_lens = [n for n, _ in seqs], [c for _, c in seqs]
        T = sum(q_lens)
        kn, vn = _spread(torch.randn(T, 3, 64)), _spread(torch.randn(T, 3, 64))
        kn[:, 0] = mids[torch.randint(mids.numel(), (T, 64))]
        kn[:, 0, 0] = E4M3_MAX  # head 0: amax 448, scale 1: the midpoints are rounded as they are
        kn[:, 1][torch.rand(T) < 0.2] = 0.0  # all-zero rows
        kc, vc = _fp8(torch.randn(B + 1, 3, layout.capacity, 64)), _fp8(torch.randn(B + 1, 3, layout.capacity, 64))
        want_k, want_v = kc.clone(), vc.clone()
        write_cache_ref(kn, vn, want_k, want_v, AttnBatch.build(slots, starts, q_lens, "cpu"), layout)
        # one padding row (slot -1) in the launch must write nothing
        pad_slots, pad_starts, pad_lens = slots + [-1], starts + [5], q_lens + [2]
        kn2, vn2 = torch.cat([kn, torch.randn(2, 3, 64)]), torch.cat([vn, torch.randn(2, 3, 64)])
        batch = AttnBatch.build(pad_slots, pad_starts, pad_lens, dev)
        tok_seq = torch.tensor([i for i, c in enumerate(pad_lens) for _ in range(c)], dtype=torch.int32, device=dev)
        kcd, vcd = Fp8KV(kc.data.to(dev), kc.scale.to(dev)), Fp8KV(vc.data.to(dev), vc.scale.to(dev))
        write_kv(kn2.to(dev), vn2.to(dev), kcd.data, vcd.data, tok_seq, batch.slots, batch.starts, batch.cu_seqlens,
                 layout.sinks, layout.window, k_scale=kcd.scale, v_scale=vcd.scale)
        assert _same(kcd.cpu(), want_k), f"seed {seed}"
        assert _same(vcd.cpu(), want_v), f"seed {seed}"


def _starts(cap: int) -> list[int]:
    # empty cache, inside the sinks, unfilled, exactly full, wrapped once, many times, > 1e6
    return [0, 1, 3, cap // 2, cap - 1, cap, cap + 1, 2 * cap + 3, 4321, 1_234_567]


@pytest.mark.parametrize("sinks,window,hq,hkv,D,dtype,fused_combine", [
    (4, 28, 4, 2, 64, torch.float32, False),
    (1, 27, 2, 1, 128, torch.bfloat16, True),
])
def test_decode_fp8_matches_float64_on_the_dequantised_cache(sinks, window, hq, hkv, D, dtype, fused_combine, dev):
    seed = fresh_seed()
    layout = StreamLayout(sinks, window)
    starts = _starts(layout.capacity)
    random.shuffle(starts)
    B = len(starts)
    slots = random.sample(range(B + 3), B)
    q, kn, vn, kc, vc = make_inputs(layout, slots, starts, [1] * B, hq, hkv, D, torch.float32, "cpu", num_slots=B + 3)
    q, kn, vn = q.to(dtype), _spread(kn).to(dtype), _spread(vn).to(dtype)
    kc8, vc8 = _fp8(kc), _fp8(vc)
    freqs = inv_freq(D, 10000.0)
    ref = naive_attention(q, kn, vn, kc8.dequantize(torch.float64), vc8.dequantize(torch.float64), slots, starts, [1] * B,
                          layout, freqs, D**-0.5)
    want_k, want_v = kc8.clone(), vc8.clone()
    write_cache_ref(kn, vn, want_k, want_v, AttnBatch.build(slots, starts, [1] * B, "cpu"), layout)
    batch = AttnBatch.build(slots, starts, [1] * B, dev)
    kd, vd = Fp8KV(kc8.data.to(dev), kc8.scale.to(dev)), Fp8KV(vc8.data.to(dev), vc8.scale.to(dev))
    out = torch.full_like(q, float("nan")).to(dev)
    for splits in [None, (-(-layout.capacity // 16), 16)]:  # auto, and one 16-key tile per split
        sp = splits or decode_splits(B, hkv, layout.capacity, 16, sm_count(out.device))
        kd_run, vd_run = kd.clone(), vd.clone()  # each run starts from the same cache
        decode_attention(q.to(dev), kn.to(dev), vn.to(dev), kd_run.data, vd_run.data, batch.slots, batch.starts, freqs.to(dev),
                         D**-0.5, sinks, window, out=out, block_n=16, splits=sp, workspace=decode_workspace(B, hq, hkv, D, sp[0], out.device),
                         fused_combine=fused_combine, k_scale=kd_run.scale, v_scale=vd_run.scale)
        assert not out.isnan().any(), f"seed {seed}: unwritten/NaN output"
        err = rel_err(out, ref)
        assert err < TOL[dtype], f"seed {seed} splits {splits}: rel err {err:.2e}"
        # the new token stored quantised in its ring row, nothing else touched
        assert _same(kd_run.cpu(), want_k) and _same(vd_run.cpu(), want_v), f"seed {seed}"


def _seqs(cap: int, window: int) -> list[tuple[int, int]]:
    """(n, c) as tests/kernels/test_prefill_attention.py: fresh chunks, chunks longer than
    the window, across the sink boundary, unfilled, wrapped with chunk > window, past 1e6."""
    return [(0, 7), (0, window + 9), (2, 5), (cap // 2, 3), (5000, 1), (cap + 3, window + 6), (1_234_567, 9)]


@pytest.mark.parametrize("sinks,window,hq,hkv,D,dtype", [
    (4, 12, 4, 2, 64, torch.float32),
    (4, 20, 6, 2, 128, torch.bfloat16),  # group of 3
])
def test_prefill_fp8_matches_float64_on_the_dequantised_cache(sinks, window, hq, hkv, D, dtype, dev):
    seed = fresh_seed()
    layout = StreamLayout(sinks, window)
    seqs = _seqs(layout.capacity, window)
    random.shuffle(seqs)
    starts, q_lens = [n for n, _ in seqs], [c for _, c in seqs]
    B = len(seqs)
    slots = random.sample(range(B + 2), B)
    q, kn, vn, kc, vc = make_inputs(layout, slots, starts, q_lens, hq, hkv, D, torch.float32, "cpu", num_slots=B + 2)
    q, kn, vn = q.to(dtype), _spread(kn).to(dtype), _spread(vn).to(dtype)
    kc8, vc8 = _fp8(kc), _fp8(vc)
    freqs = inv_freq(D, 10000.0)
    ref = naive_attention(q, kn, vn, kc8.dequantize(torch.float64), vc8.dequantize(torch.float64), slots, starts, q_lens,
                          layout, freqs, D**-0.5)
    batch = AttnBatch.build(slots, starts, q_lens, dev)
    out = torch.full_like(q, float("nan")).to(dev)
    kd, vd = Fp8KV(kc8.data.to(dev), kc8.scale.to(dev)), Fp8KV(vc8.data.to(dev), vc8.scale.to(dev))
    prefill_attention(q.to(dev), kn.to(dev), vn.to(dev), kd.data, vd.data, batch.slots, batch.starts, batch.cu_seqlens,
                      max(q_lens), freqs.to(dev), D**-0.5, sinks, window, out=out, block_m=16, block_n=16,
                      k_scale=kd.scale, v_scale=vd.scale)
    assert not out.isnan().any(), f"seed {seed}: unwritten/NaN output"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"seed {seed}: rel err {err:.2e}"


SCHEDULE = [  # per step: (slot, q_len); prefill chunks, decode steps, mixed steps, wrap-around
    [(2, 7), (0, 20), (1, 3)],
    [(2, 1), (0, 1), (1, 1)],
    [(2, 1), (1, 17)],
    [(0, 30), (2, 1)],
    [(2, 1), (0, 1), (1, 5)],
    [(2, 1), (0, 1), (1, 1)],
]


def test_triton_backend_matches_torch_on_an_fp8_cache(dev):
    """Through the model's prepare/forward API: same outputs, bit-identical fp8 caches."""
    seed = fresh_seed()
    layout = StreamLayout(4, 12)
    hq, hkv, D = 4, 2, 64
    freqs = inv_freq(D, 10000.0).to(dev)
    backends = [TorchAttention(layout, freqs, D**-0.5), TritonAttention(layout, freqs, D**-0.5, block_n=16)]
    caches = [[Fp8KV.zeros((3, hkv, layout.capacity, D), dev) for _ in range(2)] for _ in backends]
    fed = {0: 0, 1: 0, 2: 0}
    for step in SCHEDULE:
        slots, lens = [s for s, _ in step], [c for _, c in step]
        batch = AttnBatch.build(slots, [fed[s] for s in slots], lens, dev)
        q = torch.randn(sum(lens), hq, D, device=dev)
        k, v = _spread(torch.randn(sum(lens), hkv, D, device=dev)), torch.randn(sum(lens), hkv, D, device=dev)
        o_ref, o_tri = [be.forward(be.prepare(batch), q, k, v, *c) for be, c in zip(backends, caches)]
        assert rel_err(o_tri, o_ref) < 1e-5, f"seed {seed} step {step}"
        for a, b in zip(*caches):
            assert _same(a.cpu(), b.cpu()), f"seed {seed} step {step}"
        for s, c in step:
            fed[s] += c


def test_triton_backend_decodes_a_bf16_query_over_fp8_in_its_fp8_tiles(dev):
    """The backend's default decode over an FP8 cache with a bf16 query runs FP8_DECODE_TILES (128-key tiles, its
    splits in whole tiles) and agrees with float64 attention over the dequantised cache, caches bit-identical to
    the torch path's writes; a float32 query, or a head_dim not a multiple of 4 (the float32 path), keeps the
    backend's own tiles."""
    seed = fresh_seed()
    layout = StreamLayout(4, 300)  # 304 rows: three 128-key tiles, the last one partial
    hq, hkv, D = 4, 2, 64
    freqs = inv_freq(D, 10000.0).to(dev)
    tri, ref = TritonAttention(layout, freqs, D**-0.5), TorchAttention(layout, freqs, D**-0.5)
    assert tri._decode_tiles(torch.empty(1, hq, D, dtype=torch.bfloat16), fp8=True) == FP8_DECODE_TILES
    assert tri._decode_tiles(torch.empty(1, hq, D, dtype=torch.float32), fp8=True) == (tri.block_n, tri.stages)
    assert tri._decode_tiles(torch.empty(1, hq, 66, dtype=torch.bfloat16), fp8=True) == (tri.block_n, tri.stages)
    assert tri._decode_tiles(torch.empty(1, hq, D, dtype=torch.bfloat16), fp8=False) == (tri.block_n, tri.stages)
    caches = [[Fp8KV.quantize(_spread(torch.randn(3, hkv, layout.capacity, D, device=dev))) for _ in range(2)] for _ in range(2)]
    caches[1] = [c.clone() for c in caches[0]]
    starts = [5, 303, 1000]  # inside the window, exactly full less one, wrapped
    batch = AttnBatch.build([2, 0, 1], starts, [1] * 3, dev)
    q = torch.randn(3, hq, D, device=dev).to(torch.bfloat16)
    k, v = _spread(torch.randn(3, hkv, D, device=dev)).to(torch.bfloat16), torch.randn(3, hkv, D, device=dev).to(torch.bfloat16)
    want = ref.forward(ref.prepare(batch), q.double(), k.double(), v.double(), *caches[1])
    plan = tri.prepare(batch)
    out = tri.forward(plan, q, k, v, *caches[0])
    assert plan.splits[1] % FP8_DECODE_TILES[0] == 0
    assert rel_err(out.double(), want) < 1e-2, f"seed {seed}"
    for a, b in zip(*caches):
        assert _same(a.cpu(), b.cpu()), f"seed {seed}"


# ---- GPU only: bf16 at Llama-2-7B shapes (32 query heads x 128), fp8 caches 4+252 .. 4+4092


def _ref64(q, kn, vn, kc8: Fp8KV, vc8: Fp8KV, batch, layout, freqs, scale):
    """reference.py on float64 copies of the dequantised cache, on the GPU."""
    plans = plan_step(batch, layout, q.device)
    return streaming_attention_ref(q.double(), kn.double(), vn.double(), kc8.dequantize(torch.float64),
                                   vc8.dequantize(torch.float64), plans, freqs, scale)


@pytest.mark.gpu
@pytest.mark.parametrize("window", [252, 1020, 4092])
@pytest.mark.parametrize("hkv", [32, 8])
def test_decode_fp8_gpu_7b_shapes(window, hkv):
    seed = fresh_seed()
    dev = torch.device("cuda")
    layout = StreamLayout(4, window)
    cap = layout.capacity
    starts = [0, 3, cap // 3, cap - 1, cap, 5 * cap + 17, 2_000_001]
    B = len(starts)
    q = torch.randn(B, 32, 128, device=dev, dtype=torch.bfloat16)
    kn = torch.randn(B, hkv, 128, device=dev, dtype=torch.bfloat16)
    vn = torch.randn_like(kn)
    kc8 = Fp8KV.quantize(_spread(torch.randn(B, hkv, cap, 128, device=dev)))
    vc8 = Fp8KV.quantize(torch.randn(B, hkv, cap, 128, device=dev))
    freqs = inv_freq(128, 10000.0).to(dev)
    batch = AttnBatch.build(list(range(B))[::-1], starts, [1] * B, dev)
    want_k, want_v = kc8.clone(), vc8.clone()
    write_cache_ref(kn, vn, want_k, want_v, batch, layout)
    ref = _ref64(q, kn, vn, kc8, vc8, batch, layout, freqs, 128**-0.5)
    for fused_combine in (False, True):
        k_run, v_run = kc8.clone(), vc8.clone()
        splits = decode_splits(B, hkv, cap, 64, sm_count(dev))
        out = decode_attention(q, kn, vn, k_run.data, v_run.data, batch.slots, batch.starts, freqs, 128**-0.5, 4, window,
                               splits=splits, workspace=decode_workspace(B, 32, hkv, 128, splits[0], dev),
                               fused_combine=fused_combine, k_scale=k_run.scale, v_scale=v_run.scale)
        torch.cuda.synchronize()
        err = rel_err(out, ref)
        assert not out.isnan().any() and err < 1e-2, f"seed {seed}: rel err {err:.2e}"
        assert _same(k_run, want_k) and _same(v_run, want_v), f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("window", [252, 4092])
@pytest.mark.parametrize("hkv", [32, 8])
def test_prefill_and_write_fp8_gpu_7b_shapes(window, hkv):
    seed = fresh_seed()
    dev = torch.device("cuda")
    layout = StreamLayout(4, window)
    cap = layout.capacity
    seqs = [(0, 300), (2, 37), (cap - 5, 64), (7 * cap + 11, 512), (1_000_003, 1)]
    starts, q_lens = [n for n, _ in seqs], [c for _, c in seqs]
    B, T = len(seqs), sum(q_lens)
    q = torch.randn(T, 32, 128, device=dev, dtype=torch.bfloat16)
    kn = _spread(torch.randn(T, hkv, 128, device=dev)).to(torch.bfloat16)
    vn = torch.randn_like(kn)
    kc8 = Fp8KV.quantize(_spread(torch.randn(B, hkv, cap, 128, device=dev)))
    vc8 = Fp8KV.quantize(torch.randn(B, hkv, cap, 128, device=dev))
    freqs = inv_freq(128, 10000.0).to(dev)
    batch = AttnBatch.build(list(range(B)), starts, q_lens, dev)
    ref = _ref64(q, kn, vn, kc8, vc8, batch, layout, freqs, 128**-0.5)
    out = prefill_attention(q, kn, vn, kc8.data, vc8.data, batch.slots, batch.starts, batch.cu_seqlens, max(q_lens), freqs,
                            128**-0.5, 4, window, k_scale=kc8.scale, v_scale=vc8.scale)
    torch.cuda.synchronize()
    err = rel_err(out, ref)
    assert not out.isnan().any() and err < 1e-2, f"seed {seed}: rel err {err:.2e}"
    want_k, want_v = kc8.clone(), vc8.clone()
    write_cache_ref(kn, vn, want_k, want_v, batch, layout)
    tok_seq = torch.tensor([i for i, c in enumerate(q_lens) for _ in range(c)], dtype=torch.int32, device=dev)
    write_kv(kn, vn, kc8.data, vc8.data, tok_seq, batch.slots, batch.starts, batch.cu_seqlens, 4, window,
             k_scale=kc8.scale, v_scale=vc8.scale)
    assert _same(kc8, want_k) and _same(vc8, want_v), f"seed {seed}"
