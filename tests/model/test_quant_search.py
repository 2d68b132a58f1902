"""model/quant_search.py and model/calibrate.py: the searched scales and GPTQ
rounding stay inside the int4 / fp8 formats, never lose to round-to-nearest on
the error they minimise, reduce to round-to-nearest where they should (H = I),
and the Hessians are X^T X. Fresh random inputs each run."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from swiftinfer_core.model.calibrate import collect_hessians, linear_targets
from swiftinfer_core.model.fp8 import E4M3_MAX, FP8_DTYPE, dequantize_fp8, quantize_fp8
from swiftinfer_core.model.quant import (
    QuantFormat,
    QuantizedWeight,
    dequantize,
    quantize,
    quantize_int4,
    unpack_int4,
)
from swiftinfer_core.model.quant_search import gptq_fp8, gptq_int4, int4_search_scales


def _seed() -> int:
    s = int(torch.randint(0, 2**31 - 1, (1,)).item())  # logged on failure: the inputs are fresh each run
    torch.manual_seed(s)
    return s


def _deq4(packed, scales, n, k, group):
    return dequantize(QuantizedWeight(QuantFormat.INT4, packed, scales, n, k, group))


def _acts(m: int, k: int) -> torch.Tensor:
    x = torch.randn(m, k) * torch.rand(k) * 3  # uneven input channels, a few outliers
    x[:, torch.randperm(k)[:3]] *= 10
    return x


def _out_err(x, w, wq) -> float:
    return ((x.double() @ (w.double() - wq.double()).t()) ** 2).sum().item()


@pytest.mark.parametrize("group,qmin", [(32, -7), (128, -7), (128, -8)])
@pytest.mark.parametrize("weighted", [False, True])
def test_search_scales_never_lose_to_round_to_nearest_per_group(group, qmin, weighted):
    seed = _seed()
    n, k = 24, 300  # K padded to a multiple of the group
    w = torch.randn(n, k) * 0.05
    w[:, 7] *= 8  # an outlier column: clipping pays off in most groups
    d = torch.rand(k) * 4 if weighted else torch.ones(k)
    packed, scales = int4_search_scales(w, group, d if weighted else None, qmin)
    q = unpack_int4(packed)
    assert scales.dtype == torch.bfloat16 and scales.shape == (n, -(-k // group))
    assert q.min() >= qmin and q.max() <= 7 and (q[:, k:] == 0).all()
    rp, rs = quantize_int4(w, group)
    e_s = ((w - _deq4(packed, scales, n, k, group)) ** 2 * d)
    e_r = ((w - _deq4(rp, rs, n, k, group)) ** 2 * d)
    kp = scales.shape[1] * group
    pad = lambda e: torch.nn.functional.pad(e, (0, kp - k)).view(n, -1, group).sum(2)  # noqa: E731
    assert (pad(e_s) <= pad(e_r) * (1 + 1e-6)).all(), f"seed {seed}"
    assert e_s.sum() < e_r.sum(), f"seed {seed}"
    if qmin == -8:
        assert (q == -8).any(), f"seed {seed}"  # the extra level is used where it helps


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_identity_hessian_is_round_to_nearest(act_order):
    seed = _seed()
    n, k = 16, 256
    w = torch.randn(n, k)
    h = torch.eye(k, dtype=torch.float64)  # no correlation between inputs: nothing to compensate
    p, s = gptq_int4(w, h, 128, search=False, act_order=act_order)
    rp, rs = quantize_int4(w, 128)
    assert torch.equal(s, rs) and torch.equal(p, rp), f"seed {seed}"
    q8, s8 = gptq_fp8(w, h)
    r8, rs8 = quantize_fp8(w)
    assert torch.equal(s8, rs8) and torch.equal(q8.float(), r8.float()), f"seed {seed}"


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group", [32, 128])
def test_gptq_int4_lowers_the_output_error_on_its_calibration_inputs(group, act_order):
    seed = _seed()
    n, k = 48, 320
    x = _acts(1024, k)
    w = torch.randn(n, k) * 0.05
    h = x.double().t() @ x.double()
    p, s = gptq_int4(w, h, group, qmin=-8, act_order=act_order)
    q = unpack_int4(p)
    assert p.dtype == torch.uint8 and s.dtype == torch.bfloat16 and q.min() >= -8 and q.max() <= 7
    assert (q[:, k:] == 0).all()  # the padding stays q = 0
    wq = _deq4(p, s, n, k, group)
    rtn = dequantize(quantize(w, QuantFormat.INT4, group))
    assert _out_err(x, w, wq) < 0.8 * _out_err(x, w, rtn), f"seed {seed}"


def test_gptq_fp8_stays_in_the_format_and_lowers_the_output_error():
    seed = _seed()
    n, k = 40, 256
    x = _acts(1024, k)
    w = torch.randn(n, k) * 0.05
    h = x.double().t() @ x.double()
    q, scale = gptq_fp8(w, h)
    assert q.dtype == FP8_DTYPE and scale.dtype == torch.float32
    assert torch.equal(scale, quantize_fp8(w)[1])  # the same per-row amax / 448 scales
    assert q.float().abs().max() <= E4M3_MAX and not torch.isnan(q.float()).any()
    assert _out_err(x, w, dequantize_fp8(q, scale)) < _out_err(x, w, dequantize_fp8(*quantize_fp8(w))), f"seed {seed}"


def test_collect_hessians_is_x_transpose_x_per_linear():
    _seed()
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5))
    model.add_module("lm_head", nn.Linear(5, 3))
    xs = [torch.randn(4, 8), torch.randn(7, 8)]
    hs, rows = collect_hessians(model, lambda x: model(x), xs)
    assert set(hs) == {"0", "2"} and set(linear_targets(model, head=True)) == {"0", "2", "lm_head"}
    x = torch.cat(xs).double()
    assert rows == {"0": 11, "2": 11}
    torch.testing.assert_close(hs["0"], x.t() @ x)
    with torch.no_grad():
        a = model[1](model[0](torch.cat(xs))).double()
    torch.testing.assert_close(hs["2"], a.t() @ a)
    assert not model[0]._forward_pre_hooks  # the hooks are removed afterwards


def test_collect_hessians_skips_the_first_rows_across_chunks():
    _seed()
    model = nn.Sequential(nn.Linear(6, 4))
    xs = [torch.randn(3, 6), torch.randn(5, 6)]
    hs, rows = collect_hessians(model, lambda x: model(x), xs, skip_rows=4)  # all of chunk 1, one row of chunk 2
    x = xs[1][1:].double()
    assert rows == {"0": 4}
    torch.testing.assert_close(hs["0"], x.t() @ x)


def test_calibrated_weights_takes_a_rounding_and_refuses_an_unknown_one():
    """The default (GPTQ) and a plain string name give the same weights; an unknown
    name is a ValueError, not a silent fallback."""
    from swiftinfer_core.model.quant import QuantFormat
    from swiftinfer_core.model.quant_search import Rounding, calibrated_weights

    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    model = torch.nn.Sequential(torch.nn.Linear(64, 16))
    x = torch.randn(128, 64)
    hs = {"0": x.double().t() @ x.double()}
    default = calibrated_weights(model, hs, QuantFormat.INT4, 32)["0"]
    named = calibrated_weights(model, hs, QuantFormat.INT4, 32, "gptq")["0"]
    assert torch.equal(default.qweight, named.qweight) and torch.equal(default.scales, named.scales)
    search = calibrated_weights(model, hs, QuantFormat.INT4, 32, Rounding.SEARCH)["0"]
    assert search.qweight.shape == default.qweight.shape
    with pytest.raises(ValueError):
        calibrated_weights(model, hs, QuantFormat.INT4, 32, "rtn")


def test_self_generated_feeds_each_sequence_its_own_last_token_at_its_position():
    """A forward whose logits put all mass on (last token + position + slot) mod V
    makes every sampled sequence that arithmetic run, so a wrong token, position or
    slot per row shows; the first tokens are the seed's draws, the same each time."""
    from swiftinfer_core.model.calibrate import self_generated

    vocab, seqs, length, calls = 97, 3, 9, []

    def forward(ids, slots, starts, q_lens, rows):
        calls.append((list(slots), list(starts), list(q_lens), rows))
        logits = torch.full((len(ids), vocab), -1e9)
        for r, (t, s, p) in enumerate(zip(ids, slots, starts)):
            logits[r, (t + p + s) % vocab] = 0.0
        return logits

    out = self_generated(forward, vocab, seqs, length, seed=5)
    assert len(out) == seqs and all(len(s) == length for s in out)
    for slot, s in enumerate(out):
        for p in range(length - 1):
            assert s[p + 1] == (s[p] + p + slot) % vocab
    assert calls[0] == ([0, 1, 2], [0, 0, 0], [1, 1, 1], None) and calls[-1][1] == [length - 2] * seqs
    assert [s[0] for s in self_generated(forward, vocab, seqs, length, seed=5)] == [s[0] for s in out]
    assert [s[0] for s in self_generated(forward, vocab, seqs, length, seed=6)] != [s[0] for s in out]


def test_awq_scales_never_lose_to_plain_rounding_on_the_output_error():
    from swiftinfer_core.model.quant_search import awq_scales

    seed = _seed()
    n, k = 32, 256
    w = torch.randn(n, k) * 0.05
    x = _acts(400, k)
    h = x.double().t() @ x.double()
    s = awq_scales(w, h, 64)
    assert s.shape == (k,) and abs(s.mean().item() - 1) < 1e-5 and (s > 0).all()

    def err(scale):
        deq = _deq4(*quantize_int4(w * scale, 64), n, k, 64) / scale
        return _out_err(x, w, deq)
    plain, scaled = err(torch.ones(k)), err(s)
    assert scaled <= plain * (1 + 1e-9), (seed, scaled, plain)
    assert scaled < plain * 0.95, (seed, scaled, plain)  # uneven channels with outliers: scaling pays
