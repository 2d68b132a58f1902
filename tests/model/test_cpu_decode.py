"""model/cpu_decode.py on the real default model in int8: the C decode chain gives
the logits and cache contents of the model's own forward over the same int8
weights (torch attention, per-layer modules), before and after the ring wraps;
the engine picks it where it should and not elsewhere. Skipped where no C
compiler builds kernels/cpu_native_*.c."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.engine_model import build_engine_model
from swiftinfer_core.kernels import cpu_native
from swiftinfer_core.kernels.torch_decode import CpuAttention
from swiftinfer_core.model.cpu_decode import CpuDecoder, supports
from swiftinfer_core.model.cpu_weights import Int8Linear
from swiftinfer_core.runner.model_runner import ModelRunner

pytestmark = pytest.mark.skipif(cpu_native.load() is None, reason="no C compiler: the kernels cannot be built here")


@pytest.mark.parametrize("head_fp32", [False, True])
def test_decode_chain_equals_the_model_forward(model_dir, shakespeare_ids, head_fp32):
    m = build_engine_model(EngineConfig(device="cpu", quantization="int8", lm_head_fp32=head_fp32, sink_tokens=4,
                                        window=28, max_sessions=2))
    decoder = m.model.cpu_decode
    assert isinstance(decoder, CpuDecoder) and isinstance(m.attn, CpuAttention) and m.attn.kernels is not None
    assert isinstance(m.model.lm_head, Int8Linear) != head_fp32
    run = ModelRunner(m.model, m.pool, m.attn, m.device)
    ids = shakespeare_ids[:60]
    for slot in (0, 1):
        run.forward(ids[:20], [slot], [0], [20], None)  # the same prompt in both slots
    for t in range(20, 60):  # past sinks + window = 32: the ring wraps
        m.model.cpu_decode = decoder
        got = run.forward([ids[t]], [0], [t], [1], None)
        m.model.cpu_decode, kernels, m.attn.kernels = None, m.attn.kernels, None  # the model's own path, torch attention
        try:
            want = run.forward([ids[t]], [1], [t], [1], None)
        finally:
            m.attn.kernels = kernels
        tol = 1e-3 * want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=tol)
        # the same next token, unless the reference's own best two are closer than the paths' rounding
        # (16-bit inputs in the C chain): then either is the reference's best within that tolerance
        best = want[0, got.argmax()]
        assert best >= want.max() - tol, f"step {t}: token {int(got.argmax())} is {float(want.max() - best):.4g} below the best"
    for k in m.pool.k + m.pool.v:  # 40 steps of slightly different sums (and so 16-bit roundings) in each slot
        rel = float((k[0] - k[1]).norm() / k[1].norm())
        assert rel < 1e-3, rel  # measured ~1e-4; a wrong weight or row gives O(1)


def test_batch_of_sequences_and_selected_rows(model_dir, shakespeare_ids):
    """Two conversations decoding in one step equal each decoding alone; ``rows`` picks logits."""
    m = build_engine_model(EngineConfig(device="cpu", quantization="int8", lm_head_fp32=False, window=60, max_sessions=4))
    run = ModelRunner(m.model, m.pool, m.attn, m.device)
    a, b = shakespeare_ids[:10], shakespeare_ids[100:117]
    for slot, ids in ((0, a), (1, b), (2, a), (3, b)):
        run.forward(ids[:-1], [slot], [0], [len(ids) - 1], None)
    both = run.forward([a[-1], b[-1]], [0, 1], [9, 16], [1, 1], None)
    alone = torch.cat([run.forward([a[-1]], [2], [9], [1], None), run.forward([b[-1]], [3], [16], [1], None)])
    torch.testing.assert_close(both, alone, rtol=1e-5, atol=1e-4)
    only_b = run.forward([b[0]], [1], [17], [1], [0])
    assert only_b.shape == (1, m.args.vocab_size)


def test_engine_picks_the_chain_only_where_it_applies(model_dir):
    float32 = build_engine_model(EngineConfig(device="cpu", window=60, max_sessions=1))
    assert float32.model.cpu_decode is None and float32.attn.kernels is not None  # native attention, float weights
    off = build_engine_model(EngineConfig(device="cpu", quantization="int8", cpu_native_kernels=False, window=60, max_sessions=1))
    assert off.model.cpu_decode is None and off.attn.kernels is None
    assert all(lin.kernels is None for lin in off.model.modules() if isinstance(lin, Int8Linear))
    ref = build_engine_model(EngineConfig(device="cpu", quantization="int8", cpu_fast_path=False, window=60, max_sessions=1))
    assert ref.model.cpu_decode is None and not isinstance(ref.attn, CpuAttention)
    assert supports(off.model)  # the model could take it; the engine was told not to


def test_native_int8_linear_matches_float64():
    """Int8Linear with the C kernels: up to NATIVE_ROWS rows the C product (inputs
    rounded to 16-bit fixed point per row: at most half a step, max|row| / 65534, per
    input), beyond it MKL's float32 GEMM over the widened weight."""
    torch.manual_seed(3)
    lin = nn.Linear(576, 960, bias=True)
    q8 = Int8Linear(lin, cpu_native.load())
    w = q8.dequantized().double()
    for rows in (1, 5, Int8Linear.NATIVE_ROWS, Int8Linear.NATIVE_ROWS + 1, 40):
        x = torch.randn(rows, 576)
        ref = x.double() @ w.t() + lin.bias.detach().double()
        step = float(x.abs().max()) / 32767 if rows <= Int8Linear.NATIVE_ROWS else 0.0
        tol = step / 2 * float(w.abs().sum(1).max()) + 1e-5 * float(ref.abs().max())
        torch.testing.assert_close(q8(x).double(), ref, rtol=0, atol=tol)
    x3 = torch.randn(2, 3, 576)  # leading dims are kept
    assert q8(x3).shape == (2, 3, 960) and q8(torch.randn(2, 20, 576)).shape == (2, 20, 960)


