"""CpuAttention's one-token decode path against the reference (TorchAttention):
same outputs and the same cache contents after the step, before and after the
window wraps, with and without sinks, GQA, several sequences in one step; in
torch ops and through the C kernel (kernels/cpu_native.py) where it builds."""

from __future__ import annotations

import pytest
import torch

from swiftinfer_core.cache.kv_fp8 import Fp8KV
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.attention import TorchAttention
from swiftinfer_core.kernels import cpu_native
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.kernels.torch_decode import CpuAttention, CpuDecodePlan

HQ, HKV, D, SLOTS = 6, 2, 16, 3
NATIVE = cpu_native.load()
KERNELS = [None, pytest.param(NATIVE, id="native", marks=pytest.mark.skipif(NATIVE is None, reason="no C compiler"))]


def _step(attn, layout, starts, slots, seed=0):
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(SLOTS, HKV, layout.capacity, D, generator=g)
    v_cache = torch.randn(SLOTS, HKV, layout.capacity, D, generator=g)
    q = torch.randn(len(starts), HQ, D, generator=g)
    k_new = torch.randn(len(starts), HKV, D, generator=g)
    v_new = torch.randn(len(starts), HKV, D, generator=g)
    batch = AttnBatch.build(slots, starts, [1] * len(starts), "cpu")
    plan = attn.prepare(batch)
    out = attn.forward(plan, q, k_new, v_new, k_cache, v_cache)
    return plan, out, k_cache, v_cache


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("sinks,window", [(4, 8), (0, 8), (2, 5), (4, 60)])
@pytest.mark.parametrize("t", [0, 3, 9, 11, 12, 13, 30, 1001])
def test_decode_equals_reference(sinks, window, t, kernels):
    layout = StreamLayout(sinks, window)
    freqs = inv_freq(D, 10000.0)
    fast, ref = CpuAttention(layout, freqs, D**-0.5, kernels), TorchAttention(layout, freqs, D**-0.5)
    starts, slots = [t, t + 7, max(0, t - 2)], [2, 0, 1]
    plan, out, kc, vc = _step(fast, layout, starts, slots)
    assert isinstance(plan, CpuDecodePlan)
    _, want, kc_ref, vc_ref = _step(ref, layout, starts, slots)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


@pytest.mark.parametrize("t", [0, 5, 11, 12, 17, 40])
def test_row_positions_follow_the_layout(t):
    """Row r's position: the index of its token among attended(t), stream order."""
    layout = StreamLayout(4, 8)
    attn = CpuAttention(layout, inv_freq(D, 10000.0), 1.0)
    want = {layout.row(u): p for p, u in enumerate(layout.attended(t))}
    assert attn.row_positions(t).tolist() == [want[r] for r in range(len(want))]


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("sinks,window", [(4, 8), (0, 8)])
@pytest.mark.parametrize("t", [0, 9, 12, 13, 1001])
def test_decode_on_an_fp8_cache_equals_reference(sinks, window, t, kernels):
    """FP8 caches (cache/kv_fp8.py): the torch ops run (the C kernel takes float32 caches
    only), the new token is attended as computed and stored quantised, as the reference."""
    layout = StreamLayout(sinks, window)
    freqs = inv_freq(D, 10000.0)
    starts, slots = [t, t + 7, max(0, t - 2)], [2, 0, 1]
    g = torch.Generator().manual_seed(t)
    kc, vc = torch.randn(SLOTS, HKV, layout.capacity, D, generator=g), torch.randn(SLOTS, HKV, layout.capacity, D, generator=g)
    q, kn, vn = (torch.randn(3, h, D, generator=g) for h in (HQ, HKV, HKV))
    batch = AttnBatch.build(slots, starts, [1] * 3, "cpu")
    runs = []
    for attn in (CpuAttention(layout, freqs, D**-0.5, kernels), TorchAttention(layout, freqs, D**-0.5)):
        k8, v8 = Fp8KV.quantize(kc), Fp8KV.quantize(vc)
        runs.append((attn.forward(attn.prepare(batch), q, kn, vn, k8, v8), k8, v8))
    (out, k8, v8), (want, k_ref, v_ref) = runs
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for a, b in ((k8, k_ref), (v8, v_ref)):
        assert torch.equal(a.data.view(torch.uint8), b.data.view(torch.uint8)) and torch.equal(a.scale, b.scale)


def test_prefill_and_mixed_steps_take_the_reference_path():
    layout = StreamLayout(4, 8)
    attn = CpuAttention(layout, inv_freq(D, 10000.0), 1.0)
    plan = attn.prepare(AttnBatch.build([0, 1], [5, 0], [1, 3], "cpu"))
    assert not isinstance(plan, CpuDecodePlan)


@pytest.mark.parametrize("kernels", KERNELS)
def test_padding_rows_touch_no_cache(kernels):
    """Slot -1 (a padded graph row) gets a zero output and writes nowhere."""
    layout = StreamLayout(4, 8)
    freqs = inv_freq(D, 10000.0)
    g = torch.Generator().manual_seed(1)
    kc = torch.randn(SLOTS, HKV, layout.capacity, D, generator=g)
    vc = torch.randn(SLOTS, HKV, layout.capacity, D, generator=g)
    q, kn, vn = torch.randn(2, HQ, D, generator=g), torch.randn(2, HKV, D, generator=g), torch.randn(2, HKV, D, generator=g)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    fast = CpuAttention(layout, freqs, D**-0.5, kernels)
    out = fast.forward(fast.prepare(AttnBatch.build([1, -1], [3, 0], [1, 1], "cpu")), q, kn, vn, kc, vc)
    ref = TorchAttention(layout, freqs, D**-0.5)
    want = ref.forward(ref.prepare(AttnBatch.build([1], [3], [1], "cpu")), q[:1], kn[:1], vn[:1], kc_ref, vc_ref)
    torch.testing.assert_close(out[:1], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


def test_rotation_table_is_rope_rotate_bit_for_bit():
    """The per-row cos/sin table and the 4-op rotation give rope.rotate's exact values."""
    from swiftinfer_core.kernels.rope import rotate
    from swiftinfer_core.kernels.torch_decode import _rotate

    layout = StreamLayout(4, 60)
    freqs = inv_freq(D, 10000.0)
    attn = CpuAttention(layout, freqs, 1.0)
    pos = attn.row_positions(200)
    x = torch.randn(HKV, pos.numel(), D)
    want = rotate(x.transpose(0, 1), pos, freqs).transpose(0, 1)  # rotate takes [N, H, D]
    assert torch.equal(_rotate(x, attn._cos[pos], attn._sin[pos], D // 2), want)
