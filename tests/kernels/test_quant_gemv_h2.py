"""quant_gemv_h2.py (the int4 GEMV's packed-half-pair math, config "math": "h2") against
float64 products of the dequantised weights within the bound its fp16 roundings allow,
and against a torch emulation of its pairs, order and roundings; fresh random inputs
each run, with and without split-K; GPU-only: the Llama shapes, split-K determinism and
a CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch
from kernels_naive import check_deterministic_and_graph_replay, fresh_seed, int4_every_code
from test_quant_gemv import CFG, DTYPES, TOL, _case, _llama

from swiftinfer_core.kernels import quant_configs
from swiftinfer_core.kernels.quant_gemv import gemv_int4
from swiftinfer_core.model.quant import QuantFormat, dequantize, unpack_int4

# --- The "h2" math (kernels/quant_gemv_h2.py): fp16 products of power-of-two-scaled x blocks ---
# Bound per output, from the module doc (u = 2**-11): x -> fp16 relative u (exact for bf16/fp16
# x but for fp16's subnormal grid), 16 chained fp16 fmas per half and block each rounding
# <= u |partial| <= u sum |products| -> 17 u sum_k |w x|; plus the subnormal grid's absolute
# 2**-25 per rounding (<= 32 fmas + 32 x values times |q| <= 8 per block: < 2**-16 in units of
# s 2**e), float32 sums (< (K/32 + 8) 2**-24 sum |w x|) and y's own rounding (bf16: 2**-8,
# on the interpreter too: tests/conftest.py; fp16 2**-11; float32 2**-24).
H2 = dict(CFG["int4"], math="h2")
OUT_U = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def _block_up(x: torch.Tensor, kp: int) -> torch.Tensor:
    """2**e per 32-column block of x [1, K] (padded to kp): the exponent of the block's max |x|."""
    xb = torch.nn.functional.pad(x.double().abs(), (0, kp - x.shape[1])).view(-1, 32).amax(1)  # [B]
    return torch.where(xb > 0, torch.exp2(torch.floor(torch.log2(xb.clamp_min(1e-300)))), torch.zeros_like(xb))


