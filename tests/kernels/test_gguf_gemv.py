"""kernels/gguf_gemv.py (Triton GEMV over GGUF blocks; not wired: CUDA 'gguf' is refused)
against a float64 reference of gguf's dequantised weights, on fresh random blocks and x.
Under TRITON_INTERPRET=1 without a GPU (tests/conftest.py sets it)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
gguf = pytest.importorskip("gguf")

from swiftinfer_core.kernels.gguf_gemv import gemv_gguf  # noqa: E402
from swiftinfer_core.model.gguf_blocks import from_bytes  # noqa: E402
from tests.model.test_gguf_blocks import random_blocks  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("n,k", [(37, 64), (70, 160)])
def test_gemv_matches_float64(qtype, n, k):
    g = torch.Generator().manual_seed(n * 131 + k)
    raw = random_blocks(qtype, n, k, seed=int(torch.randint(0, 1 << 30, (1,), generator=g)))
    b = from_bytes(qtype, raw, n, k).to(DEV)
    x = torch.randn(1, k, generator=g)
    w = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(n, k)).double()
    want = x.double() @ w.t()
    got = gemv_gguf(x.to(DEV), qtype, b.qs, b.d, b.m).cpu()
    bound = (x.double().abs() @ w.abs().t()) * 1e-5 + 1e-6
    assert ((got.double() - want).abs() <= bound).all(), float(((got.double() - want).abs() / bound).max())
