"""fp8_scaled_mm.py: the per-row activation quantization kernel against
model/fp8.quantize_fp8 (value for value, under the interpreter too), and on a
GPU the _scaled_mm product against float64 of both dequantised operands."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import fresh_seed, rel_err

from swiftinfer_core.kernels.fp8_scaled_mm import WIDE, RowTile, quantize_rows, quantize_rows_two, row_tile, scaled_mm_fp8, supported

TILES = [RowTile(64, 4), WIDE]  # several steps a row; the whole row at once (rows here are 100-333 wide)


def test_row_tile_is_wide_up_to_128_rows():
    assert row_tile(1) == row_tile(128) == WIDE and row_tile(129) == RowTile()
    assert WIDE.launch(333) == {"BLOCK_K": 512, "num_warps": 16} and RowTile().launch(11008) == {"BLOCK_K": 1024, "num_warps": 4}
from swiftinfer_core.model.fp8 import quantize_fp8, reference_linear


def _same_values(x: torch.Tensor, dev) -> None:
    rq, rs = quantize_fp8(x)
    for tile in TILES:
        xq, sx = quantize_rows(x.to(dev), tile)
        assert xq.dtype == torch.float8_e4m3fn and sx.shape == (x.shape[0], 1)
        assert torch.equal(sx.cpu()[:, 0], rs), tile
        assert torch.equal(xq.cpu().float(), rq.float()), tile  # -0 and +0 compare equal: the kernel may drop a zero's sign


def test_quantize_rows_rounds_as_torch_at_ties_and_binade_edges(dev):
    """Row 0 has amax 448 (scale 1): 17 and -17 are ties (-> 16, even), 19 -> 20 (even), 31.98 rounds up
    into the next binade (32; the interpreter's own cast gets this wrong), 2^-10 is a subnormal tie (-> 0),
    3 * 2^-10 one too (-> 2^-8); row 1 is zeros; row 2 is tiny."""
    x = torch.zeros(3, 100)
    x[0, :10] = torch.tensor([448.0, 17.0, -17.0, 19.0, 31.98, 2.0**-10, 3 * 2.0**-10, 447.0, 1e-30, -0.3])
    x[2] = torch.linspace(-1e-30, 1e-30, 100)
    _same_values(x, dev)
    xq, _ = quantize_rows(x.to(dev))
    assert xq[0, :8].cpu().float().tolist() == [448.0, 16.0, -16.0, 20.0, 32.0, 0.0, 2.0**-8, 448.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantize_rows_matches_torch_on_random_rows(dtype, dev):
    fresh_seed()
    x = (torch.randn(9, 333) * torch.logspace(-4, 3, 9)[:, None]).to(dtype)  # K not a multiple of the block
    x[4, 17] *= 1000  # an outlier pushes most of its row into e4m3's subnormals
    _same_values(x, dev)


def test_quantize_rows_reads_strided_rows(dev):
    fresh_seed()
    wide = torch.randn(4, 200)
    _same_values(wide[:, 50:150], dev)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_rows_two_is_the_rows_then_what_they_miss(dtype, tile, dev):
    """hi rows = quantize_rows' values and scales; lo rows = the e4m3 rounding of x - hi * s_hi over
    its own amax; hi + lo gives x to e4m3's 2^-4 of the remainder (about 2^-8 of x) where hi alone
    is off by 2^-4 of x. A zero row stays zero; an outlier row keeps most of itself in lo."""
    seed = fresh_seed()
    x = (torch.randn(6, 333) * torch.logspace(-3, 2, 6)[:, None]).to(dtype)
    x[3] = 0
    x[4, 17] *= 1000
    xq, sx = quantize_rows_two(x.to(dev), tile)
    assert xq.shape == (12, 333) and sx.shape == (12, 1)
    xq, sx = xq.cpu().float(), sx.cpu()[:, 0]
    rq, rs = quantize_fp8(x)
    assert torch.equal(sx[:6], rs) and torch.equal(xq[:6], rq.float())
    hi = xq[:6] * sx[:6, None]
    resid = x.float() - hi
    lq, ls = quantize_fp8(resid)
    if dev.type == "cpu":  # a GPU may fuse x - hi * s into one FMA: other bits in the remainder
        assert torch.equal(sx[6:], ls) and torch.equal(xq[6:], lq.float()), f"seed {seed}"
    recon = hi.double() + xq[6:].double() * sx[6:, None].double()
    err = (recon - x.double()).abs()
    # lo's rounding of the exact remainder (hi * s_hi is exact in float64), plus the device's float32
    # remainder's own rounding: an FMA on the GPU, a product then a difference on the CPU
    exact = x.double() - hi.double()
    bound = (torch.maximum(exact.abs() * 2.0**-4, sx[6:, None].double() * 2.0**-10) * 1.01
             + x.double().abs() * 2.0**-22 + 1e-30)
    assert bool((err <= bound).all()), f"seed {seed}"
    one = (hi.double() - x.double()).norm() / x.double().norm()
    two = (recon - x.double()).norm() / x.double().norm()
    assert two < one / 8, (float(one), float(two), seed)
    assert not xq[9].any() and not xq[3].any()  # the zero row: zeros in both terms


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the real op (below); compiled Triton takes no CPU tensors")
def test_scaled_mm_fp8_two_terms_on_torchs_cpu_op():
    """two_terms: one _scaled_mm over the stacked hi and lo rows, the halves added: within bf16
    rounding of x's own (unquantized) product with the e4m3 weight, where one term is ~2^-5 off."""
    seed = fresh_seed()
    q, s = quantize_fp8(torch.randn(48, 96) * 0.1)
    x = torch.randn(7, 96).bfloat16()
    try:
        y1, y2 = scaled_mm_fp8(x, q, s), scaled_mm_fp8(x, q, s, two_terms=True)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"this torch's CPU _scaled_mm refuses row-wise scales: {exc}")
    assert y2.shape == (7, 48) and y2.dtype == torch.bfloat16
    want = reference_linear(x, q, s)
    assert rel_err(y2, want) < 5e-3 and rel_err(y1, want) > 4 * rel_err(y2, want), f"seed {seed}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the real op (below); compiled Triton takes no CPU tensors")