def _h2_bound(qw, x: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """The worst-case |y - want| [1, N] (on the CPU) of the h2 path for x [1, K] (see above)."""
    dev = qw.qweight.device
    kp = qw.qweight.shape[1] * 2
    mag = x.to(dev).double().abs() @ dequantize(qw).double().abs().t()  # sum_k |w x| [1, N]
    up = _block_up(x, kp).to(dev)  # [B] 2**e of each block
    s_up = (qw.scales.double().repeat_interleave(qw.group // 32, 1) * up[None, :]).sum(1)[None, :]  # sum_b s 2**e
    core = ((17 * 2.0**-11 + (kp / 32 + 8) * 2.0**-24) * mag + 2.0**-16 * s_up).cpu()
    return core + OUT_U[x.dtype] * (want.abs().cpu() + core)


def _x_with_large_columns(k: int, dtype: torch.dtype, large: bool) -> torch.Tensor:
    """randn [1, K], and with ``large`` every 7th column +-3e4 (down_proj-like outliers: fp16
    overflows without the block scaling; fp16 x: +-300, so that y still fits fp16) and one
    block of tiny values (1e-3 of its max)."""
    x = torch.randn(1, k)
    if large:
        x[0, ::7] = (300.0 if dtype == torch.float16 else 3e4) * torch.sign(torch.randn(len(range(0, k, 7))))
        x[0, 32:64] *= 1e-3
    return x.to(dtype)


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,group", [(37, 101, 32), (40, 320, 64), (24, 300, 128)])
def test_gemv_int4_h2_within_its_fp16_bound(n, k, group, dtype, large, dev):
    """The h2 math on quantize()d weights against float64, element by element within the
    derived bound, with and without split-K (K padded, 5 groups over 3 parts, group 128)."""
    seed = fresh_seed()
    qw, _, _ = _case(QuantFormat.INT4, n, k, group, dtype, dev)
    x = _x_with_large_columns(k, dtype, large)
    want = x.double() @ dequantize(qw).double().t()
    bound = _h2_bound(qw, x, want)
    for waves in (0, 1000):
        y = gemv_int4(x.to(dev), qw.qweight.to(dev), qw.scales.to(dev), k, group, cfg=dict(H2, waves=waves))
        assert y.shape == (1, n) and y.dtype == dtype
        err = (y.double().cpu() - want).abs()
        assert (err <= bound).all(), f"seed {seed} waves {waves}: worst err/bound {(err / bound).max():.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [32, 128])
def test_gemv_int4_h2_reads_every_code_with_large_activations(group, dtype, dev):
    """Codes -8..7 (nibble 0 included) and bf16 scales, packed directly, x with +-3e4 columns."""
    seed = fresh_seed()
    n, k = 24, 300
    qw = int4_every_code(n, k, group)
    assert (unpack_int4(qw.qweight) == -8).any()
    x = _x_with_large_columns(k, dtype, True)
    want = x.double() @ dequantize(qw).double().t()
    bound = _h2_bound(qw, x, want)
    for waves in (0, 1000):
        y = gemv_int4(x.to(dev), qw.qweight.to(dev), qw.scales.to(dev), k, group, cfg=dict(H2, waves=waves))
        err = (y.double().cpu() - want).abs()
        assert (err <= bound).all(), f"seed {seed} waves {waves}: worst err/bound {(err / bound).max():.3g}"


def _h2_emulate(qw, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, sum of |block terms|) [1, N] float64 of the h2 math done in torch: per row and
    block, half lo takes nibbles 0..3 and half hi 4..7 of words j = 0..3 (columns 4 i + j),
    each product added to its fp16 accumulator with one rounding (float64 is exact here)."""
    kp = qw.qweight.shape[1] * 2
    q = unpack_int4(qw.qweight).double().view(qw.out_features, kp // 32, 8, 4)  # [N, B, i, j]
    up = _block_up(x.cpu(), kp)  # [B]
    xs = torch.nn.functional.pad(x.cpu().float(), (0, kp - x.shape[1])).view(-1, 32)
    down = torch.where(up > 0, 1 / up, torch.zeros_like(up)).float()
    xh = (xs * down[:, None]).half().double().view(-1, 8, 4)  # [B, i, j] fp16 values
    lo = torch.zeros(q.shape[:2], dtype=torch.float64)
    hi = torch.zeros_like(lo)
    for j in range(4):
        for i in range(4):
            lo = (q[:, :, i, j] * xh[None, :, i, j] + lo).half().double()
            hi = (q[:, :, i + 4, j] * xh[None, :, i + 4, j] + hi).half().double()
    blk = (lo.float() + hi.float()).double()  # [N, B]
    terms = blk * qw.scales.double().repeat_interleave(qw.group // 32, 1) * up[None, :]
    return terms.sum(1)[None, :], terms.abs().sum(1)[None, :]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,group", [(37, 101, 32), (24, 300, 128)])
def test_gemv_int4_h2_matches_its_fp16_emulation(n, k, group, dtype, dev):
    """The kernel's fp16 block sums equal a torch emulation of the same pairs, order and
    roundings (interpreter: the float64 twin; GPU: the inline PTX): what is left is float32
    summation (< (K/32 + 8) 2**-24 of the summed |block terms|) and y's rounding."""
    seed = fresh_seed()
    qw = int4_every_code(n, k, group)
    x = _x_with_large_columns(k, dtype, True)
    emu, mag = _h2_emulate(qw, x)
    y = gemv_int4(x.to(dev), qw.qweight.to(dev), qw.scales.to(dev), k, group, cfg=dict(H2, waves=1000))
    err = (y.double().cpu() - emu).abs()
    core = (k / 32 + 8) * 2.0**-24 * mag
    assert (err <= core + OUT_U[dtype] * (emu.abs() + core)).all(), f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (4096, 14336), (128256, 4096)])
def test_gemv_int4_h2_at_llama_shapes_and_split_k_is_deterministic(n, k):
    """h2 at the 7B/8B shapes within its bound; 30 launches identical, and a CUDA-graph replay."""
    seed = fresh_seed()
    qw, x, _ = _llama(QuantFormat.INT4, n, k)

    def run(out=None, x=x):
        return gemv_int4(x, qw.qweight, qw.scales, k, 128, out=out, cfg=dict(quant_configs_h2(n, k)))

    want = x.double() @ dequantize(qw).double().t()
    err = (run().double() - want).abs().cpu()
    assert (err <= _h2_bound(qw, x, want.cpu())).all(), f"seed {seed}"
    check_deterministic_and_graph_replay(run, x, lambda x: x.double() @ dequantize(qw).double().t(), 30,
                                         TOL[torch.bfloat16], seed)


def quant_configs_h2(n: int, k: int) -> dict:
    """The table's batch-1 int4 config for [n, k] with the h2 math."""
    return dict(quant_configs.config("int4", 1, n, k), math="h2")
