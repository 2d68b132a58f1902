"""model/split_head.py: the float32 LM head as bfloat16 halves, against float64."""

import os

import pytest
import torch

from swiftinfer_core.model.split_head import SplitHead


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("rows", [1, 7])
def test_split_head_is_float32_accurate_on_the_cpu(rows):
    """Same products as on a GPU (bf16 x bf16 is exact in float32): the split head's
    error against float64 is float32-sized, 100x below a bfloat16 head's."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    w = torch.randn(3001, 576) * 0.05
    x = torch.randn(rows, 576) * 3
    ref = x.double() @ w.double().t()
    head = SplitHead(w)
    got = head(x)
    assert got.dtype == torch.float32 and got.shape == (rows, 3001)
    assert head.hi.dtype == head.lo.dtype == torch.bfloat16
    bf16 = x.bfloat16().float() @ w.bfloat16().float().t()
    assert _rel(got, ref) < 1e-5
    assert _rel(got, ref) < _rel(bf16, ref) / 100


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 40, 256])
def test_split_head_on_cuda_matches_float64(rows):
    """cuBLAS bf16 GEMMs with float32 output (torch.mm out_dtype) at a Llama-3.1-8B
    head width, against float64 of the float32 weight; a bfloat16 head for scale."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    w = torch.randn(128256, 4096, device="cuda") * 0.02
    x = torch.randn(rows, 4096, device="cuda")
    ref = x.double() @ w.double().t()
    got = SplitHead(w)(x)
    bf16 = (x.bfloat16() @ w.bfloat16().t()).float()
    assert got.dtype == torch.float32
    # the dropped x_lo W_lo term is ~2**-18 of the product (6e-6 seen; float32's own GEMM: 1.1e-6)
    assert _rel(got, ref) < 2e-5
    assert _rel(got, ref) < _rel(bf16, ref) / 100
