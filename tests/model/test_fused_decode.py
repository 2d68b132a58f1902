"""Batch-1 fused-GEMV decode equals the plain forward (Triton interpreter on CPU)."""

import importlib
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when @triton.jit decorates: before the kernels import
    for name in ("swiftinfer_core.kernels.gemv",):
        if name in sys.modules:
            importlib.reload(sys.modules[name])

from swiftinfer_core.cache.layout import StreamLayout  # noqa: E402
from swiftinfer_core.cache.pool import KVPool  # noqa: E402
from swiftinfer_core.kernels.attention import TorchAttention  # noqa: E402
from swiftinfer_core.kernels.batch import AttnBatch  # noqa: E402
from swiftinfer_core.kernels.rope import inv_freq  # noqa: E402
from swiftinfer_core.model import fused_decode  # noqa: E402
from swiftinfer_core.model.llama import Llama  # noqa: E402
from swiftinfer_core.model.loader import ModelArgs  # noqa: E402


def test_fused_decode_matches_plain_forward():
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = ModelArgs(vocab_size=300, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                     intermediate_size=192, rope_theta=10000.0)
    model = Llama(args).to(dev).eval()
    for name, p in model.named_parameters():  # fresh random weights, norms away from 1
        torch.nn.init.normal_(p, mean=1.0 if "norm" in name else 0.0, std=0.3 if "norm" in name else 0.05)
    assert fused_decode.supports(model)
    layout = StreamLayout(2, 4)
    attn = TorchAttention(layout, inv_freq(32, 10000.0), 32**-0.5)
    pools = [KVPool(layout, 2, 1, 2, 32, torch.float32, dev) for _ in range(2)]
    ids = torch.randint(0, 300, (9,), device=dev)
    for t in range(9):  # past sinks + window: the ring wraps
        batch = AttnBatch.build([0], [t], [1], dev)
        model.gemv_decode = False
        plain = model(ids[t : t + 1], attn, attn.prepare(batch), pools[0])
        model.gemv_decode = True
        fused = model(ids[t : t + 1], attn, attn.prepare(batch), pools[1])
        assert torch.allclose(fused, plain, rtol=1e-4, atol=1e-4), (t, (fused - plain).abs().max())
    for a, b in zip(pools[0].k + pools[0].v, pools[1].k + pools[1].v):
        assert torch.allclose(a, b, atol=1e-5)
