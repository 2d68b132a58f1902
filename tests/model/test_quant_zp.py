"""model/quant.py's asymmetric int4 (zero points: float16 scale and min per group,
w = nibble * scale + min): exact values on a hand-made tensor, padding left out of
min/max, GGUF Q4_1 blocks reproduced exactly, the round-to-nearest bound on random
weights, and what is refused."""

from __future__ import annotations

import os

import pytest
import torch

from swiftinfer_core.model.quant import (
    INT4_OFFSET,
    QuantFormat,
    dequantize,
    quantize,
    quantize_int4_zp,
    unpack_int4,
    weight_bytes,
)


def _seed() -> int:
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed


def test_exact_values_and_padding_left_out_of_min_max():
    # K = 40, group 32: group 0 spans -1..2; group 1 holds 8 real columns, all >= 0.5,
    # and 24 of padding, which must not pull its min down to 0
    w = torch.zeros(1, 40)
    w[0, :4] = torch.tensor([-1.0, 0.5, 2.0, 0.0])
    w[0, 32:40] = torch.tensor([0.5, 0.75, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5])
    packed, scales, mins = quantize_int4_zp(w, group=32)
    assert packed.shape == (1, 32) and scales.shape == mins.shape == (1, 2)  # Kp = 64
    assert scales.dtype == mins.dtype == torch.float16
    assert scales[0].tolist() == [torch.tensor(3.0 / 15).half().item(), torch.tensor(0.5 / 15).half().item()]
    assert mins[0].tolist() == [-1.0, 0.5]
    nib = (unpack_int4(packed)[0] + INT4_OFFSET).tolist()
    # -1 -> 0; 0.5: 1.5 / 0.19995 = 7.502 -> 8; 2: 15.004 -> 15; 0: 5.001 -> 5
    assert nib[:4] == [0, 8, 15, 5] and nib[4:32] == [5] * 28
    # 0.5 -> 0; 0.75: 0.25 / 0.033325 = 7.502 -> 8; 1 -> 15; the padding is nibble 0
    assert nib[32:40] == [0, 8, 15, 0, 0, 0, 0, 0] and nib[40:] == [0] * 24
    qw = quantize(w, QuantFormat.INT4, 32, zero_point=True)
    assert qw.zero_point and torch.equal(qw.mins, mins)
    deq = dequantize(qw)[0]
    assert deq.shape == (40,) and deq[0].item() == -1.0 and deq[32].item() == 0.5


@pytest.mark.parametrize("rows,blocks", [(5, 7), (64, 18)])
def test_reproduces_q4_1_blocks_exactly(rows, blocks):
    """Blocks as llama.cpp's Q4_1 quantizer leaves them (float16 d > 0 and m, codes
    0..15 with 0 and 15 present in every block), dequantised in float32 as GGUF
    readers do (d * q + m): group 32 gets back the same codes, d and m, so the
    same float32 weights, bit for bit."""
    seed = _seed()
    k = 32 * blocks
    codes = torch.randint(0, 16, (rows, blocks, 32))
    codes[:, :, 3], codes[:, :, 17] = 0, 15  # the block's min and max
    codes = codes[:, :, torch.randperm(32)]
    d = (10 ** (torch.rand(rows, blocks) * 3 - 4)).half()  # 1e-4 .. 1e-1
    m = (-d.float() * (16 * torch.rand(rows, blocks))).half()
    w = (d.float()[..., None] * codes.float() + m.float()[..., None]).view(rows, k)
    qw = quantize(w, QuantFormat.INT4, 32, zero_point=True)
    assert torch.equal(qw.scales, d), f"seed {seed}"
    assert torch.equal(qw.mins, m), f"seed {seed}"
    assert torch.equal(unpack_int4(qw.qweight) + INT4_OFFSET, codes.view(rows, k).to(torch.int8)), f"seed {seed}"
    assert torch.equal(dequantize(qw), w), f"seed {seed}"


@pytest.mark.parametrize("group", [32, 128])
def test_round_to_nearest_within_half_a_scale(group):
    """|w - w'| <= scale / 2, plus what rounding scale and min to float16 adds at the
    ends of the range (2^-11 relative to min and to 15 scale)."""
    seed = _seed()
    w = torch.randn(9, 300) * torch.logspace(-3, 1, 9)[:, None] + torch.randn(9, 1)  # magnitudes and offsets
    qw = quantize(w, QuantFormat.INT4, group, zero_point=True)
    deq = dequantize(qw)
    s = qw.scales.float().repeat_interleave(group, 1)[:, :300]
    mn = qw.mins.float().repeat_interleave(group, 1)[:, :300]
    bound = s / 2 + 2.0**-11 * (mn.abs() + 15 * s)
    assert bool(((deq - w).abs() <= bound).all()), f"seed {seed}"
    nib = unpack_int4(qw.qweight) + INT4_OFFSET
    assert int(nib.min()) == 0 and int(nib.max()) == 15  # the whole code range is used


def test_refusals_and_bytes():
    w = torch.randn(4, 64)
    for fmt in (QuantFormat.INT8, QuantFormat.FP8):
        with pytest.raises(ValueError, match="int4 only"):
            quantize(w, fmt, 32, zero_point=True)
    with pytest.raises(ValueError, match="float16's range"):
        quantize(w * 1e6, QuantFormat.INT4, 32, zero_point=True)
    bad = w.clone()
    bad[1, 5] = float("nan")
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize(bad, QuantFormat.INT4, 32, zero_point=True)
    flat = torch.full((2, 32), 0.25)  # max == min: scale 0, every nibble 0, w' = min exactly
    qw = quantize(flat, QuantFormat.INT4, 32, zero_point=True)
    assert torch.equal(dequantize(qw), flat)
    assert weight_bytes(QuantFormat.INT4, 10, 200, 128, zero_point=True) == 10 * 256 // 2 + 10 * 2 * 4  # scale + min
    assert weight_bytes(QuantFormat.INT4, 10, 200, 128) == 10 * 256 // 2 + 10 * 2 * 2
