"""QuantLinear (model/quant_linear.py) and its wiring: the CPU int4 path against
float64 of the dequantised weights, the config's refusals, and int4 on the real
default model against float32 on teacher-forced text. GPU tests run the Triton
path (bf16) on CUDA only."""

from __future__ import annotations

import os

import pytest
import torch
from test_cpu_weights import _top1_and_nll  # the int8 test's teacher-forced scorer
from torch import nn

from body_and_head import BodyAndHead
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.engine_model import build_engine_model
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.quant import QuantFormat, unpack_int4
from swiftinfer_core.model.quant_linear import QuantLinear, quantize_linears


@pytest.mark.parametrize("rows,bias", [(1, False), (7, True)])
def test_cpu_int4_matches_float64_of_dequantised_weights(rows, bias):
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    lin = nn.Linear(200, 37, bias=bias)  # N not a multiple of 16, K not of the group: both padded
    q4 = QuantLinear(lin, QuantFormat.INT4, 64)
    x = torch.randn(rows, 200)
    ref = x.bfloat16().double() @ q4.dequantized().double().t()  # the op's inputs exactly: bf16 x
    if bias:
        ref = ref + lin.bias.double()
    got = q4(x)
    assert got.dtype == torch.float32 and got.shape == (rows, 37)
    # bf16 output rounding (2^-9) is the only error left
    assert ((got.double() - ref).norm() / ref.norm()).item() < 4e-3
    assert q4(x.view(1, rows, 200)).shape == (1, rows, 37)


@pytest.mark.parametrize("rows,group", [(1, 32), (7, 64)])
def test_cpu_int4_zero_point_matches_float64_of_dequantised_weights(rows, group):
    """The zero-point format through torch's CPU op (zero = min + 8 scale), rows off
    centre so the zero carries a real share of y. The op takes x, scale and zero in bf16
    (unit roundoff u = 2^-8), sums in float32 and rounds its output to bf16. Element by
    element: against float64 of the op's own bf16 scales and zeros, only the output
    rounding and the float32 sum are left; against the stored float16 ones each element
    may also move by the bf16 rounding of its scales and zeros, sum_k |x_k| (|q| |ds| +
    |dz|). A dropped or wrong zero is off by far more than either bound."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    lin = nn.Linear(200, 37, bias=True)
    with torch.no_grad():
        lin.weight += 0.2 * torch.rand(37, 1)
    q4 = QuantLinear(lin, QuantFormat.INT4, group, zero_point=True)
    assert q4.mins is not None and q4.scales.dtype == q4.mins.dtype == torch.float16
    qw = q4.quantized()
    assert qw.zero_point
    x = torch.randn(rows, 200)
    xb = x.bfloat16().double()
    y = q4(x)
    assert y.dtype == torch.float32 and y.shape == (rows, 37)
    got = y.double()
    u = 2.0**-8

    q = unpack_int4(qw.qweight).double()[:, :200]  # [N, K] nibble - 8
    sz = q4.cpu_scales_zeros.double()[:, :37]  # [G, N, 2] the op's bf16 scale and zero
    s_op = sz[..., 0].t().repeat_interleave(group, 1)[:, :200]
    z_op = sz[..., 1].t().repeat_interleave(group, 1)[:, :200]
    w_op = q * s_op + z_op
    mm_op = xb @ w_op.t()  # the op's product, rounded to bf16 before the bias is added in float32
    ref_op = mm_op + lin.bias.double()
    acc = 256 * 2.0**-24 * (xb.abs() @ w_op.abs().t() + lin.bias.double().abs())  # float32 sums of <= 201 terms
    rounding = u * (mm_op.abs() + acc) + acc
    assert ((got - ref_op).abs() <= rounding).all()

    ref = xb @ q4.dequantized().double().t() + lin.bias.double()
    s16 = q4.scales.double().repeat_interleave(group, 1)[:, :200]
    z16 = s16 * 8 + q4.mins.double().repeat_interleave(group, 1)[:, :200]
    assert ((s_op - s16).abs() <= u * s16.abs()).all() and ((z_op - z16).abs() <= u * z16.abs()).all()
    moved = xb.abs() @ (q.abs() * (s_op - s16).abs() + (z_op - z16).abs()).t()  # [rows, N]
    assert ((got - ref).abs() <= moved + rounding).all()


def test_zero_point_layer_refuses_a_symmetric_precomputed_weight():
    from swiftinfer_core.model.quant import quantize

    lin = nn.Linear(64, 32)
    sym = quantize(lin.weight.detach(), QuantFormat.INT4, 32)
    with pytest.raises(ValueError, match="zero point False does not fit .* zero point True"):
        QuantLinear(lin, QuantFormat.INT4, 32, sym, zero_point=True)
    asym = quantize(lin.weight.detach(), QuantFormat.INT4, 32, zero_point=True)
    with pytest.raises(ValueError, match="zero point True does not fit .* zero point False"):
        QuantLinear(lin, QuantFormat.INT4, 32, asym)


def test_quantize_linears_keeps_the_head_when_asked():
    m = BodyAndHead()
    assert quantize_linears(m, QuantFormat.INT4, 32, head=False) == 1
    assert isinstance(m.body, QuantLinear) and isinstance(m.lm_head, nn.Linear)
    with pytest.raises(ValueError, match="CUDA only"):
        QuantLinear(nn.Linear(64, 32), QuantFormat.INT8)  # CPU int8 is Int8Linear


def test_config_accepts_int8_int4_and_refuses_what_is_missing():  # fp8: test_fp8_linear.py
    assert EngineConfig(quantization="int4", device="cpu").quant_group == 128
    EngineConfig(quantization="int4", device="cuda", quant_group=64)
    EngineConfig(quantization="gguf", device="cpu")  # tests/model/test_gguf_model.py
    with pytest.raises(InvalidRequestError, match="CPU in float32 only"):
        EngineConfig(quantization="gguf", device="cuda")
    with pytest.raises(InvalidRequestError, match="tp_size 1"):
        EngineConfig(quantization="int4", tp_size=2)
    with pytest.raises(InvalidRequestError, match="power of two"):
        EngineConfig(quantization="int4", quant_group=96)
    with pytest.raises(InvalidRequestError, match="quant_group"):
        EngineConfig(quant_group=16)
    with pytest.raises(InvalidRequestError):
        EngineConfig(quantization="int3")


def test_config_zero_point_is_int4_only():
    assert EngineConfig().quant_zero_point is False  # the symmetric format stays the default
    cfg = EngineConfig(quantization="int4", device="cpu", quant_group=32, quant_zero_point=True)
    assert cfg.quant_zero_point and cfg.quant_group == 32
    for q in ("none", "auto", "int8", "fp8", "gguf"):
        with pytest.raises(InvalidRequestError, match="quant_zero_point applies to quantization 'int4' only"):
            EngineConfig(quantization=q, device="cuda" if q == "fp8" else "cpu", quant_zero_point=True)
    with pytest.raises(InvalidRequestError):
        EngineConfig(quantization="int4", quant_zero_point="maybe")


def test_int4_real_model_top1_and_perplexity_near_float32(base_model, shakespeare_ids):
    """int4 (group 128) on the CPU path over 600 teacher-forced tokens, 4+124 cache.
    Measured (this test's setup, one run): top-1 agreement 0.542, perplexity ratio
    1.61 (group 64: 0.545 / 1.53, group 32: 0.607 / 1.34). Round-to-nearest int4
    costs this 135M model much more than int8 (0.96 / 1.003): the bounds sit
    just outside the measurement, so a broken nibble, scale or padding (which
    sends the ratio far above 2) fails, and the loss itself is on record."""
    ids = shakespeare_ids[:601]
    cfg = {"device": "cpu", "sink_tokens": 4, "window": 124, "max_sessions": 1}
    f_top, f_nll = _top1_and_nll(build_engine_model(EngineConfig(**cfg)), ids)
    m4 = build_engine_model(EngineConfig(quantization="int4", **cfg))
    assert isinstance(m4.model.layers[0].wqkv, QuantLinear)
    q_top, q_nll = _top1_and_nll(m4, ids)
    agree = (f_top == q_top).float().mean().item()
    ppl_ratio = torch.exp(q_nll.mean() - f_nll.mean()).item()
    assert agree >= 0.45, f"top-1 agreement {agree:.4f}"
    assert ppl_ratio < 1.85, f"perplexity ratio {ppl_ratio:.4f}"


@pytest.mark.gpu
@pytest.mark.parametrize("fmt,zp", [(QuantFormat.INT8, False), (QuantFormat.INT4, False), (QuantFormat.INT4, True)])
@pytest.mark.parametrize("rows", [1, 5, 40])  # the GEMV, and the GEMM in buckets 16 and 64
def test_cuda_quant_linear_matches_float64(fmt, zp, rows):
    """QuantLinear's CUDA dispatch (bf16 in and out, bias added) against float64 of
    its dequantised weights; N = 1000 is not a multiple of any tile."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    lin = nn.Linear(4096, 1000, bias=True).to("cuda", torch.bfloat16)
    q = QuantLinear(lin, fmt, 128, zero_point=zp)
    x = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
    ref = x.double() @ q.dequantized().double().t() + lin.bias.double()
    got = q(x)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 1000)
    # bf16 output rounding (< 2^-8) plus int4's q * scale operand rounding (< 2^-9) at most
    assert ((got.double() - ref).norm() / ref.norm()).item() < 8e-3


