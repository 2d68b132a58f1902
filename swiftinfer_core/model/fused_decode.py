"""Batch-1 decode through fused GEMV kernels (GPU, Triton).

At batch 1 every weight is read once per token, so the step is a chain of
matrix-vector products. kernels/gemv.py reads each weight at close to copy
bandwidth and folds the neighbours in: RMSNorm into the QKV and gate/up reads,
SiLU(gate)*up into the down read, the residual adds into the O and down
epilogues. Numerically it is the same function as ``Llama.forward`` (float32
residual stream, float32 norms and accumulation); the attention call is the
same backend call. Used only for single-device models without QKV bias.
"""

from __future__ import annotations

import torch

from swiftinfer_core.model.split_head import SplitHead


def supports(model) -> bool:
    # the gemv chain is Llama's block exactly: no QKV bias, no QK-norm, nothing else
    return getattr(model, "GEMV_DECODE", False) and model.shard.all_reduce is None and not model.args.qkv_bias and not model.args.qk_norm


@torch.inference_mode()
def fused_decode(model, ids: torch.Tensor, attn, plan, pool) -> torch.Tensor:
    """ids [1] -> logits [1, vocab] float32; writes the token's K/V like the plain path."""
    from swiftinfer_core.kernels.gemv import gemv  # needs triton

    eps = model.args.rms_eps
    h = model.embed(ids).float()  # [1, hidden] float32 residual, updated in place below
    for i, layer in enumerate(model.layers):
        hq, hkv, d, dt = layer.hq, layer.hkv, layer.head_dim, layer.wqkv.weight.dtype
        qkv = gemv(h, layer.wqkv.weight, "rmsnorm", layer.attn_norm.weight, eps, out_dtype=dt)
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        o = attn.forward(plan, q.view(1, hq, d), k.view(1, hkv, d), v.view(1, hkv, d), pool.k[i], pool.v[i], i)
        gemv(o.reshape(1, hq * d).contiguous(), layer.wo.weight, "none", residual=h, out=h)
        gate_up = gemv(h, layer.w13.weight, "rmsnorm", layer.mlp_norm.weight, eps, out_dtype=dt)
        gemv(gate_up, layer.w2.weight, "silu_mul", residual=h, out=h)
    head = model.lm_head
    if isinstance(head, SplitHead):  # W = hi + lo: two float32 GEMVs of the same normed h, same bytes as float32
        hi = gemv(h, head.hi, "rmsnorm", model.norm.weight, eps, out_dtype=torch.float32)
        return hi + gemv(h, head.lo, "rmsnorm", model.norm.weight, eps, out_dtype=torch.float32)
    return gemv(h, head.weight, "rmsnorm", model.norm.weight, eps, out_dtype=torch.float32)
