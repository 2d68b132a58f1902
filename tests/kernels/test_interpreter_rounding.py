"""Without a GPU, tests/conftest.py makes Triton's interpreter round float32 to bfloat16 to
nearest even, as the GPU's cvt.rn does (the interpreter itself truncates). On a GPU this checks
the hardware cast against torch's."""

import torch
import triton
import triton.language as tl


@triton.jit
def _casts(X, EXPLICIT, STORED, N: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(X + offs)
    tl.store(EXPLICIT + offs, x.to(tl.bfloat16))
    tl.store(STORED + offs, x)  # cast by the store to the pointer's bf16


def test_float32_to_bfloat16_rounds_to_nearest_even(dev):
    n = 4096
    x = torch.randn(n, device=dev) * torch.logspace(-20, 20, n, device=dev)
    # exact ties between two bf16 values: nearest even takes the one with an even last bit
    x[:4] = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 2**-8 * (1 + 2**-8)], device=dev)
    explicit, stored = torch.empty(n, dtype=torch.bfloat16, device=dev), torch.empty(n, dtype=torch.bfloat16, device=dev)
    _casts[(1,)](x, explicit, stored, N=n)
    want = x.to(torch.bfloat16)
    assert want[:2].float().tolist() == [1.0, 1.0 + 2**-6]  # the ties' even neighbours
    assert torch.equal(explicit.view(torch.int16), want.view(torch.int16))
    assert torch.equal(stored.view(torch.int16), want.view(torch.int16))
