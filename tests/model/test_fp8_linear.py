"""Fp8Linear (model/fp8_linear.py) and the 'fp8' wiring: the layer's paths against
float64 of its dequantised weight (CPU: Triton's interpreter), the config's and
the engine start's refusals. GPU tests run the layer on CUDA (GEMV and
_scaled_mm paths)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from body_and_head import BodyAndHead
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.fp8 import reference_linear
from swiftinfer_core.model.fp8_linear import SCALED_MM_MIN_ROWS, Fp8Linear, quantize_fp8_linears
from swiftinfer_core.model.quant import QuantFormat
from swiftinfer_core.runner.build import quantize_weights
from swiftinfer_core.runner.rank_config import RankConfig


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double().cpu() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("rows,bias", [(1, False), (5, True)])
def test_fp8_linear_matches_float64_of_its_weight(rows, bias):
    """1 row: the GEMV; 5 rows: the Triton GEMM (float32: no _scaled_mm path). CPU: under the interpreter."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    lin = nn.Linear(200, 37, bias=bias, device=dev)
    f8 = Fp8Linear(lin)
    assert f8.batched == "triton" and f8.in_dtype == torch.float32 and not hasattr(f8, "weight")
    x = torch.randn(rows, 200, device=dev)
    want = (reference_linear(x, f8.qweight, f8.scales) + (lin.bias.double() if bias else 0)).cpu()
    got = f8(x)
    assert got.dtype == torch.float32 and got.shape == (rows, 37)
    assert _rel(got, want) < 1e-6  # float32 in, float32 sums, exact e4m3 operands
    assert f8(x.view(1, rows, 200)).shape == (1, rows, 37)
    # the quantization itself: the layer's weight is within e4m3's step of the float one
    assert _rel(f8.dequantized(), lin.weight.detach().double().cpu()) < 2.0**-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_dequant_path_matches_float64_of_its_weight(dtype):
    """batched='dequant': 6 rows through the weight cast to x's dtype and torch.mm; 1 row still the GEMV."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    lin = nn.Linear(200, 37, bias=True, device=dev, dtype=dtype)
    f8 = Fp8Linear(lin, batched="dequant")
    for rows in (6, 1):
        x = torch.randn(rows, 200, device=dev, dtype=dtype)
        want = (reference_linear(x, f8.qweight, f8.scales) + lin.bias.double()).cpu()
        got = f8(x)
        assert got.dtype == dtype and got.shape == (rows, 37)
        # bf16: each weight and each output rounded once to nearest (at most 2^-8 each)
        assert _rel(got, want) < (1e-6 if dtype == torch.float32 else 2**-7)


def test_quantize_fp8_linears_keeps_the_head_when_asked():
    m = BodyAndHead()
    assert quantize_fp8_linears(m, head=False) == 1
    assert isinstance(m.body, Fp8Linear) and isinstance(m.lm_head, nn.Linear)
    with pytest.raises(ValueError, match="batched"):
        Fp8Linear(nn.Linear(64, 32), batched="cublas")


def test_config_accepts_fp8_on_gpus_and_refuses_the_rest():
    assert EngineConfig(quantization="fp8").quantization.value == "fp8"  # device auto: checked at start
    EngineConfig(quantization="fp8", device="cuda", lm_head_fp32=False)
    with pytest.raises(InvalidRequestError, match="CUDA GPU of compute capability 8.9.*use 'int8'"):
        EngineConfig(quantization="fp8", device="cpu")
    with pytest.raises(InvalidRequestError, match="tp_size 1"):
        EngineConfig(quantization="fp8", device="cuda", tp_size=2)


def _rank(**over) -> RankConfig:
    from swiftinfer_core.cache.layout import StreamLayout
    from swiftinfer_core.model.args import ModelArgs

    args = ModelArgs(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=48)
    return RankConfig(args=args, layout=StreamLayout(0, 8), device_type="cpu", dtype=torch.float32, quant=QuantFormat.FP8, **over)


def test_engine_start_refuses_fp8_where_the_device_cannot_run_it(monkeypatch):
    from swiftinfer_core.model.llama import Llama
    from swiftinfer_core.model.layers import ShardPlan

    cfg = _rank()
    model = Llama(cfg.args, ShardPlan.single(cfg.args))
    with pytest.raises(InvalidRequestError, match="quantization 'fp8' needs a CUDA GPU.*not cpu"):
        quantize_weights(model, cfg, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(InvalidRequestError, match="8.9 or newer.*RTX 3090 is 8.6"):
        quantize_weights(model, cfg, torch.device("cuda", 0))
    assert isinstance(model.layers[0].wqkv, nn.Linear)  # refused before any layer was replaced
    with pytest.raises(InvalidRequestError, match="Llama family only"):
        quantize_weights(nn.Sequential(nn.Linear(4, 4)), cfg, torch.device("cuda", 0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without a GPU")
def test_engine_with_device_auto_and_no_gpu_refuses_fp8_at_start(model_dir):
    from swiftinfer_core.engine.engine_model import build_engine_model

    with pytest.raises(InvalidRequestError, match="quantization 'fp8' needs a CUDA GPU"):
        build_engine_model(EngineConfig(quantization="fp8", window=60, max_sessions=1))


@pytest.mark.gpu
@pytest.mark.parametrize("n,k,dtype,path", [(960, 576, torch.bfloat16, "scaled_mm"), (1000, 576, torch.bfloat16, "triton"),
                                            (960, 576, torch.float16, "triton")])
def test_fp8_linear_on_cuda_picks_its_batched_path(n, k, dtype, path):
    """bf16 with K and N multiples of 16: _scaled_mm from SCALED_MM_MIN_ROWS rows, the Triton GEMM
    below; N = 1000 or fp16: the Triton GEMM. Every path within bf16/fp16 rounding (plus e4m3
    activations on _scaled_mm) of float64."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    lin = nn.Linear(k, n, bias=True, device="cuda", dtype=dtype)
    f8 = Fp8Linear(lin)
    assert f8.batched == path
    for rows in (1, 7, SCALED_MM_MIN_ROWS - 1, SCALED_MM_MIN_ROWS, 200):
        x = torch.randn(rows, k, device="cuda", dtype=dtype)
        qx = path == "scaled_mm" and rows >= SCALED_MM_MIN_ROWS
        want = reference_linear(x, f8.qweight, f8.scales, quantize_x=qx) + lin.bias.double()
        assert _rel(f8(x), want.cpu()) < 5e-3, (rows, path)


