"""GGUFLinear / GGUFEmbedding (model/gguf_linear.py) against a float64 reference
of the dequantised weights (gguf.quants.dequantize's values), on fresh random
blocks and inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
import gguf  # noqa: E402

from swiftinfer_core.model.gguf_blocks import FORMATS, from_bytes  # noqa: E402
from swiftinfer_core.model.gguf_linear import GGUFEmbedding, GGUFLinear, compact_bytes, gguf_matmul  # noqa: E402

from tests.model.test_gguf_blocks import random_blocks  # noqa: E402


def reference(x: torch.Tensor, raw: np.ndarray, qtype: str, n: int, k: int, bias=None) -> torch.Tensor:
    w = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(n, k)).double()
    y = x.double() @ w.t()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("m,n,k", [(1, 37, 256), (3, 300, 512), (17, 513, 1280), (1, 5, 2304)])
def test_linear_matches_float64(qtype, m, n, k):
    g = torch.Generator().manual_seed(m * 7919 + n * 31 + k)
    raw = random_blocks(qtype, n, k, seed=int(torch.randint(0, 1 << 30, (1,), generator=g)))
    bias = torch.randn(n, generator=g) if n % 2 else None
    lin = GGUFLinear(from_bytes(qtype, raw, n, k), bias)
    x = torch.randn(m, k, generator=g)
    want = reference(x, raw, qtype, n, k, bias)
    got = lin(x)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    # float32 sums of K products: error well under 1e-5 of sum |x| |w| per output
    bound = (x.double().abs() @ lin.dequantized().double().abs().t()) * 1e-5 + 1e-6
    assert ((got.double() - want).abs() <= bound).all(), float(((got.double() - want).abs() / bound).max())
    # leading dims and small row chunks (several chunks, a ragged last one)
    assert torch.allclose(lin(x.view(m, 1, k)).view(m, n), got, rtol=0, atol=0)
    small = gguf_matmul(x, lin.blocks, rows=7)  # no bias
    assert ((small.double() - reference(x, raw, qtype, n, k)).abs() <= bound).all()


def test_embedding_rows_are_gguf_values():
    raw = random_blocks("Q8_0", 50, 96, seed=11)
    emb = GGUFEmbedding(from_bytes("Q8_0", raw, 50, 96))
    ids = torch.tensor([[3, 49, 0], [3, 7, 21]])
    want = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).reshape(50, 96))
    assert torch.equal(emb(ids), want[ids])


def test_compact_bytes_counts_shared_blocks_once():
    b = from_bytes("Q8_0", random_blocks("Q8_0", 64, 128, seed=2), 64, 128)
    mod = torch.nn.ModuleDict({"emb": GGUFEmbedding(b), "head": GGUFLinear(b)})
    assert compact_bytes(mod) == (64 * 128 // 32 * 34, 64 * 128 * 4)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("m,n,k", [(1, 37, 256), (5, 300, 1280), (16, 129, 96)])
def test_native_kernel_matches_float64(qtype, m, n, k):
    from swiftinfer_core.kernels import cpu_native

    kernels = cpu_native.load()
    if kernels is None:
        pytest.skip("no C compiler: the torch path serves")
    g = torch.Generator().manual_seed(m * 104729 + n * 17 + k)
    raw = random_blocks(qtype, n, k, seed=int(torch.randint(0, 1 << 30, (1,), generator=g)))
    lin = GGUFLinear(from_bytes(qtype, raw, n, k), kernels=kernels)
    assert lin.kernels is kernels
    x = torch.randn(m, k, generator=g)
    got = lin(x)
    want = reference(x, raw, qtype, n, k)
    bound = (x.double().abs() @ lin.dequantized().double().abs().t()) * 1e-5 + 1e-6
    assert ((got.double() - want).abs() <= bound).all(), float(((got.double() - want).abs() / bound).max())
    # more rows than one C call takes: several calls
    x2 = torch.randn(GGUFLinear.NATIVE_ROWS + 3, k, generator=g)
    assert ((lin(x2).double() - reference(x2, raw, qtype, n, k)).abs()
            <= (x2.double().abs() @ lin.dequantized().double().abs().t()) * 1e-5 + 1e-6).all()
