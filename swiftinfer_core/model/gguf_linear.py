"""Linear and embedding layers over GGUF blocks kept compact (model/gguf_blocks.py).

``GGUFLinear``: y = x @ W^T for W [N, K] in Q8_0/Q4_0/Q4_1/Q4_K, computed from
the codes per group of 32 inputs, never holding W in float:

    y[m, n] = sum_g s[n, g] * (q[n, g, :] . x[m, g, :]) + o[n, g] * sum(x[m, g, :])

(w = s q + o per group; o = 0 for Q8_0). In torch, on the CPU or any device
torch runs on: rows of W are taken ``ROWS`` at a time (a Python loop over row
chunks, not over groups), their codes widened to float32 for that chunk only
(the 4-bit types as the low and the high nibbles apart: inputs 0..15 and 16..31
of each group), and the products over all groups run as one batched matrix
product (torch.bmm over the G groups). The widened chunk is at most ROWS x K x 4
bytes (512 KiB at K = 576), a temporary. Activations and results are float32
(the residual stream's dtype: ``in_dtype``).

With ``kernels`` (kernels/cpu_native.py, EngineConfig.cpu_native_kernels), a
Q8_0/Q4_0/Q4_1 weight multiplies through the C kernel of kernels/cpu_native_gguf.c
instead, NATIVE_ROWS rows of x per call: the same per-group sums, each group of
codes widened once per call and used for all its rows, rows of W over the torch
threads (one thread, AVX2 box: 1 row of a [3072, 576] Q4_1 weight 0.46 ms against
4.8 in torch ops; 64 rows 9.3 ms against 31). Q4_K takes the torch ops.

``GGUFEmbedding``: token rows dequantised as they are gathered (bit for bit
gguf's values). A tied LM head and embedding share one GGUFBlocks (stored once).
"""

from __future__ import annotations

import torch
from torch import nn

from swiftinfer_core.model.gguf_blocks import GROUP, GGUFBlocks

ROWS = 256  # rows of W widened at once


def _register(mod: nn.Module, blocks: GGUFBlocks) -> None:
    mod.qtype = blocks.qtype
    for name in ("qs", "d", "m", "sc", "mn"):
        mod.register_buffer(name, getattr(blocks, name))


def _blocks(mod: nn.Module) -> GGUFBlocks:
    return GGUFBlocks(mod.qtype, mod.qs, mod.d, mod.m, mod.sc, mod.mn)


class GGUFLinear(nn.Module):
    """x [..., K] float32 -> [..., N] float32 over a compact GGUF weight [N, K] (+ float32 bias)."""

    in_dtype = torch.float32

    NATIVE_ROWS = 64  # rows of x per C call (kernels/cpu_native.py GGUF_MAX_ROWS)

    def __init__(self, blocks: GGUFBlocks, bias: torch.Tensor | None = None, kernels=None):
        super().__init__()
        self.out_features, self.in_features = blocks.shape
        _register(self, blocks)
        from swiftinfer_core.kernels.cpu_native import GGUF_QTYPES

        native = kernels is not None and blocks.qtype in GGUF_QTYPES and blocks.qs.device.type == "cpu"
        self.kernels = kernels if native else None
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @property
    def blocks(self) -> GGUFBlocks:
        return _blocks(self)

    def dequantized(self) -> torch.Tensor:
        """[N, K] float32: the weight this layer multiplies by."""
        return self.blocks.dequantize()

    def extra_repr(self) -> str:
        return f"{self.qtype}, in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float()  # [M, K]
        if self.kernels is not None:
            r = self.NATIVE_ROWS
            parts = [self.kernels.gemv_gguf(x2[a:a + r].contiguous(), self.qtype, self.qs, self.d, self.m)
                     for a in range(0, x2.shape[0], r)]
            y = parts[0] if len(parts) == 1 else torch.cat(parts)
        else:
            y = gguf_matmul(x2, self.blocks)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


def gguf_matmul(x: torch.Tensor, b: GGUFBlocks, rows: int = ROWS) -> torch.Tensor:
    """x [M, K] float32 @ W^T -> [M, N] float32 for W the blocks ``b`` (module doc)."""
    n, k = b.shape
    g = k // GROUP
    m = x.shape[0]
    xg = x.reshape(m, g, GROUP)
    xsum = xg.sum(-1)  # [M, G]
    four_bit = b.qtype != "Q8_0"
    if four_bit:
        x_lo = xg[:, :, :16].permute(1, 2, 0)  # [G, 16, M]: inputs 0..15 of each group (low nibbles)
        x_hi = xg[:, :, 16:].permute(1, 2, 0)  # [G, 16, M]: inputs 16..31 (high nibbles)
        qs = b.qs.view(n, g, GROUP // 2)
    else:
        x_all = xg.permute(1, 2, 0)  # [G, 32, M]
        qs = b.qs.view(n, g, GROUP)
    out = torch.empty(m, n, dtype=torch.float32, device=x.device)
    for a in range(0, n, rows):
        s, o = _slice(b, a, a + rows).group_scales()  # [r, G]
        q = qs[a:a + rows]
        if four_bit:
            p = torch.bmm((q & 0x0F).float().transpose(0, 1), x_lo)  # [G, r, M]
            p = torch.baddbmm(p, (q >> 4).float().transpose(0, 1), x_hi)
        else:
            p = torch.bmm(q.float().transpose(0, 1), x_all)
        y = torch.einsum("grm,rg->mr", p, s)  # sum over groups of s * (q . x)
        if o is not None:
            y = y + xsum @ o.t()
        out[:, a:a + rows] = y
    return out


def _slice(b: GGUFBlocks, lo: int, hi: int) -> GGUFBlocks:
    """Rows [lo, hi) as views (every tensor of GGUFBlocks is indexed by row first)."""
    s = lambda t: None if t is None else t[lo:hi]  # noqa: E731
    return GGUFBlocks(b.qtype, b.qs[lo:hi], b.d[lo:hi], s(b.m), s(b.sc), s(b.mn))


class GGUFEmbedding(nn.Module):
    """ids [...] -> float32 rows [..., K] of a compact GGUF table [vocab, K]."""

    def __init__(self, blocks: GGUFBlocks):
        super().__init__()
        self.num_embeddings, self.embedding_dim = blocks.shape
        _register(self, blocks)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        return _blocks(self).rows(flat).dequantize().view(*ids.shape, self.embedding_dim)


def compact_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the GGUF layers' buffers, counted once where shared; the float32 bytes
    of the weights they hold, N x K x 4 each, counted once too)."""
    seen, compact, as_f32 = set(), 0, 0
    for mod in model.modules():
        if not isinstance(mod, (GGUFLinear, GGUFEmbedding)):
            continue
        key = mod.qs.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        compact += _blocks(mod).nbytes()
        n, k = _blocks(mod).shape
        as_f32 += n * k * 4
    return compact, as_f32
