"""Batch-1 decode through fused GEMV kernels (GPU, Triton).

At batch 1 every weight is read once per token, so the step is a chain of
matrix-vector products. Each weight read carries its neighbours: the o and
down reads add the residual in their epilogues and hand the next norm over
(they store h * norm_weight and the sums of h^2: kernels/gemv_fusion.Handoff),
so the qkv, gate/up and head reads take an x normed already, and the down read
applies SiLU(gate)*up to its input as it loads it. Float weights read through
kernels/gemv.py; fp8 and int8/int4 weights (model/fp8_linear.py,
model/quant_linear.py) through their own GEMVs with the same folds. Numerically
it is the function ``Llama.forward`` computes (float32 residual stream, float32
norms and accumulation, the normed x rounded to the weights' input dtype); the
attention call is the same backend call. Used only for single-device models
without QKV bias. runner/build.py says for which weights the engine runs it.
"""

from __future__ import annotations

import torch
from torch import nn

from swiftinfer_core.model.fp8_linear import Fp8Linear
from swiftinfer_core.model.layers import in_dtype
from swiftinfer_core.model.quant import QuantFormat
from swiftinfer_core.model.quant_linear import QuantLinear
from swiftinfer_core.model.split_head import SplitHead


def _foldable(linear: nn.Module) -> bool:
    """A linear whose batch-1 GEMV takes the folds: no bias, no input gather."""
    if isinstance(linear, Fp8Linear):
        return linear.bias is None
    if isinstance(linear, QuantLinear):
        return linear.bias is None and linear.in_perm is None and not linear.on_cpu
    return type(linear) is nn.Linear and linear.bias is None


def supports(model) -> bool:
    # the gemv chain is Llama's block exactly: no QKV bias, no QK-norm, nothing else
    if not (getattr(model, "GEMV_DECODE", False) and model.shard.all_reduce is None and not model.args.qkv_bias
            and not model.args.qk_norm):
        return False
    linears = [m for layer in model.layers for m in (layer.wqkv, layer.wo, layer.w13, layer.w2)]
    return all(map(_foldable, linears)) and (isinstance(model.lm_head, SplitHead) or _foldable(model.lm_head))


def linear_gemv(linear: nn.Module, x: torch.Tensor, fusion, out: torch.Tensor) -> torch.Tensor:
    """out [1, N] = linear(prologue(x)) (+ residual): the layer's own batch-1 GEMV with ``fusion``
    (kernels/gemv_fusion.Fusion) folded in."""
    from swiftinfer_core.kernels import fp8_gemv, quant_gemv  # need triton
    from swiftinfer_core.kernels.gemv import gemv

    if isinstance(linear, Fp8Linear):
        return fp8_gemv.gemv_fp8(x, linear.qweight, linear.scales, out=out, fusion=fusion)
    if isinstance(linear, QuantLinear):
        if linear.fmt is QuantFormat.INT8:
            return quant_gemv.gemv_int8(x, linear.qweight, linear.scales, out=out, fusion=fusion)
        return quant_gemv.gemv_int4(x, linear.qweight, linear.scales, linear.in_features, linear.group, out=out,
                                    mins=linear.mins, fusion=fusion)
    return gemv(x, linear.weight, fusion, out=out)


@torch.inference_mode()
def fused_decode(model, ids: torch.Tensor, attn, plan, pool) -> torch.Tensor:
    """ids [1] -> logits [1, vocab] float32; writes the token's K/V like the plain path.

    Each norm is handed over (kernels/gemv_fusion.Handoff): the o and down GEMVs, which update the residual h,
    also store the next weight's input h * norm_weight and the partial sums of h^2, so the qkv, gate-up and
    head GEMVs read a normed x (Prologue.NORMED). Only layer 0's qkv, after the embedding, norms h itself."""
    from swiftinfer_core.kernels.gemv_fusion import Fusion, Handoff, Prologue

    eps, dev, layers, head = model.args.rms_eps, ids.device, model.layers, model.lm_head

    def new(linear, dtype):
        return torch.empty((1, linear.out_features), dtype=dtype, device=dev)

    def normed(src: Handoff | None, norm: nn.Module) -> tuple[torch.Tensor, Fusion]:
        """(x, fusion) of a weight read after ``norm``: from the handoff, else norming h in the read."""
        if src is None:
            return h, Fusion(Prologue.RMSNORM, norm.weight, eps)
        return src.xn, Fusion(Prologue.NORMED, eps=eps, source=src)

    h = model.embed(ids).float()  # [1, hidden] float32 residual, updated in place below
    src = None
    for i, layer in enumerate(layers):
        hq, hkv, d, dt = layer.hq, layer.hkv, layer.head_dim, in_dtype(layer.wqkv)
        qkv = linear_gemv(layer.wqkv, *normed(src, layer.attn_norm), new(layer.wqkv, dt))
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        o = attn.forward(plan, q.view(1, hq, d), k.view(1, hkv, d), v.view(1, hkv, d), pool.k[i], pool.v[i], i)
        mid = Handoff.new(layer.mlp_norm.weight, in_dtype(layer.w13))
        linear_gemv(layer.wo, o.reshape(1, hq * d).contiguous(), Fusion(residual=h, handoff=mid), h)
        gate_up = linear_gemv(layer.w13, *normed(mid, layer.mlp_norm), new(layer.w13, dt))
        # the next read after a norm: the next layer's qkv, else the head (a SplitHead reads float32)
        norm, reader = (layers[i + 1].attn_norm, layers[i + 1].wqkv) if i + 1 < len(layers) else (model.norm, head)
        src = Handoff.new(norm.weight, torch.float32 if isinstance(reader, SplitHead) else in_dtype(reader))
        linear_gemv(layer.w2, gate_up, Fusion(Prologue.SILU_MUL, residual=h, handoff=src), h)
    x, fusion = normed(src, model.norm)
    if isinstance(head, SplitHead):  # W = hi + lo: two float32 GEMVs of the same normed h, same bytes as float32
        from swiftinfer_core.kernels.gemv import gemv

        return gemv(x, head.hi, fusion, out_dtype=torch.float32) + gemv(x, head.lo, fusion, out_dtype=torch.float32)
    return linear_gemv(head, x, fusion, new(head, torch.float32))
