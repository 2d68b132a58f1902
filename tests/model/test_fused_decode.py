"""Batch-1 fused-GEMV decode equals the plain forward (Triton interpreter on CPU), with
float weights and with fp8 / int8 / int4 weights (their GEMVs with the folds of
kernels/gemv_fusion.py)."""

import pytest
import torch
from torch import nn

# without a GPU the kernels run under Triton's interpreter: tests/conftest.py sets TRITON_INTERPRET
# before any kernel imports (a reload here would give the kernels a second Fusion/Prologue class)
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import TorchAttention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.model import fused_decode
from swiftinfer_core.model.fp8_linear import quantize_fp8_linears
from swiftinfer_core.model.llama import Llama
from swiftinfer_core.model.quant import QuantFormat
from swiftinfer_core.model.quant_linear import QuantLinear, quantize_linears
from swiftinfer_core.model.loader import ModelArgs


WEIGHTS = ["float", "fp8", "int8", "int4", "int4_zp"]


def _quantize(model: Llama, weights: str, dev) -> None:
    """The decoder's linears and the head in ``weights``' format, rounded to nearest."""
    if weights == "fp8":
        quantize_fp8_linears(model, head=True, batched="triton")
    elif weights != "float":
        fmt = QuantFormat.INT8 if weights == "int8" else QuantFormat.INT4
        quantize_linears(model, fmt, 32, head=True, zero_point=weights == "int4_zp")
        for m in model.modules():
            if isinstance(m, QuantLinear):
                m.on_cpu = False  # on a CPU: the Triton kernels under the interpreter, not torch's int4 op


@pytest.mark.parametrize("weights", WEIGHTS)
def test_fused_decode_matches_plain_forward(weights):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if weights == "int8" and dev.type == "cpu":
        pytest.skip("QuantLinear builds int8 on CUDA only (the CPU's int8 is Int8Linear)")
    args = ModelArgs(vocab_size=300, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                     intermediate_size=192, rope_theta=10000.0)
    model = Llama(args).to(dev).eval()
    for name, p in model.named_parameters():  # fresh random weights, norms away from 1
        torch.nn.init.normal_(p, mean=1.0 if "norm" in name else 0.0, std=0.3 if "norm" in name else 0.05)
    _quantize(model, weights, dev)
    assert fused_decode.supports(model)
    layout = StreamLayout(2, 4)
    attn = TorchAttention(layout, inv_freq(32, 10000.0), 32**-0.5)
    pools = [KVPool(layout, 2, 1, 2, 32, torch.float32, dev) for _ in range(2)]
    ids = torch.randint(0, 300, (9,), device=dev)
    # float: past sinks + window (the ring wraps); quantized weights: the same attention, their GEMVs
    # under the interpreter ~0.7 s a call, so two steps
    for t in range(9 if weights == "float" or dev.type == "cuda" else 2):
        batch = AttnBatch.build([0], [t], [1], dev)
        model.gemv_decode = False
        plain = model(ids[t : t + 1], attn, attn.prepare(batch), pools[0])
        model.gemv_decode = True
        fused = model(ids[t : t + 1], attn, attn.prepare(batch), pools[1])
        assert torch.allclose(fused, plain, rtol=1e-4, atol=1e-4), (t, (fused - plain).abs().max())
    for a, b in zip(pools[0].k + pools[0].v, pools[1].k + pools[1].v):
        assert torch.allclose(a, b, atol=1e-5)


def test_supports_refuses_what_the_folds_cannot_take():
    args = ModelArgs(vocab_size=300, hidden_size=128, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=32,
                     intermediate_size=192, rope_theta=10000.0)
    model = Llama(args).eval()
    assert fused_decode.supports(model)
    model.layers[0].w2 = nn.Linear(192, 128, bias=True)  # a bias: the GEMV has no bias epilogue
    assert not fused_decode.supports(model)
    model = Llama(args).eval()
    quantize_linears(model, QuantFormat.INT4, 32, head=False)  # on a CPU: torch's int4 op, no Triton GEMV
    assert fused_decode.supports(model) is (not model.layers[0].wqkv.on_cpu)
