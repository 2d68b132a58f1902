"""The backend objects: TritonAttention and TorchAttention give the same outputs
and leave the same cache over a multi-step schedule (prefill chunks, decode
steps, mixed steps), through the prepare/forward API the model uses."""

from __future__ import annotations

import pytest
import torch

from kernels_naive import fresh_seed, rel_err
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.attention import ATTENTION_BACKENDS, TorchAttention, TritonAttention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.rope import inv_freq

SCHEDULE = [  # per step: (slot, q_len) pairs
    [(2, 7), (0, 20), (1, 3)],
    [(2, 1), (0, 1), (1, 1)],
    [(2, 1), (0, 1), (1, 1)],
    [(2, 1), (1, 17)],  # mixed: decode + chunk longer than the window
    [(2, 1), (0, 1), (1, 1)],
    [(0, 30), (2, 1)],
    [(2, 1), (0, 1), (1, 5)],  # mixed, two decode rows first: one forward, each row through its own kernel
    [(2, 1), (0, 1), (1, 1)],
]


def _qkv(T, hq, hkv, D, dev, qk_norm=False):
    qkv = torch.randn(T, (hq + 2 * hkv) * D, device=dev)  # strided views, as the model's fused projection
    q, k, v = qkv.split([hq * D, hkv * D, hkv * D], -1)
    q, k, v = q.view(T, hq, D), k.view(T, hkv, D), v.view(T, hkv, D)
    if qk_norm:  # Qwen3 / Gemma 3 / MPT qk_ln: q and k are new (contiguous) tensors, v stays a view
        q, k = q * 1.0, k * 1.0
    return q, k, v


def test_backends_registry():
    assert ATTENTION_BACKENDS["torch"] is TorchAttention and ATTENTION_BACKENDS["triton"] is TritonAttention


@pytest.mark.parametrize("qk_norm", [False, True], ids=["views", "qk-norm"])
def test_triton_backend_matches_torch_over_a_schedule(dev, qk_norm):
    seed = fresh_seed()
    layout = StreamLayout(4, 12)
    hq, hkv, D = 4, 2, 64
    freqs = inv_freq(D, 10000.0).to(dev)
    backends = [TorchAttention(layout, freqs, D**-0.5), TritonAttention(layout, freqs, D**-0.5, block_n=16, fused_combine=True)]
    caches = [[torch.full((3, hkv, layout.capacity, D), float("nan"), device=dev) for _ in range(4)] for _ in backends]
    fed = {0: 0, 1: 0, 2: 0}
    for step in SCHEDULE:
        slots, lens = [s for s, _ in step], [c for _, c in step]
        batch = AttnBatch.build(slots, [fed[s] for s in slots], lens, dev)
        outs = []
        for layer in range(2):
            q, k, v = _qkv(sum(lens), hq, hkv, D, dev, qk_norm)
            o = [be.forward(be.prepare(batch), q, k, v, c[2 * layer], c[2 * layer + 1]) for be, c in zip(backends, caches)]
            outs.append(o)
        for o_ref, o_tri in outs:
            assert rel_err(o_tri, o_ref) < 1e-5, f"seed {seed} step {step}"
        for a, b in zip(*caches):
            torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)
        for s, c in step:
            fed[s] += c


@pytest.mark.gpu
@pytest.mark.parametrize("fused_combine", [False, True])
def test_triton_decode_replays_in_a_cuda_graph(fused_combine):
    """prepare once, capture one decode layer, refresh with new starts, replay:
    same as eager on the same inputs."""
    seed = fresh_seed()
    dev = torch.device("cuda")
    layout = StreamLayout(4, 1020)
    hq, hkv, D, B = 32, 8, 128, 4
    freqs = inv_freq(D, 10000.0).to(dev)
    attn = TritonAttention(layout, freqs, D**-0.5, fused_combine=fused_combine)
    kc = torch.randn(B, hkv, layout.capacity, D, device=dev, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    q = torch.randn(B, hq, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(B, hkv, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    plan = attn.prepare(AttnBatch.build([0, 1, 2, 3], [5, 900, 1500, 70000], [1] * B, dev))
    kc0, vc0 = kc.clone(), vc.clone()
    attn.forward(plan, q, k, v, kc, vc)  # warm up (compile) outside the capture
    kc.copy_(kc0)
    vc.copy_(vc0)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = attn.forward(plan, q, k, v, kc, vc)
    new = AttnBatch.build([3, 2, 1, 0], [1023, 2, 4000, 123457], [1] * B, dev)
    plan.refresh(new)
    kc.copy_(kc0)
    vc.copy_(vc0)
    g.replay()
    torch.cuda.synchronize()
    got, got_k = out.clone(), kc.clone()
    kc.copy_(kc0)
    vc.copy_(vc0)
    want = attn.forward(attn.prepare(new), q, k, v, kc, vc)
    torch.cuda.synchronize()
    assert rel_err(got, want) < 1e-6, f"seed {seed}"
    assert torch.equal(got_k, kc)


def test_triton_backend_layer_specs_match_torch(dev):
    """Per-layer specs (a local layer with soft-cap, an ALiBi layer; head dim 80)
    reach the kernels: both backends agree over the schedule, layer by layer."""
    from swiftinfer_core.kernels.reference import LayerAttn
    from swiftinfer_core.model.layers import alibi_slopes

    seed = fresh_seed()
    layout = StreamLayout(4, 12)
    hq, hkv, D = 4, 1, 80
    specs = [LayerAttn(inv_freq(D, 10000.0), D**-0.5, sliding_window=5, softcap=1.5),
             LayerAttn(torch.zeros(D // 2), D**-0.5, alibi=alibi_slopes(hq, 8.0) * 4)]
    backends = [TorchAttention(layout, specs[0].freqs, D**-0.5, specs),
                TritonAttention(layout, specs[0].freqs, D**-0.5, specs, block_n=16)]
    caches = [[torch.full((3, hkv, layout.capacity, D), float("nan"), device=dev) for _ in range(4)] for _ in backends]
    fed = {0: 0, 1: 0, 2: 0}
    for step in SCHEDULE:
        slots, lens = [s for s, _ in step], [c for _, c in step]
        batch = AttnBatch.build(slots, [fed[s] for s in slots], lens, dev)
        for layer in range(2):
            q, k, v = _qkv(sum(lens), hq, hkv, D, dev)
            o = [be.forward(be.prepare(batch), q, k, v, c[2 * layer], c[2 * layer + 1], layer) for be, c in zip(backends, caches)]
            assert rel_err(o[1], o[0]) < 1e-5, f"seed {seed} step {step} layer {layer}"
        for s, c in step:
            fed[s] += c