@pytest.mark.parametrize("rows", [1, 6])
def test_cpu_int4_takes_precomputed_gptq_weights_with_code_minus_8(rows):
    """quantize_linears(weights=...) with model/quant_search.py's GPTQ int4 (codes
    -8..7: nibble 0 included) through torch's CPU int4 op, against float64 of the
    precomputed weight; a layer missing from ``weights`` is rounded to nearest."""
    from swiftinfer_core.model.quant import dequantize, quantize, unpack_int4
    from swiftinfer_core.model.quant_search import Rounding, calibrated_weights

    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    model = nn.Sequential(nn.Linear(200, 37), nn.Linear(37, 24))
    x = torch.randn(512, 200)
    hs = {"0": x.double().t() @ x.double()}
    weights = calibrated_weights(model, hs, QuantFormat.INT4, 64, Rounding.GPTQ)
    assert set(weights) == {"0"} and (unpack_int4(weights["0"].qweight) == -8).any()
    ref1 = model[1].weight.detach().clone()
    assert quantize_linears(model, QuantFormat.INT4, 64, head=False, weights=weights) == 2
    q0, q1 = model[0], model[1]
    assert torch.equal(q0.qweight, weights["0"].qweight) and torch.equal(q0.scales, weights["0"].scales)
    torch.testing.assert_close(q1.dequantized(), dequantize(quantize(ref1, QuantFormat.INT4, 64)), rtol=0, atol=0)
    xr = torch.randn(rows, 200)
    want = xr.bfloat16().double() @ dequantize(weights["0"]).double().t() + q0.bias.double()
    assert ((q0(xr).double() - want).norm() / want.norm()).item() < 4e-3
    with pytest.raises(ValueError, match="does not fit"):
        QuantLinear(nn.Linear(200, 37), QuantFormat.INT4, 128, weights["0"])  # group 64 weights, group 128 layer