def test_scaled_mm_fp8_call_on_torchs_cpu_op():
    """The wrapper's call (q^T column-major, scales [M, 1] and [1, N], bf16 out) through torch's CPU
    _scaled_mm, which takes row-wise scales in torch 2.13: the numbers of both quantized operands."""
    seed = fresh_seed()
    q, s = quantize_fp8(torch.randn(48, 96) * 0.1)
    x = torch.randn(5, 96).bfloat16()
    try:
        y = scaled_mm_fp8(x, q, s)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"this torch's CPU _scaled_mm refuses row-wise scales: {exc}")
    assert y.shape == (5, 48) and y.dtype == torch.bfloat16
    assert rel_err(y, reference_linear(x, q, s, quantize_x=True)) < 5e-3, f"seed {seed}"


def test_supported_needs_cuda_bf16_and_multiples_of_16():
    cpu = torch.device("cpu")
    assert not supported(torch.bfloat16, 4096, 4096, cpu)
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        assert not supported(torch.float16, 4096, 4096, dev) and not supported(torch.bfloat16, 4096, 4100, dev)
        assert not supported(torch.bfloat16, 1000, 4096, dev)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [2, 32, 300])
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (960, 576), (49152, 576)])  # 7B; default model's qkv, head
def test_scaled_mm_fp8_matches_float64_of_both_quantized_operands(m, n, k):
    seed = fresh_seed()
    dev = torch.device("cuda")
    assert supported(torch.bfloat16, n, k, dev)  # H100/H200, torch 2.11: row-wise scales work
    q, s = quantize_fp8(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    y = scaled_mm_fp8(x, q, s)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    # the same FP8 operands the op multiplies: float32 accumulation and the bf16 output are what is left.
    # The reference quantizes x on the CPU: torch's CUDA division by a scalar multiplies by its
    # reciprocal, an ulp off IEEE in some rows' scales (the kernel divides exactly, as the CPU does),
    # which changed some of x's e4m3 values and failed this at 1.0e-2 on the H200
    # (bench/results/fp8_scaled_mm_rows.json: 1.7e-3 against the operands the op multiplied)
    y, x, q, s = y.cpu(), x.cpu(), q.cpu(), s.cpu()
    assert rel_err(y, reference_linear(x, q, s, quantize_x=True)) < 5e-3, f"seed {seed}"
    # against bf16 x (the weight-only product): e4m3 activations cost a few percent, not more
    assert rel_err(y, reference_linear(x, q, s)) < 0.05, f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("m", [2, 80, 300])
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (960, 576)])
def test_scaled_mm_fp8_two_terms_matches_float64_of_the_weight_only_product(m, n, k):
    """two_terms on the GPU: within bf16 rounding of bf16 x times the e4m3 weight, in float64."""
    seed = fresh_seed()
    dev = torch.device("cuda")
    q, s = quantize_fp8(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    y1, y2 = scaled_mm_fp8(x, q, s), scaled_mm_fp8(x, q, s, two_terms=True)
    want = reference_linear(x.cpu(), q.cpu(), s.cpu())
    assert rel_err(y2.cpu(), want) < 5e-3 and rel_err(y1.cpu(), want) > 4 * rel_err(y2.cpu(), want), f"seed {seed}"


@pytest.mark.gpu
def test_scaled_mm_fp8_replays_in_a_cuda_graph():
    dev = torch.device("cuda")
    q, s = quantize_fp8(torch.randn(1024, 2048, device=dev))
    x = torch.randn(48, 2048, device=dev, dtype=torch.bfloat16)
    scaled_mm_fp8(x, q, s)  # compile and pick the cuBLAS/CUTLASS kernel outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = scaled_mm_fp8(x, q, s)
    x.copy_(torch.randn_like(x))
    g.replay()
    assert rel_err(out, reference_linear(x, q, s, quantize_x=True)) < 5e-3
