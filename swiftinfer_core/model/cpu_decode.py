"""One-token decode steps of an int8 Llama on the CPU, one C call per layer.

The CPU analogue of model/fused_decode.py (GPU). Each layer is one call of
kernels/cpu_native_layer.c, which chains

    qkv = rmsnorm(h) @ Wqkv^T          (RMSNorm folded into the int8 product)
    o   = attention per sequence       (the token's K/V written first, as CpuAttention)
    h  += o @ Wo^T                     (residual add folded in, in place)
    gu  = rmsnorm(h) @ W13^T
    h  += silu(gu[:I]) * gu[I:] @ W2^T (SwiGLU and residual folded in)

instead of ~45 torch ops. The same function as ``Llama.forward`` over the same
int8 weights (float32 residual stream and norms, int8 weights times float32
scales) up to the order of float32 sums and the products' inputs, which are
rounded to 16-bit fixed point per row (cpu_native_gemv.c; torch's int8 op
rounds them to bf16, ~400x coarser for a row without outliers). Used for steps in which every
sequence feeds one token (CpuAttention's CpuDecodePlan); prefill and mixed
steps take the model's own forward.

The weights' addresses are read once, here, after their dtypes, shapes and
contiguity are checked: the model must not be moved or re-quantized afterwards
(runner/build.py builds this last). The cache's are read per step.
"""

from __future__ import annotations

import torch

from swiftinfer_core.kernels.cpu_native import NativeKernels, SeqArrays
from swiftinfer_core.model.cpu_weights import Int8Linear


def supports(model) -> bool:
    """Llama's block exactly, one device, float32 norms, every layer linear in int8."""
    a = model.args
    if not getattr(model, "GEMV_DECODE", False) or model.shard.all_reduce is not None or a.qkv_bias or a.qk_norm:
        return False
    if getattr(model.embed, "weight", None) is None or model.embed.weight.dtype != torch.float32:  # GGUFEmbedding: no
        return False
    return all(isinstance(getattr(layer, n), Int8Linear) and layer.attn_norm.weight.dtype == torch.float32
               for layer in model.layers for n in ("wqkv", "wo", "w13", "w2"))


def _addr(t: torch.Tensor | None, dtype: torch.dtype, shape: tuple) -> int | None:
    """A weight's address once it is checked to be a contiguous CPU ``dtype`` tensor of ``shape``."""
    if t is None:
        return None
    if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous() or tuple(t.shape) != shape:
        raise ValueError(f"CpuDecoder: expected a contiguous CPU {dtype} {shape}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    return t.data_ptr()


def _int8(lin: Int8Linear, n: int, k: int) -> tuple:
    """(qweight, scales) addresses of an [n, k] int8 layer."""
    return _addr(lin.qweight, torch.int8, (n, k)), _addr(lin.scales_f32, torch.float32, (n,))


class CpuDecoder:
    """``model``'s one-token steps through ``kernels`` (see the module doc)."""

    def __init__(self, model, kernels: NativeKernels):
        if not supports(model):
            raise ValueError("CpuDecoder needs a single-device Llama-block model with int8 layers and float32 norms")
        self.model, self.kernels = model, kernels
        a, f32 = model.args, torch.float32
        hid, self.layers = a.hidden_size, []
        for layer in model.layers:
            hq, hkv, d = layer.hq, layer.hkv, layer.head_dim
            nqkv, inter = (hq + 2 * hkv) * d, layer.w2.in_features
            self.layers.append((
                a.rms_eps, _addr(layer.attn_norm.weight.data, f32, (hid,)), *_int8(layer.wqkv, nqkv, hid),
                _addr(layer.wqkv.bias, f32, (nqkv,)), *_int8(layer.wo, hid, hq * d),
                _addr(layer.mlp_norm.weight.data, f32, (hid,)), *_int8(layer.w13, 2 * inter, hid), inter,
                *_int8(layer.w2, hid, inter), hq, hkv, d,
            ))

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, attn, plan, pool, rows: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B] (one token per sequence) -> logits [R, vocab] float32 for ``rows`` (all if None)."""
        m = self.model
        h = m.embed(ids).float().contiguous()  # [B, hidden] float32 residual, updated in place by each layer
        seqs = SeqArrays(plan.seqs, pool.layout.capacity)
        for i, weights in enumerate(self.layers):
            self.kernels.decode_layer(weights, h, pool.k[i], pool.v[i], seqs, attn.scale)
        if rows is not None:
            h = h.index_select(0, rows)
        head = m.lm_head
        if isinstance(head, Int8Linear):
            return self.kernels.gemv_i8(h.contiguous(), head.qweight, head.scales_f32, head.bias, "rmsnorm",
                                        m.norm.weight.data, m.args.rms_eps)
        return m.head(h)  # float32 head (lm_head_fp32): MKL's product over the transposed weight
