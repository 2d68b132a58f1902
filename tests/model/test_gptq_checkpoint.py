"""GPTQ and AWQ checkpoints (model/gptq_checkpoint.py), written here from the real default
model in each tool's layout. The packers below follow the formats' definitions, written
independently of the reader: AutoGPTQ's sequential nibbles along the input (v1 stores each
zero minus one, v2 as is) and AutoAWQ's GEMM words along the output with its interleave.
Codes and scales come from a round-to-nearest quantizer per group of 64 (asymmetric, as
GPTQ's ``sym: false`` and AWQ, or symmetric with zero 8), over contiguous inputs or, as
GPTQ's act-order (``desc_act``), over inputs scattered by a random order shared by the
projections of one input (q/k/v, gate/up) and named by ``g_idx``; the reference weight
is (q - z) * scale in float64. The engine must multiply by that weight (float16 rounding of
-z * scale allowed: exact when symmetric), run it end to end, and refuse what it cannot
serve exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.model.prequantized_helpers import HF, agreement, copy_tokenizer, engine, expected, float_twin, variant

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.ct_checkpoint import PrequantizedCheckpoint, read_prequantized
from swiftinfer_core.model.gptq_checkpoint import PACKED, Layout
from swiftinfer_core.model.loader import read_args, read_state_dict
from swiftinfer_core.model.quant import QuantFormat, dequantize
from swiftinfer_core.model.quant_linear import QuantLinear

GROUP = 64
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ: nibble i of a word holds output 8c + AWQ_ORDER[i]


def _quantize(w: torch.Tensor, sym: bool, min_zero: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [N, K] -> codes [N, K] in 0..15, zeros [N, G] in min_zero..15 (int64), scales float16 [N, G]."""
    n, k = w.shape
    wg = w.double().view(n, k // GROUP, GROUP)
    if sym:
        amax = wg.abs().amax(-1).clamp_min(1e-8)
        s = (2 * amax / 15).half()
        z = torch.full_like(s, 8, dtype=torch.int64)
    else:
        lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
        s = ((hi - lo).clamp_min(1e-8) / 15).half()
        z = torch.round(-lo / s.double()).long().clamp(min_zero, 15)
    q = (torch.round(wg / s.double()[..., None]).long() + z[..., None]).clamp(0, 15)
    return q.view(n, k), z, s


def _int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding 32 bits -> int32, two's complement (as the tools store them)."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _pack_along(x: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """x [R, C] in 0..15 -> int32 [R, C / 8]: nibble i of word c holds x[:, 8c + order[i]]."""
    r, c = x.shape
    blocks = x.reshape(r, c // 8, 8)
    return _int32(sum(blocks[:, :, order[i]] << (4 * i) for i in range(8))).contiguous()


def _act_order(name: str, k: int) -> torch.Tensor:
    """A random input order per layer input: the projections reading one input share it."""
    layer, proj = int(name.split(".")[2]), name.split(".")[-2]
    which = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1, "gate_proj": 2, "up_proj": 2, "down_proj": 3}[proj]
    return torch.randperm(k, generator=torch.Generator().manual_seed(4 * layer + which))


def _pack(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, layout: Layout, g_idx: torch.Tensor) -> dict[str, torch.Tensor]:
    if layout is Layout.AWQ:  # qweight [K, N / 8], qzeros [G, N / 8], interleaved
        return {"qweight": _pack_along(q.t(), AWQ_ORDER), "qzeros": _pack_along(z.t(), AWQ_ORDER), "scales": s.t().contiguous()}
    stored = z - 1 if layout is Layout.GPTQ else z
    return {"qweight": _pack_along(q).t().contiguous(),  # [K / 8, N]: nibble i of row r is input 8r + i
            "qzeros": _pack_along(stored.t()), "scales": s.t().contiguous(), "g_idx": g_idx.to(torch.int32)}


def _write(model_dir: Path, out: Path, layout: Layout, sym: bool = False, act_order: bool = False) -> dict[str, torch.Tensor]:
    """``out``: the default model in ``layout``; returns base name -> reference weight (float64)."""
    out.mkdir(parents=True)
    state, ref, tensors = read_state_dict(model_dir), {}, {}
    for name, t in state.items():
        base = name.removesuffix(".weight")
        if name.endswith("_proj.weight") and ".layers." in name:
            k = t.shape[1]
            order = _act_order(name, k) if act_order else torch.arange(k)  # input order j -> column order[j]
            qo, z, s = _quantize(t.float()[:, order], sym, min_zero=1 if layout is Layout.GPTQ else 0)  # v1 cannot store zero 0
            q, w, g_idx = torch.empty_like(qo), torch.empty(t.shape, dtype=torch.float64), torch.empty(k, dtype=torch.int64)
            q[:, order] = qo
            w[:, order] = (qo - z.repeat_interleave(GROUP, 1)).double() * s.double().repeat_interleave(GROUP, 1)
            g_idx[order] = torch.arange(k) // GROUP
            ref[base] = w
            tensors |= {f"{base}.{k}": v for k, v in _pack(q, z, s, layout, g_idx).items()}
        else:
            tensors[name] = t.half().contiguous()
    from safetensors.torch import save_file

    save_file(tensors, str(out / "model.safetensors"))
    cfg = json.loads((model_dir / "config.json").read_text())
    if layout is Layout.AWQ:
        cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"}
    else:
        cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": act_order, "sym": sym,
                                      "checkpoint_format": layout.value, "damp_percent": 0.01}
    (out / "config.json").write_text(json.dumps(cfg))
    copy_tokenizer(model_dir, out)
    return ref