def test_quantization_auto_is_int8_on_one_cpu_only(model_dir):
    """'auto' (serve_config.yaml's choice) picks int8 with an int8 head for a float32
    Llama on the CPU, and float weights on a GPU, in bf16, or for other families."""
    import yaml

    from swiftinfer_core.model.loader import read_args
    from swiftinfer_core.model.quant import QuantFormat
    from swiftinfer_core.runner.resolve import resolve_quant

    args = read_args(model_dir)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    auto = EngineConfig(quantization="auto")
    assert resolve_quant(auto, cpu, torch.float32, args) == (QuantFormat.INT8, False)
    assert resolve_quant(EngineConfig(quantization="auto", lm_head_fp32=True), cpu, torch.float32, args) == (QuantFormat.INT8, True)
    assert resolve_quant(auto, cuda, torch.bfloat16, args) == (None, True)
    assert resolve_quant(auto, cpu, torch.bfloat16, args) == (None, True)
    assert resolve_quant(EngineConfig(quantization="auto", tp_size=2), cpu, torch.float32, args) == (None, True)
    gemma = replace(args, family="gemma3_text")
    assert resolve_quant(auto, cpu, torch.float32, gemma) == (None, True)
    assert resolve_quant(EngineConfig(), cpu, torch.float32, args) == (None, True)  # the library default: float32
    assert resolve_quant(EngineConfig(quantization="int8"), cpu, torch.float32, args) == (QuantFormat.INT8, True)
    serve = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve_config.yaml").read_text())
    engine = EngineConfig(**serve["applications"][0]["args"]["engine"])
    assert engine.quantization.value == "auto"  # `make serve` on a machine without a GPU: int8
    m = build_engine_model(EngineConfig(quantization="auto", device="cpu", window=60, max_sessions=1))
    assert isinstance(m.model.cpu_decode, CpuDecoder) and isinstance(m.model.lm_head, Int8Linear)