def test_scaled_mm_layers_take_the_weight_only_gemm_below_the_row_threshold():
    """batched "scaled_mm" (torch._scaled_mm runs on the CPU too): below SCALED_MM_MIN_ROWS rows x stays
    bf16 (the split-K GEMM), from there it is quantized to e4m3 per row. e4m3's 3 mantissa bits put
    the two ~2^-5 of the norm apart; each path is within bf16 rounding of its own float64 reference."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # natively on a GPU machine, the interpreter here
    f8 = Fp8Linear(nn.Linear(128, 64, bias=False, dtype=torch.bfloat16, device=dev), batched="scaled_mm")
    for rows in (2, SCALED_MM_MIN_ROWS - 1, SCALED_MM_MIN_ROWS, SCALED_MM_MIN_ROWS + 30):
        x = torch.randn(rows, 128, dtype=torch.bfloat16, device=dev)
        got, e4m3_x = f8(x).cpu(), rows >= SCALED_MM_MIN_ROWS
        assert _rel(got, reference_linear(x, f8.qweight, f8.scales, quantize_x=e4m3_x).cpu()) < 5e-3, (seed, rows)
        assert _rel(got, reference_linear(x, f8.qweight, f8.scales, quantize_x=not e4m3_x).cpu()) > 1e-2, (seed, rows)


def test_fp8_linear_takes_precomputed_gptq_weights():
    """quantize_fp8_linears(weights=...) with model/quant_search.py's GPTQ e4m3 weights
    (CPU: the interpreter's GEMV and GEMM) against float64 of those weights."""
    from swiftinfer_core.model.quant_search import calibrated_weights

    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = nn.Sequential(nn.Linear(128, 48, bias=False))
    x = torch.randn(512, 128) * torch.rand(128)
    weights = calibrated_weights(model, {"0": x.double().t() @ x.double()}, QuantFormat.FP8)
    model.to(dev)
    assert quantize_fp8_linears(model, head=False, weights=weights) == 1
    f8 = model[0]
    assert torch.equal(f8.qweight.cpu().float(), weights["0"].qweight.float())
    for rows in (1, 5):
        xr = torch.randn(rows, 128, device=dev)
        want = reference_linear(xr.cpu(), weights["0"].qweight, weights["0"].scales)
        assert _rel(f8(xr), want) < 1e-6
    with pytest.raises(ValueError, match="does not fit"):
        Fp8Linear(nn.Linear(64, 48), "triton", weights["0"])


def test_fp8_activations_off_takes_the_weight_only_gemm(monkeypatch):
    """fp8_activations: fp8 only; False reaches quantize_fp8_linears as batched 'triton' (the
    device check stubbed: the layers are built on the CPU, where both settings end on the
    Triton GEMM, so the call's argument is what tells them apart; the GPU test below builds them)."""
    from swiftinfer_core.model.layers import ShardPlan
    from swiftinfer_core.model.llama import Llama
    from swiftinfer_core.runner import build

    assert EngineConfig(quantization="fp8", device="cuda").fp8_activations is True
    with pytest.raises(InvalidRequestError, match="fp8_activations applies to quantization 'fp8' only, not 'int8'"):
        EngineConfig(quantization="int8", device="cpu", fp8_activations=False)
    monkeypatch.setattr(build, "fp8_unsupported", lambda device: None)
    real, seen = build.quantize_fp8_linears, []
    monkeypatch.setattr(build, "quantize_fp8_linears", lambda m, **kw: seen.append(kw["batched"]) or real(m, **kw))
    for flag in (False, True):
        cfg = _rank(fp8_activations=flag)
        model = Llama(cfg.args, ShardPlan.single(cfg.args))
        build.quantize_weights(model, cfg, torch.device("cpu"))
        assert {mod.batched for mod in model.modules() if isinstance(mod, Fp8Linear)} == {"triton"}
    assert seen == ["triton", None]


@pytest.mark.gpu
def test_fp8_activations_pick_the_batched_path_on_cuda():
    from swiftinfer_core.model.layers import ShardPlan
    from swiftinfer_core.model.llama import Llama
    from swiftinfer_core.runner.build import quantize_weights

    for flag, terms, want in ((True, 1, "scaled_mm"), (True, 2, "scaled_mm"), (False, 1, "triton")):
        cfg = _rank(fp8_activations=flag, fp8_activation_terms=terms)
        model = Llama(cfg.args, ShardPlan.single(cfg.args)).to("cuda", torch.bfloat16)
        quantize_weights(model, cfg, torch.device("cuda"))
        layers = [mod for mod in model.modules() if isinstance(mod, Fp8Linear)]
        assert {mod.batched for mod in layers} == {want} and {mod.act_terms for mod in layers} == {terms}


def test_fp8_activations_off_is_refused_at_load_for_weights_that_are_not_fp8(model_dir):
    """'none' passes the config (an fp8 compressed-tensors checkpoint would be served in fp8);
    the default model's float checkpoint is not, so the start refuses it."""
    from swiftinfer_core.engine.engine_model import build_engine_model

    with pytest.raises(InvalidRequestError, match="fp8_activations and fp8_activation_terms apply to fp8 weights;.*served unquantized"):
        build_engine_model(EngineConfig(device="cpu", fp8_activations=False, window=60, max_sessions=1))
    with pytest.raises(InvalidRequestError, match="fp8_activation_terms apply to fp8 weights;.*served unquantized"):
        build_engine_model(EngineConfig(device="cpu", fp8_activation_terms=2, window=60, max_sessions=1))


@pytest.mark.parametrize("field,other", [("fp8_activation_terms", "int8"), ("fp8_down_activation_terms", "int4")])
def test_fp8_term_fields_are_1_or_2_with_fp8_and_e4m3_activations_only(field, other):
    assert getattr(EngineConfig(quantization="fp8", device="cuda", **{field: 2}), field) == 2
    for bad in (0, 3):
        with pytest.raises(ValueError, match=field):
            EngineConfig(quantization="fp8", device="cuda", **{field: bad})
    with pytest.raises(ValueError, match=f"{field} applies to quantization 'fp8' with fp8_activations true, "
                                         "not 'fp8' with fp8_activations false"):
        EngineConfig(quantization="fp8", device="cuda", fp8_activations=False, **{field: 2})
    with pytest.raises(ValueError, match=f"{field} applies.*not '{other}'"):
        EngineConfig(quantization=other, device="cpu", **{field: 2})


def test_fp8_activation_terms_reach_every_layer():
    """fp8_activation_terms reaches every Fp8Linear."""
    from swiftinfer_core.model.layers import ShardPlan
    from swiftinfer_core.model.llama import Llama
    from swiftinfer_core.runner.build import quantize_fp8_linears

    cfg = _rank()
    model = Llama(cfg.args, ShardPlan.single(cfg.args))
    assert quantize_fp8_linears(model, head=False, batched="scaled_mm", act_terms=2) > 0
    assert {mod.act_terms for mod in model.modules() if isinstance(mod, Fp8Linear)} == {2}
    with pytest.raises(ValueError, match="act_terms must be 1 or 2"):
        Fp8Linear(nn.Linear(32, 16), "triton", act_terms=3)


def test_two_term_activations_give_the_weight_only_product():
    """act_terms 2 on the _scaled_mm path (torch's CPU op here, the GPU's natively): from
    SCALED_MM_MIN_ROWS rows the product is within bf16 rounding of bf16 x times the e4m3 weight,
    where one term is ~2^-5 off it; below, both take the weight-only GEMM."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    lin = nn.Linear(128, 64, bias=True, dtype=torch.bfloat16, device=dev)
    one, two = Fp8Linear(lin, batched="scaled_mm"), Fp8Linear(lin, batched="scaled_mm", act_terms=2)
    for rows in (SCALED_MM_MIN_ROWS - 1, SCALED_MM_MIN_ROWS, 200):
        x = torch.randn(rows, 128, dtype=torch.bfloat16, device=dev)
        want = (reference_linear(x, two.qweight, two.scales) + lin.bias.double()).cpu()
        assert _rel(two(x), want) < 5e-3, (seed, rows)
        if rows >= SCALED_MM_MIN_ROWS:
            assert _rel(one(x), want) > 4 * _rel(two(x), want), (seed, rows)
        else:
            assert torch.equal(one(x), two(x))


def test_fp8_down_activation_terms_reach_the_down_projections_alone():
    """fp8_down_activation_terms becomes the w2 layers' act_terms (None: fp8_activation_terms),
    every other layer keeping its own."""
    from swiftinfer_core.model.layers import ShardPlan
    from swiftinfer_core.model.llama import Llama
    from swiftinfer_core.runner.build import quantize_fp8_linears

    cfg = _rank()
    for act, down, want in ((1, 2, {"w2": 2, "wqkv": 1, "wo": 1, "w13": 1}), (2, 1, {"w2": 1, "wqkv": 2, "wo": 2, "w13": 2}),
                            (2, None, {"w2": 2, "wqkv": 2, "wo": 2, "w13": 2})):
        model = Llama(cfg.args, ShardPlan.single(cfg.args))
        assert quantize_fp8_linears(model, head=True, batched="scaled_mm", act_terms=act, down_terms=down) > 0
        got = {}
        for name, mod in model.named_modules():
            if isinstance(mod, Fp8Linear):
                got.setdefault(name.rsplit(".", 1)[-1], set()).add(mod.act_terms)
        assert got == {k: {v} for k, v in want.items()} | {"lm_head": {act}}


def test_fp8_down_activation_terms_resolve_into_the_rank_config(model_dir):
    from swiftinfer_core.model.loader import read_args
    from swiftinfer_core.runner.resolve import rank_config

    args = read_args(model_dir)
    for extra, want in (({}, (1, 1)), ({"fp8_down_activation_terms": 2}, (1, 2)), ({"fp8_activation_terms": 2}, (2, 2)),
                        ({"fp8_activation_terms": 2, "fp8_down_activation_terms": 1}, (2, 1))):
        rc = rank_config(EngineConfig(quantization="fp8", **extra), model_dir, args)
        assert (rc.fp8_activation_terms, rc.fp8_down_terms) == want
    with pytest.raises(InvalidRequestError, match="fp8_activation_terms apply to fp8 weights;.*served unquantized"):
        rank_config(EngineConfig(device="cpu", fp8_down_activation_terms=2), model_dir, args)
