"""GGUF block parsing (model/gguf_blocks.py): the compact tensors dequantise to
exactly gguf.quants.dequantize's float32 values, on the default model's own file
and on random blocks of every format read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from swiftinfer_core.model.gguf_blocks import FORMATS, GGUFBlocks, cat_rows, from_bytes, read_tensor  # noqa: E402

_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q4_K": 144}
_SIZE = {"Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q4_K": 256}
_F16_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q4_K": (0, 2)}


def random_blocks(qtype: str, n: int, k: int, seed: int) -> np.ndarray:
    """Random block bytes [n, row bytes] with finite f16 scales (random codes and 6-bit scales)."""
    rng = np.random.default_rng(seed)
    nb = k // _SIZE[qtype]
    raw = rng.integers(0, 256, size=(n, nb, _BYTES[qtype]), dtype=np.uint8)
    for off in _F16_FIELDS[qtype]:
        f = (rng.standard_normal((n, nb)) * 0.05).astype(np.float16)
        raw[..., off:off + 2] = f.view(np.uint8).reshape(n, nb, 2)
    return raw.reshape(n, -1)


def bits_equal(a: torch.Tensor, b: np.ndarray) -> bool:
    return torch.equal(a.contiguous().view(torch.int32), torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)).view(torch.int32))


@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("n,k", [(1, 256), (7, 512), (33, 1792)])
def test_random_blocks_dequantise_as_gguf(qtype, n, k):
    raw = random_blocks(qtype, n, k, seed=n * 1000 + k)
    want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(n, k)
    b = from_bytes(qtype, raw, n, k)
    assert b.shape == (n, k)
    assert bits_equal(b.dequantize(), want)
    # the (s, o) form the linear layer multiplies by is the same numbers (up to the sign of zero:
    # d * q + (-8 d) is +0 where d * (q - 8) may be -0)
    s, o = b.group_scales()
    w = s[..., None] * b.codes().float()
    if o is not None:
        w = w + o[..., None]
    assert torch.equal(w.reshape(n, k), torch.from_numpy(want))
    # compact: the bytes of the file's blocks (Q4_K: 6-bit scales and mins one byte each)
    extra = 2 * n * (k // 32) - n * (k // 256) * 12 if qtype == "Q4_K" else 0
    assert b.nbytes() == raw.nbytes + extra


def test_rows_and_cat_are_exact():
    raw = random_blocks("Q4_1", 12, 96, seed=3)
    b = from_bytes("Q4_1", raw, 12, 96)
    idx = torch.tensor([5, 0, 11, 3])
    assert torch.equal(b.rows(idx).dequantize(), b.dequantize()[idx])
    both = cat_rows([b, b.rows(idx)])
    assert torch.equal(both.dequantize(), torch.cat([b.dequantize(), b.dequantize()[idx]]))
    with pytest.raises(ValueError):
        cat_rows([b, from_bytes("Q8_0", random_blocks("Q8_0", 2, 96, 1), 2, 96)])


def test_other_types_are_refused():
    with pytest.raises(ValueError, match="not read compact"):
        from_bytes("Q5_0", np.zeros(22, np.uint8), 1, 32)
    with pytest.raises(ValueError, match="multiple"):
        from_bytes("Q4_K", np.zeros(144, np.uint8), 1, 32 * 9)


def test_default_model_file_dequantises_as_gguf():
    from swiftinfer_core.model.fetch import ensure_default_gguf

    reader = gguf.GGUFReader(ensure_default_gguf())
    seen = set()
    for t in reader.tensors:
        name = t.tensor_type.name
        if name not in FORMATS:
            assert name in ("F32", "F16"), t.name
            continue
        # every quantized tensor of layers 0 and 29, and the Q8_0 embedding
        if not (t.name.startswith(("blk.0.", "blk.29.")) or t.name == "token_embd.weight"):
            continue
        b = read_tensor(t)
        want = gguf.quants.dequantize(t.data, t.tensor_type)
        assert b.shape == want.shape, t.name
        assert bits_equal(b.dequantize(), want), t.name
        seen.add(name)
    assert seen == {"Q4_1", "Q8_0"}  # what this file stores
