"""Llama with fused norms, residual adds and SiLU*up (kernels/fused.py) equals the torch layers.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py)."""

import pytest
import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.kernels.attention import TorchAttention
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.rope import inv_freq
from swiftinfer_core.model.llama import Llama
from swiftinfer_core.model.loader import ModelArgs


def tiny(dtype: torch.dtype, dev: torch.device) -> Llama:
    args = ModelArgs(vocab_size=300, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=32,
                     intermediate_size=192, rope_theta=10000.0)
    model = Llama(args).eval()
    for name, p in model.named_parameters():  # fresh random weights, norms away from 1
        torch.nn.init.normal_(p, mean=1.0 if "norm" in name else 0.0, std=0.3 if "norm" in name else 0.05)
    return model.to(dev, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_layers_match_the_torch_layers_over_prefill_and_decode(dtype):
    seed = torch.seed()  # fresh inputs each run, reported on failure
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = tiny(dtype, dev)
    assert not model.fused and not any(b.fused for b in model.layers)
    layout = StreamLayout(2, 6)
    attn = TorchAttention(layout, inv_freq(32, 10000.0), 32**-0.5)
    pools = {on: KVPool(layout, 3, 2, 2, 32, dtype, dev) for on in (False, True)}
    ids = torch.randint(0, 300, (20,), device=dev)
    # two conversations: a 7-token prefill each in one packed step, then decode steps past sinks + window
    steps = [(AttnBatch.build([0, 1], [0, 0], [7, 7], dev), torch.cat([ids[:7], ids[7:14]]))]
    steps += [(AttnBatch.build([0, 1], [7 + t, 7 + t], [1, 1], dev), ids[14 + t : 16 + t]) for t in range(4)]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for batch, step_ids in steps:
        out = {}
        for on in (False, True):
            model.fuse_elementwise(on)
            out[on] = model(step_ids, attn, attn.prepare(batch), pools[on])
        assert out[True].dtype == torch.float32
        err = (out[True] - out[False]).abs().max().item()
        assert err <= tol * out[False].abs().max().item(), f"seed {seed}: {err}"
        if dtype == torch.float32:
            assert torch.equal(out[True].argmax(-1), out[False].argmax(-1)), f"seed {seed}"
    for a, b in zip(pools[False].k + pools[False].v, pools[True].k + pools[True].v):
        err = (a.float() - b.float()).abs().max().item()
        assert err <= tol * a.float().abs().max().item(), f"seed {seed}: {err}"
