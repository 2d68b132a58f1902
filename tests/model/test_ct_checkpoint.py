"""Checkpoints quantized already in the compressed-tensors format (model/ct_checkpoint.py),
written here by the compressed-tensors library itself from the real default model: its
config schema, its packing and its own dequantization are the reference. The engine
must multiply by exactly the library's dequantized weights, run them end to end, and
refuse what it cannot serve exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.model.prequantized_helpers import HF, agreement, copy_tokenizer, engine, expected, float_twin, variant

from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.engine_model import build_engine_model
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.ct_checkpoint import PrequantizedCheckpoint, read_prequantized
from swiftinfer_core.model.fp8_linear import Fp8Linear
from swiftinfer_core.model.loader import read_state_dict
from swiftinfer_core.model.quant import QuantFormat
from swiftinfer_core.model.quant_linear import QuantLinear

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.quantization import (  # noqa: E402
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    apply_quantization_config,
)
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402



def _write(model_dir: Path, out: Path, kind: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``out``: the default model quantized by compressed-tensors (int4 group 64 w4a16, or
    fp8 per channel with dynamic per-token activations), scales computed by the library
    from min/max; returns the library's dequantized weight per HF linear name (float32)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if kind == "int4":
        args, fmt, act = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=64), "pack-quantized", None
    else:
        args, fmt = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel"), "float-quantized"
        act = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
    qc = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args, input_activations=act)},
                            ignore=["lm_head"])
    apply_quantization_config(m, qc)
    for mod in m.modules():
        if hasattr(mod, "weight_scale"):
            w = mod.weight.detach().float()
            wg = w.view(w.shape[0], -1, 64) if kind == "int4" else w[:, None, :]
            s, _ = calculate_qparams(wg.amin(-1), wg.amax(-1), args)
            mod.weight_scale.data.copy_(s.reshape(mod.weight_scale.shape).to(mod.weight_scale.dtype))
    comp = ModelCompressor.from_pretrained_model(m, fmt)
    comp.compress_model(m)
    m.save_pretrained(out)
    comp.update_config(out)
    copy_tokenizer(model_dir, out)
    return _library_dequantized(out, args)


def _library_dequantized(path: Path, args) -> dict[str, torch.Tensor]:
    """HF linear name -> the library's unpacking and dequantization of the saved tensors, in float32."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    state, out = read_state_dict(path), {}
    for name, scale in state.items():
        if not name.endswith("_proj.weight_scale"):
            continue
        base = name.removesuffix(".weight_scale")
        if base + ".weight_packed" in state:
            shape = torch.Size(state[base + ".weight_shape"].tolist())
            q = unpack_from_int32(state[base + ".weight_packed"], 4, shape)
        else:
            q = state[base + ".weight"]
        out[base] = dequantize(q, scale.float(), None, args, dtype=torch.float32)
    return out