@pytest.fixture(scope="module")
def gptq_ckpt(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gptq") / "smollm2-gptq-asym-act-order"
    return out, _write(model_dir, out, Layout.GPTQ, act_order=True)


@pytest.mark.parametrize("layout,sym,act_order", [(Layout.GPTQ, False, False), (Layout.GPTQ, True, False), (Layout.GPTQ, True, True),
                                                  (Layout.GPTQ_V2, False, False), (Layout.AWQ, False, False)])
def test_codes_and_zeros_read_as_the_layout_defines_them(model_dir, tmp_path, layout, sym, act_order):
    path = tmp_path / f"ckpt-{layout.value}-{sym}-{act_order}"
    ref = _write(model_dir, path, layout, sym, act_order)
    pre = read_prequantized(path)
    assert (pre.fmt, pre.group, pre.zero_point, pre.layout) == (QuantFormat.INT4, GROUP, True, layout)
    ours = PrequantizedCheckpoint(read_state_dict(path), pre).quantized_weights(read_args(path))
    assert len(ours) == 4 * 30
    for i in (0, 13, 29):
        for name in HF:
            qw, want = ours[f"layers.{i}.{name}"], expected(ref, i, name)
            assert qw.scales.dtype == qw.mins.dtype == torch.float16 and qw.group == GROUP
            assert (qw.in_perm is not None) == act_order
            got = dequantize(qw).double()
            if sym:  # min = -8 * scale: exact
                assert torch.equal(got, want), (i, name)
            else:  # min = -z * scale rounded to float16: within 2^-11 of |min|, far below a code step
                step = qw.scales.double().repeat_interleave(GROUP, 1)[:, : want.shape[1]]
                err = (got - want).abs()
                assert (err <= 2**-11 * 16 * step + 1e-7).all(), (i, name)


def test_gptq_checkpoint_runs_end_to_end_close_to_its_float_twin(gptq_ckpt, tmp_path, shakespeare_ids):
    """The same weights as a float32 checkpoint against the int4 codes through torch's CPU
    int4 op (activations, scales and zeros rounded to bf16): 600 teacher-forced tokens.
    Act-order: every layer gathers its input into the stored column order first."""
    path, ref = gptq_ckpt
    m = engine(path)  # quantization 'none': the checkpoint's own format
    lin = m.model.layers[7].w13
    assert isinstance(lin, QuantLinear) and lin.group == GROUP and lin.mins is not None and lin.in_perm is not None
    assert (lin.dequantized().double() - expected(ref, 7, "w13")).abs().max() < 1e-3
    assert not isinstance(m.model.lm_head, QuantLinear)  # stored float in the checkpoint
    twin = float_twin(path, tmp_path / "float-twin", ref, packed=PACKED)
    agree, ratio = agreement(m, engine(twin), shakespeare_ids[:601])
    print("gptq checkpoint vs float twin: top-1", agree, "ppl ratio", ratio)
    assert agree > 0.95 and abs(ratio - 1) < 0.02, (agree, ratio)


def test_what_cannot_be_served_exactly_is_refused(gptq_ckpt, tmp_path):
    path, _ = gptq_ckpt
    cases = {
        "4-bit is read": lambda q: q.update(bits=8),
        "group_size -1": lambda q: q.update(group_size=-1),
        "power of two": lambda q: q.update(group_size=48),
        "checkpoint_format 'marlin'": lambda q: q.update(checkpoint_format="marlin"),
        "'dynamic'": lambda q: q.update(dynamic={"-:.*mlp.*": {}}),
        "awq version 'gemv'": lambda q: q.update(quant_method="awq", version="gemv"),
        "quant_method 'bitsandbytes'": lambda q: q.update(quant_method="bitsandbytes"),
    }
    for i, (match, edit) in enumerate(cases.items()):
        with pytest.raises(InvalidRequestError, match=match):
            engine(variant(path, tmp_path / f"v{i}", edit))
    for kw, match in (({"quantization": "int8"}, "round those values again"),
                      ({"quantization": "int4", "quant_rounding": "gptq"}, "no float weights to round")):
        with pytest.raises(InvalidRequestError, match=match):
            engine(path, **kw)


def test_act_orders_the_kernels_cannot_hold_are_refused(gptq_ckpt):
    path, _ = gptq_ckpt
    pre, args = read_prequantized(path), read_args(path)
    uneven = read_state_dict(path)
    name = "model.layers.3.mlp.down_proj.g_idx"
    g = uneven[name].clone()
    g[g == 0], g[g == 1] = 1, 0  # relabelled: still groups of 64
    g[:3] = 2  # now group 2 holds 67 inputs
    uneven[name] = g
    with pytest.raises(InvalidRequestError, match="64 inputs in each group"):
        PrequantizedCheckpoint(uneven, pre).quantized_weights(args)
    split = read_state_dict(path)
    split["model.layers.5.self_attn.k_proj.g_idx"] = (torch.arange(576) // GROUP).to(torch.int32)  # k not ordered as q, v
    with pytest.raises(InvalidRequestError, match="different act-order column orders"):
        PrequantizedCheckpoint(split, pre).quantized_weights(args)
