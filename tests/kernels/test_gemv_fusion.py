"""kernels/gemv_fusion.py: the batch-1 int4 / int8 / fp8 GEMVs with the norm, SiLU*up
and the residual folded in, against a float64 reference of the dequantised weight on
fresh random inputs, with and without split-K, the residual updated in place; and a
norm handed over from one GEMV (float, int4, int8, fp8) to the next."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import fresh_seed, rel_err

from swiftinfer_core.kernels.fp8_gemv import gemv_fp8
from swiftinfer_core.kernels.gemv import gemv
from swiftinfer_core.kernels.gemv_fusion import Fusion, Handoff, Prologue, fused_ref, handoff_ref
from swiftinfer_core.kernels.quant_gemv import gemv_int4, gemv_int8
from swiftinfer_core.model.fp8 import dequantize_fp8, quantize_fp8
from swiftinfer_core.model.quant import QuantFormat, dequantize, quantize

# float32 outputs: the weights are exact inputs and the sums float32
TOL = 2e-6
CFG = {"int8": dict(block_n=16, block_k=32, warps=4, stages=1), "int4": dict(block_n=16, block_k=64, warps=4, stages=1)}
FORMATS = ["int4", "int4_zp", "int8", "fp8"]
X_PROLOGUES = [Prologue.NONE, Prologue.RMSNORM, Prologue.SILU_MUL]  # NORMED takes a handoff: test_handoff_*


def _weight(fmt: str, n: int, k: int, dev):
    """(call(x, out, fusion, split) -> y, dequantised weight [N, K] float32)."""
    w = torch.randn(n, k) * torch.logspace(-2, 0, k)[None, :]
    if fmt == "float":
        wd = w.to(dev)
        return (lambda x, out, f, split: gemv(x, wd, f, out=out, block_n=16, block_k=64)), w
    if fmt == "fp8":
        q, s = quantize_fp8(w)
        q, s = q.to(dev), s.to(dev)
        return (lambda x, out, f, split: gemv_fp8(x, q, s, out=out, split_k=16 if split else 1, fusion=f)), dequantize_fp8(q.cpu(), s.cpu())
    qf = QuantFormat.INT8 if fmt == "int8" else QuantFormat.INT4
    qw = quantize(w, qf, 32, fmt == "int4_zp")
    qq, qs = qw.qweight.to(dev), qw.scales.to(dev)
    mins = None if qw.mins is None else qw.mins.to(dev)

    def call(x, out, f, split):
        cfg = dict(CFG[qf.value], waves=1000 if split else 0)
        if qf is QuantFormat.INT8:
            return gemv_int8(x, qq, qs, out=out, cfg=cfg, fusion=f)
        return gemv_int4(x, qq, qs, k, 32, out=out, cfg=cfg, mins=mins, fusion=f)
    return call, dequantize(qw)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("prologue", X_PROLOGUES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_gemv_matches_float64(fmt, prologue, split, dev):
    """y = W @ prologue(x) + residual, written into the residual itself."""
    seed = fresh_seed()
    n, k = 40, 320  # 3 row tiles, 10 (int4) / 20 (int8) K steps: several split parts
    call, wd = _weight(fmt, n, k, dev)
    x = torch.randn(1, 2 * k if prologue is Prologue.SILU_MUL else k) * 3
    nw = torch.rand(k) + 0.5 if prologue is Prologue.RMSNORM else None
    res = torch.randn(1, n)
    want = fused_ref(x, wd, Fusion(prologue, nw, 1e-5, res))
    h = res.clone().to(dev)  # the residual stream, updated in place
    f = Fusion(prologue, None if nw is None else nw.to(dev), 1e-5, h)
    y = call(x.to(dev), h, f, split)
    assert y is h
    assert rel_err(h, want) < TOL, f"seed {seed}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_gemv_rmsnorm_into_a_new_bf16_tensor(fmt, dev):
    """The qkv / gate-up form: float32 residual x in, no residual added, bf16 out."""
    seed = fresh_seed()
    n, k = 24, 128
    call, wd = _weight(fmt, n, k, dev)
    x, nw = torch.randn(1, k), torch.rand(k) + 0.5
    out = torch.empty(1, n, dtype=torch.bfloat16, device=dev)
    call(x.to(dev), out, Fusion(Prologue.RMSNORM, nw.to(dev)), True)
    assert rel_err(out, fused_ref(x, wd, Fusion(Prologue.RMSNORM, nw))) < 5e-3, f"seed {seed}"


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("fmt", ["float", *FORMATS])
@pytest.mark.parametrize("xn_dtype", [torch.float32, torch.bfloat16])
def test_handoff_carries_the_norm_to_the_next_gemv(fmt, split, xn_dtype, dev):
    """A (the o / down read) updates the residual h in place and hands over h * nw and the sums of h^2;
    B (the gate-up / qkv read) takes them as NORMED: B @ rmsnorm(h) * nw, as if B had normed h itself."""
    seed = fresh_seed()
    n, k, n2 = 40, 320, 24
    call_a, wa = _weight(fmt, n, k, dev)
    call_b, wb = _weight(fmt, n2, n, dev)
    x, res, nw = torch.randn(1, k) * 3, torch.randn(1, n), torch.rand(n) + 0.5
    h_ref = fused_ref(x, wa, Fusion(residual=res))
    xn_ref, ss_ref = handoff_ref(h_ref, nw)
    h = res.clone().to(dev)
    ho = Handoff.new(nw.to(dev), xn_dtype)
    call_a(x.to(dev), h, Fusion(residual=h, handoff=ho), split)
    assert ho.parts >= 1
    assert rel_err(h, h_ref) < TOL, f"seed {seed}"
    xn_tol = TOL if xn_dtype is torch.float32 else 5e-3
    assert rel_err(ho.xn, xn_ref) < xn_tol, f"seed {seed}"
    assert abs(ho.ss[: ho.parts].double().sum().item() / ss_ref.item() - 1) < TOL, f"seed {seed}"
    out = torch.empty(1, n2, device=dev)
    call_b(ho.xn, out, Fusion(Prologue.NORMED, eps=1e-5, source=ho), split)
    want = fused_ref(h_ref, wb, Fusion(Prologue.RMSNORM, nw, 1e-5))
    assert rel_err(out, want) < xn_tol * 2, f"seed {seed}"


def test_fusion_refuses_bad_operands(dev):
    call, _ = _weight("int4", 16, 64, dev)
    x = torch.randn(1, 64, device=dev)
    with pytest.raises(ValueError, match="norm_weight is given exactly"):
        call(x, None, Fusion(Prologue.RMSNORM), False)
    with pytest.raises(ValueError, match=r"\[1, 128\]"):
        call(x, None, Fusion(Prologue.SILU_MUL), False)
    with pytest.raises(ValueError, match="residual must be"):
        call(x, None, Fusion(residual=torch.zeros(1, 15, device=dev)), False)
    xs = torch.randn(1, 16, device=dev)
    q, s = quantize_fp8(torch.randn(16, 16))
    with pytest.raises(ValueError, match="out must not be x"):
        gemv_fp8(xs, q.to(dev), s.to(dev), out=xs, fusion=Fusion(residual=xs))
    ho = Handoff.new(torch.ones(16, device=dev), torch.float32)
    with pytest.raises(ValueError, match="source is given exactly"):
        call(x, None, Fusion(Prologue.NORMED), False)
    with pytest.raises(ValueError, match="after the launch that wrote it"):
        call(ho.xn.new_zeros(1, 64), None, Fusion(Prologue.NORMED, source=ho), False)
    with pytest.raises(ValueError, match="a handoff of a"):
        call(x, None, Fusion(handoff=Handoff.new(torch.ones(8, device=dev), torch.float32)), False)
