"""One-token decode steps of an int8 Llama on the CPU through the C kernels.

The CPU analogue of model/fused_decode.py (GPU): per layer four calls of
cpu_native.c's int8 product, each with what surrounds it folded in,

    qkv = rmsnorm(h) @ Wqkv            (prologue: RMSNorm with attn_norm)
    o   = attention (CpuAttention: one C call per sequence)
    h  += o @ Wo                       (epilogue: residual add, in place)
    gu  = rmsnorm(h) @ W13             (prologue: RMSNorm with mlp_norm)
    h  += silu(gu[:I]) * gu[I:] @ W2   (prologue: SwiGLU; epilogue: residual)

instead of ~45 torch ops. The same function as ``Llama.forward`` (float32
residual stream, float32 norms, int8 weights times their float32 scales) up
to the order of float32 sums, and float32 activations into the products where
the torch path rounds them to bf16. Used for steps in which every sequence
feeds one token (CpuDecodePlan); prefill and mixed steps take the model's own
forward. The weights' addresses are fixed once the model is built.
"""

from __future__ import annotations

import torch

from swiftinfer_core.model.cpu_weights import Int8Linear


def supports(model) -> bool:
    """Llama's block exactly, one device, float32 norms, every layer linear in int8."""
    a = model.args
    if not getattr(model, "GEMV_DECODE", False) or model.shard.all_reduce is not None or a.qkv_bias or a.qk_norm:
        return False
    if model.embed.weight.dtype != torch.float32:
        return False
    return all(isinstance(getattr(layer, n), Int8Linear) and getattr(layer, n).kernels is not None
               and layer.attn_norm.weight.dtype == torch.float32 for layer in model.layers for n in ("wqkv", "wo", "w13", "w2"))


class CpuDecoder:
    """``model``'s one-token steps through ``kernels`` (cpu_native.NativeKernels); see the module doc."""

    def __init__(self, model, kernels):
        if not supports(model):
            raise ValueError("CpuDecoder needs a single-device Llama-block model with int8 layers and float32 norms")
        self.model, self.kernels = model, kernels

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, attn, plan, pool, rows: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B] (one token per sequence) -> logits [R, vocab] float32 for ``rows`` (all if None)."""
        m, kern = self.model, self.kernels
        eps = m.args.rms_eps
        h = m.embed(ids).float().contiguous()  # [B, hidden] float32 residual, updated in place below
        B = h.shape[0]
        for i, layer in enumerate(m.layers):
            hq, hkv, d = layer.hq, layer.hkv, layer.head_dim
            qkv = _gemv(kern, h, layer.wqkv, "rmsnorm", layer.attn_norm.weight, eps)  # [B, (hq + 2 hkv) d]
            q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
            o = attn.forward(plan, q.view(B, hq, d), k.view(B, hkv, d), v.view(B, hkv, d), pool.k[i], pool.v[i], i)
            _gemv(kern, o.view(B, hq * d), layer.wo, residual=h)
            gu = _gemv(kern, h, layer.w13, "rmsnorm", layer.mlp_norm.weight, eps)  # [B, 2 I]
            _gemv(kern, gu, layer.w2, "silu_mul", residual=h)
        if rows is not None:
            h = h.index_select(0, rows)
        head = m.lm_head
        if isinstance(head, Int8Linear) and head.kernels is not None:
            return _gemv(kern, h.contiguous(), head, "rmsnorm", m.norm.weight, eps)
        return m.head(h)  # float32 head (lm_head_fp32): MKL's product over the transposed weight


def _gemv(kern, x: torch.Tensor, lin: Int8Linear, prologue: str = "none", norm_w=None, eps: float = 0.0,
          residual: torch.Tensor | None = None) -> torch.Tensor:
    """prologue(x) @ lin's weight^T (+ bias) (+ residual, written into residual itself)."""
    return kern.gemv_i8(x, lin.qweight, lin.scales_f32, lin.bias, prologue, norm_w, eps, residual, out=residual)
