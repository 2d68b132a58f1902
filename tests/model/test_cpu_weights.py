"""CPU weight formats: the transposed float layout changes strides only; int8
weights against float64 references of the dequantised weights; the engine's
config refuses int8 where it cannot run; int8 on the real model stays close to
float32 on teacher-forced text."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.engine_model import build_engine_model
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.cpu_weights import (
    QMAX,
    Int8Linear,
    quantize_int8,
    quantize_rows,
    transpose_linears,
)
from swiftinfer_core.runner.model_runner import ModelRunner


def test_transpose_linears_keeps_shapes_and_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(48, 96), nn.SiLU(), nn.Linear(96, 32, bias=False))
    x = torch.randn(5, 48)
    want, shapes = net(x), {k: v.shape for k, v in net.state_dict().items()}
    transpose_linears(net)
    assert {k: v.shape for k, v in net.state_dict().items()} == shapes
    assert net[0].weight.t().is_contiguous() and not net[0].weight.is_contiguous()
    torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-6)


def test_quantize_rows_is_nearest_int8_for_its_scale():
    w = torch.randn(64, 40) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different magnitude
    w[3] = 0.0  # an all-zero row must not divide by zero
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16 and q.shape == w.shape
    assert int(q.abs().max()) <= QMAX
    err = (q.double() * s.double()[:, None] - w.double()).abs()
    assert bool((err <= s.double()[:, None] / 2 * (1 + 1e-6)).all())  # round to nearest
    assert torch.equal(q[3], torch.zeros_like(q[3]))


@pytest.mark.parametrize("rows,bias", [(1, False), (7, True)])
def test_int8_linear_matches_float64_of_dequantised_weights(rows, bias):
    torch.manual_seed(1)
    lin = nn.Linear(576, 960, bias=bias)
    q8 = Int8Linear(lin)
    x = torch.randn(rows, 576)
    # reference: the kernel's inputs exactly (bf16 activations, dequantised weight) in float64
    ref = x.bfloat16().double() @ q8.dequantized().double().t()
    if bias:
        ref = ref + lin.bias.double()
    got = q8(x)
    assert got.dtype == torch.float32 and got.shape == (rows, 960)
    # the kernel's bf16 output is the only rounding left: ~2^-8 relative
    torch.testing.assert_close(got.double(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())
    # and the int8 product is close to the float32 layer it replaced
    rel = (got - lin(x)).norm() / lin(x).norm()
    assert rel < 0.02


def test_quantize_int8_keeps_the_head_when_asked():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 8)
            self.lm_head = nn.Linear(8, 16)

    m = M()
    assert quantize_int8(m, head=False) == 1
    assert isinstance(m.body, Int8Linear) and isinstance(m.lm_head, nn.Linear)
    assert quantize_int8(M(), head=True) == 2


def test_int8_is_refused_with_tensor_parallelism():
    with pytest.raises(InvalidRequestError, match="tp_size 1"):
        EngineConfig(quantization="int8", tp_size=2)
    EngineConfig(quantization="int8", device="cuda")  # CUDA: model/quant_linear.py (tests/model/test_quant_linear.py)


def _top1_and_nll(m, ids: list[int], chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced (top-1 ids, NLL per token) on the CPU, from float32 logits on the model's device."""
    run = ModelRunner(m.model, m.pool, m.attn, m.device)
    lg = torch.cat([run.forward(ids[lo : lo + chunk], [0], [lo], [len(ids[lo : lo + chunk])], rows=None).float()
                    for lo in range(0, len(ids) - 1, chunk)])[: len(ids) - 1]
    nll = -torch.log_softmax(lg, -1).gather(1, torch.tensor(ids[1:], device=lg.device)[:, None]).squeeze(1)
    return lg.argmax(-1).cpu(), nll.cpu()


def test_int8_real_model_top1_and_perplexity_near_float32(base_model, shakespeare_ids):
    """Measured with bench/cpu_int8_quality.py over 3,000 tokens: top-1 ~96% and
    perplexity within 0.3% of float32; here 600 tokens, with margin."""
    ids = shakespeare_ids[:601]
    cfg = dict(device="cpu", sink_tokens=4, window=124, max_sessions=1)
    f_top, f_nll = _top1_and_nll(build_engine_model(EngineConfig(**cfg)), ids)
    q_top, q_nll = _top1_and_nll(build_engine_model(EngineConfig(quantization="int8", **cfg)), ids)
    agree = (f_top == q_top).float().mean().item()
    ppl_ratio = torch.exp(q_nll.mean() - f_nll.mean()).item()
    assert agree >= 0.93, f"top-1 agreement {agree:.4f}"
    assert abs(ppl_ratio - 1) < 0.02, f"perplexity ratio {ppl_ratio:.4f}"


def test_cpu_weight_format_sets_threads_layout_and_int8():
    from swiftinfer_core.model.args import ModelArgs
    from swiftinfer_core.runner.build import cpu_weight_format
    from swiftinfer_core.runner.resolve import rank_config

    args = ModelArgs(vocab_size=32, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, intermediate_size=8, name="m")

    def rank(**over):  # what an EngineConfig becomes for build_rank
        return rank_config(EngineConfig(device="cpu", window=60, **over), None, args)

    with pytest.raises(InvalidRequestError):
        EngineConfig(cpu_threads=0)
    before = torch.get_num_threads()
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    try:
        cpu_weight_format(net, rank(cpu_threads=1), torch.device("cpu"))
        assert torch.get_num_threads() == 1
        assert net[0].weight.t().is_contiguous() and not net[0].weight.is_contiguous()
    finally:
        torch.set_num_threads(before)
    plain = nn.Sequential(nn.Linear(8, 8))
    cpu_weight_format(plain, rank(cpu_fast_path=False), torch.device("cpu"))
    assert plain[0].weight.is_contiguous()  # the reference path keeps [out, in] storage
    q = nn.Sequential(nn.Linear(8, 8))  # not a Llama-family model: other families' blocks cast to weight.dtype
    with pytest.raises(InvalidRequestError, match="Llama family"):
        cpu_weight_format(q, rank(quantization="int8"), torch.device("cpu"))
    assert not isinstance(q[0], Int8Linear)
