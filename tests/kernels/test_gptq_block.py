"""kernels/gptq_block.py: GPTQ's column loop of one block in one launch, against the
torch loop (model/quant_search.round_block) run in float64 and in float32, and
through whole GPTQ roundings (gptq_int4, gptq_fp8). Under Triton's interpreter the
float32 kernel does what torch does op for op, so there it must match bit for bit;
on a GPU the update may contract to an FMA, so there it must agree closely. Fresh
random inputs each run."""

from __future__ import annotations

import pytest
import torch

from swiftinfer_core.kernels.gptq_block import round_block
from swiftinfer_core.model import quant_search
from swiftinfer_core.model.fp8 import E4M3_MAX
from swiftinfer_core.model.quant_search import _hinv_chol, gptq_fp8, gptq_int4


def _seed() -> int:
    s = int(torch.randint(0, 2**31 - 1, (1,)).item())
    torch.manual_seed(s)
    return s


def _inputs(n: int, nc: int, qmin: int | None):
    """(w1 [n, nc], hinv1 [nc, nc], scale [n, nc] per weight (int4: bf16 values) or [n] (fp8))."""
    x = torch.randn(3 * nc, nc, dtype=torch.float64) * torch.rand(nc, dtype=torch.float64) * 3
    hinv = _hinv_chol(x.t() @ x, 0.01).float()
    w = torch.randn(n, nc) * 0.05
    w[:, torch.randint(0, nc, (2,))] *= 6  # outlier columns
    if qmin is None:
        scale = (w.abs().amax(dim=1) * 1.3 / E4M3_MAX).float()  # room for GPTQ's updates
    else:
        scale = (torch.rand(n, nc // 16 + 1) * 0.02 + 0.005).to(torch.bfloat16).float().repeat_interleave(16, dim=1)[:, :nc]
    return w, hinv, scale


def _codes(deq: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The rounded values on their grid: int4 codes, or e4m3 values (q * s rounds in float32)."""
    s = scale if scale.dim() == 2 else scale[:, None]
    t = deq / s
    return t.round() if scale.dim() == 2 else t.float().to(torch.float8_e4m3fn).float()


def _objective(w, deq, hinv) -> float:
    """GPTQ's sum of squared scaled errors: what the column loop minimises greedily."""
    e = torch.linalg.solve_triangular(hinv.double(), (w.double() - deq.double()), upper=True, left=False)
    return float((e ** 2).sum())


@pytest.mark.parametrize("n,nc", [(37, 128), (16, 77), (5, 16)])
@pytest.mark.parametrize("qmin", [-8, -7, None])
def test_block_matches_the_torch_loop(dev, n, nc, qmin):
    seed = _seed()
    w, hinv, scale = _inputs(n, nc, qmin)
    deq, err = round_block(w.to(dev), hinv.to(dev), scale.to(dev), qmin)
    deq, err = deq.cpu(), err.cpu()
    ref32 = quant_search.round_block(w.clone(), hinv, scale, qmin)
    ref64 = quant_search.round_block(w.double(), hinv.double(), scale.double(), qmin)
    if qmin is not None:
        codes = deq / scale
        assert torch.equal(codes, codes.round()) and codes.min() >= qmin and codes.max() <= 7, seed
    else:
        assert torch.equal(deq, (deq / scale[:, None]).to(torch.float8_e4m3fn).float() * scale[:, None]), seed
    if dev.type == "cpu":  # the interpreter: torch's float32 ops, in torch's order
        assert torch.equal(deq, ref32[0]) and torch.equal(err, ref32[1]), seed
    else:
        assert (deq == ref32[0]).float().mean() > 0.99, seed
    agree = (_codes(deq, scale) == _codes(ref64[0], scale.double())).double().mean().item()
    assert agree > 0.97, (seed, agree)
    ours, best = _objective(w, deq, hinv), _objective(w, ref64[0], hinv)
    assert ours <= best * 1.02 + 1e-12, (seed, ours, best)
    if agree == 1.0:  # the same roundings: the errors carried on differ by float32's rounding alone
        rel = ((err.double() - ref64[1]).norm() / ref64[1].norm()).item()
        assert rel < 1e-4, (seed, rel)


@pytest.mark.parametrize("fmt", ["int4", "fp8"])
def test_whole_gptq_through_the_kernel(dev, fmt):
    seed = _seed()
    n, k = 24, 300
    w = torch.randn(n, k) * 0.05
    x = torch.randn(600, k) * torch.rand(k) * 3
    h = x.double().t() @ x.double()
    if fmt == "int4":
        got = gptq_int4(w.to(dev), h.to(dev), 64, -8, act_order=True, rounder=round_block)
        ref = gptq_int4(w, h, 64, -8, act_order=True, rounder=quant_search.round_block)
        same = [torch.equal(a.cpu(), b) for a, b in zip(got, ref)]
        agree = (got[0].cpu() == ref[0]).float().mean().item()
    else:
        got = gptq_fp8(w.to(dev), h.to(dev), rounder=round_block)
        ref = gptq_fp8(w, h, rounder=quant_search.round_block)
        same = [torch.equal(got[0].cpu().view(torch.uint8), ref[0].view(torch.uint8)), torch.equal(got[1].cpu(), ref[1])]
        agree = (got[0].cpu().view(torch.uint8) == ref[0].view(torch.uint8)).float().mean().item()
    if dev.type == "cpu":
        assert all(same), seed
    else:
        assert agree > 0.97, (seed, agree)