@pytest.fixture(scope="module")
def int4_ckpt(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ct") / "smollm2-w4a16"
    return out, _write(model_dir, out, "int4", torch.bfloat16)


def test_int4_checkpoint_multiplies_by_the_librarys_weights(int4_ckpt):
    path, ref = int4_ckpt
    pre = read_prequantized(path)
    assert (pre.fmt, pre.group, pre.zero_point) == (QuantFormat.INT4, 64, False)
    m = engine(path)  # quantization 'none': the checkpoint's own format
    for i, layer in enumerate(m.model.layers):
        for ours in HF:
            lin = getattr(layer, ours)
            assert isinstance(lin, QuantLinear) and lin.group == 64 and lin.mins is None, (i, ours)
            assert torch.equal(lin.dequantized(), expected(ref, i, ours)), (i, ours)
    assert not isinstance(m.model.lm_head, QuantLinear)  # in the checkpoint's ignore list


def test_int4_checkpoint_runs_end_to_end_close_to_its_float_twin(int4_ckpt, tmp_path, model_dir, shakespeare_ids):
    """The same weights as a float32 checkpoint (the library's dequantization) against the
    int4 codes through torch's CPU int4 op, which rounds activations to bf16: 600
    teacher-forced tokens of the plays."""
    path, ref = int4_ckpt
    twin = float_twin(path, tmp_path / "float-twin", ref, packed=("_packed", "_scale", "_shape"))
    agree, ratio = agreement(engine(path, quantization="int4"), engine(twin), shakespeare_ids[:601])
    print("int4 checkpoint vs float twin: top-1", agree, "ppl ratio", ratio)
    assert agree > 0.95 and abs(ratio - 1) < 0.02, (agree, ratio)


def test_float16_scales_take_the_zero_point_format_exactly(model_dir, tmp_path):
    path = tmp_path / "smollm2-w4a16-f16"
    ref = _write(model_dir, path, "int4", torch.float16)
    pre = read_prequantized(path)
    assert (pre.fmt, pre.group, pre.zero_point) == (QuantFormat.INT4, 64, True)
    ours = PrequantizedCheckpoint(read_state_dict(path), pre).quantized_weights(_engine_args(path))
    from swiftinfer_core.model.quant import dequantize

    for i in (0, 17, 29):
        for name in HF:
            qw = ours[f"layers.{i}.{name}"]
            assert qw.scales.dtype == qw.mins.dtype == torch.float16
            assert torch.equal(dequantize(qw), expected(ref, i, name)), (i, name)


def _engine_args(path: Path):
    from swiftinfer_core.model.loader import read_args

    return read_args(path)


def test_fp8_checkpoint_reads_exactly_and_needs_a_gpu(model_dir, tmp_path):
    path = tmp_path / "smollm2-fp8-dynamic"
    ref = _write(model_dir, path, "fp8", torch.bfloat16)
    pre = read_prequantized(path)
    assert pre.fmt is QuantFormat.FP8
    from swiftinfer_core.model.quant import dequantize

    ours = PrequantizedCheckpoint(read_state_dict(path), pre).quantized_weights(_engine_args(path))
    assert len(ours) == 4 * 30
    for i in (0, 29):
        for name in HF:
            qw = ours[f"layers.{i}.{name}"]
            assert qw.qweight.dtype == torch.float8_e4m3fn and qw.scales.shape == (qw.out_features,)
            assert torch.equal(dequantize(qw), expected(ref, i, name)), (i, name)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidRequestError, match="stored in fp8"):
            engine(path)
        return
    cap = torch.cuda.get_device_capability()
    if cap < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    m = build_engine_model(EngineConfig(model=str(path), device="cuda", window=124, max_sessions=1))
    lin = m.model.layers[3].w13
    assert isinstance(lin, Fp8Linear) and torch.equal(lin.dequantized().cpu(), expected(ref, 3, "w13"))


def _write_config_only(src: Path, dst: Path, group: dict, fmt: str) -> Path:
    def edit(q):
        q["config_groups"]["group_0"].update(group, format=fmt)
        q["format"] = fmt
    return variant(src, dst, edit)


def test_what_cannot_be_served_exactly_is_refused(int4_ckpt, tmp_path):
    path, _ = int4_ckpt
    w = lambda q: q["config_groups"]["group_0"]["weights"]  # noqa: E731
    cases = {
        "quant_method 'bitsandbytes'": lambda q: q.update(quant_method="bitsandbytes"),
        "symmetric 4-bit": lambda q: w(q).update(symmetric=False),
        "actorder 'group'": lambda q: w(q).update(actorder="group"),
        "int weights": lambda q: w(q).update(num_bits=8),
        "2 config groups": lambda q: q["config_groups"].update(group_1=q["config_groups"]["group_0"]),
        "group size": lambda q: w(q).update(group_size=48),
        "w4a16 only": lambda q: q["config_groups"]["group_0"].update(input_activations={"num_bits": 8, "type": "int"}),
    }
    for i, (match, edit) in enumerate(cases.items()):
        with pytest.raises(InvalidRequestError, match=match):
            engine(variant(path, tmp_path / f"v{i}", edit))
    kv = variant(path, tmp_path / "kv-scheme", lambda q: q.update(kv_cache_scheme={"num_bits": 8, "type": "float",
                                                                                 "strategy": "tensor", "dynamic": False}))
    assert read_prequantized(kv).fmt is QuantFormat.INT4  # served; its KV scales unused (kv_cache_dtype sets the cache)
    fp8 = _write_config_only(path, tmp_path / "fp8-int8-act", {"weights": {"num_bits": 8, "type": "float", "symmetric": True,
                             "strategy": "channel"}, "input_activations": {"num_bits": 8, "type": "int", "strategy": "tensor"}},
                             "float-quantized")
    with pytest.raises(InvalidRequestError, match="dynamic e4m3 per token"):
        read_prequantized(fp8)
    for kw, match in (({"quantization": "int8"}, "round those values again"),
                      ({"quantization": "int4", "quant_rounding": "gptq"}, "no float weights to round")):
        with pytest.raises(InvalidRequestError, match=match):
            engine(path, **kw)
