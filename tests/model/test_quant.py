"""model/quant.py: int4 packing and int8/int4 quantisation on tiny hand-made
tensors with exact expected values, and round-trips on random ones."""

from __future__ import annotations

import pytest
import torch

from swiftinfer_core.model.quant import (
    QuantFormat,
    check_group,
    dequantize,
    pack_int4,
    pack_int8,
    quantize,
    quantize_int4,
    unpack_int4,
    unpack_int8,
    weight_bytes,
)


def test_pack_int4_layout_is_nibble_planar_offset_8():
    # one row of 64 columns = two 32-column blocks of 4 little-endian int32 words:
    # nibble i (bits 4i..4i+3) of word j of block b holds q[32 b + 4 i + j] + 8
    q = (torch.arange(64) % 15 - 7).to(torch.int8)[None, :]  # -7..7 repeating
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 32)
    words = packed.view(torch.int32)[0].tolist()
    for b in range(2):
        for j in range(4):
            want = sum((int(q[0, 32 * b + 4 * i + j]) + 8) << (4 * i) for i in range(8))
            assert words[4 * b + j] & 0xFFFFFFFF == want
    # the same in bytes: byte 4j + t of a block holds k = 8t + j (low) and 8t + 4 + j (high)
    assert packed[0, 4 * 1 + 2].item() == (int(q[0, 17]) + 8) | (int(q[0, 21]) + 8) << 4
    assert torch.equal(unpack_int4(packed), q)


def test_pack_int4_round_trips_every_value():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 6)[:, torch.randperm(96)]  # [3, 96]
    assert torch.equal(unpack_int4(pack_int4(q)), q)
    with pytest.raises(ValueError, match="multiple of 32"):
        pack_int4(q[:, :48])


def test_pack_int8_layout_is_byte_planar():
    # 16 columns = 4 little-endian int32 words: byte t of word j holds q[4 t + j]
    q = torch.arange(-8, 24, dtype=torch.int8).view(1, 32)
    packed = pack_int8(q)
    assert packed.dtype == torch.int8 and packed.shape == (1, 32)
    words = packed.view(torch.int32)[0].tolist()
    for b in range(2):
        for j in range(4):
            want = sum((int(q[0, 16 * b + 4 * t + j]) & 0xFF) << (8 * t) for t in range(4))
            assert words[4 * b + j] & 0xFFFFFFFF == want
    assert torch.equal(unpack_int8(packed), q)
    with pytest.raises(ValueError, match="multiple of 16"):
        pack_int8(q[:, :24])


def test_quantize_int4_exact_values_with_padding():
    # one row, K = 40 with group 32: group 0 has amax 7 (scale 1), group 1 (8 real + 24 padding) amax 0.7 (scale 0.1)
    w = torch.zeros(1, 40)
    w[0, :4] = torch.tensor([7.0, -3.4, 0.6, -7.0])
    w[0, 32:35] = torch.tensor([0.7, -0.35, 0.04])
    packed, scales = quantize_int4(w, group=32)
    assert packed.shape == (1, 32) and scales.shape == (1, 2)  # Kp = 64
    assert scales[0, 0].item() == 1.0
    assert scales[0, 1].item() == torch.tensor(0.1).bfloat16().item()  # rounded to bf16 first
    q = unpack_int4(packed)[0]
    assert q[:4].tolist() == [7, -3, 1, -7]
    # 0.7 / 0.1000977 = 6.99, -0.35 / 0.1000977 = -3.497, 0.04 / 0.1000977 = 0.40
    assert q[32:35].tolist() == [7, -3, 0]
    assert q[4:32].abs().sum() == 0 and q[35:].abs().sum() == 0  # zeros and padding stay 0


def test_quantize_int8_exact_values():
    w = torch.tensor([[127.0, -63.4, 0.6, 0.0], [0.0, 0.0, 0.0, 0.0]])
    qw = quantize(w, QuantFormat.INT8)
    # an all-zero row: scale tiny, no NaN; rows padded with q = 0 to 16 columns (one byte-planar block)
    assert unpack_int8(qw.qweight).tolist() == [[127, -63, 1] + [0] * 13, [0] * 16]
    assert qw.scales[0].item() == 1.0
    assert torch.equal(dequantize(qw)[0], torch.tensor([127.0, -63.0, 1.0, 0.0]))


@pytest.mark.parametrize("fmt,group", [(QuantFormat.INT8, 128), (QuantFormat.INT4, 32), (QuantFormat.INT4, 128)])
def test_round_to_nearest_within_half_a_scale(fmt, group):
    torch.manual_seed(0)
    w = torch.randn(9, 150) * torch.logspace(-3, 1, 9)[:, None]  # rows of very different magnitude
    qw = quantize(w, fmt, group)
    deq = dequantize(qw)
    assert deq.shape == w.shape
    s = qw.scales.float()
    s = s[:, None] if fmt is QuantFormat.INT8 else s.repeat_interleave(group, 1)[:, :150]
    assert bool(((deq - w).abs() <= s / 2 * (1 + 1e-6)).all())
    assert int(unpack_int4(qw.qweight).abs().max() if fmt is QuantFormat.INT4 else unpack_int8(qw.qweight).abs().max()) <= (
        7 if fmt is QuantFormat.INT4 else 127)


def test_group_bounds_and_bytes():
    for bad in (16, 48, 2048):
        with pytest.raises(ValueError, match="power of two"):
            check_group(bad)
    check_group(128)
    assert weight_bytes(None, 4096, 4096) == 4096 * 4096 * 2
    assert weight_bytes(QuantFormat.INT8, 4096, 4096) == 4096 * 4096 + 4096 * 2
    assert weight_bytes(QuantFormat.INT8, 10, 200) == 10 * 208 + 10 * 2  # K padded to 208
    assert weight_bytes(QuantFormat.INT4, 10, 200, 128) == 10 * 256 // 2 + 10 * 2 * 2  # K padded to 256
