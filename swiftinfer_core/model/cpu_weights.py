"""CPU weight formats of the Llama model: transposed float storage, int8 weight-only.

Batch-1 decode on a CPU reads every weight once per token, so its speed is the
weights' bytes over the memory bandwidth the matrix-vector product achieves.
Measured on the project's 2-core EPYC box (bench/results/cpu_decode_profile.md),
torch 2.13 / MKL, weights cycled so that nothing stays in the 32 MiB L3:

- float32 ``F.linear(x[1, in], W[out, in])`` over the 30 layers: ~40 ms; the same
  product with W stored as [in, out] (``x @ W^T`` where W^T is contiguous):
  ~27-30 ms; the [49152, 576] LM head: 11 ms against 5.2 ms.
- ``torch.ops.aten._weight_int8pack_mm`` (int8 [out, in], bf16 scales [out],
  bf16 activations): ~8 ms for the layers and ~1 ms for the head. With float32
  activations the same op takes 10x longer, so the input goes in as bf16.

``transpose_linears`` changes strides only: each weight stays an [out, in]
Parameter (state dicts, shapes and numerics of one product are unchanged).
"""

from __future__ import annotations

import torch
from torch import nn

from swiftinfer_core.model.linear_slots import linear_slots

QMAX = 127  # symmetric int8: -127..127 (-128 unused, so -q is representable)


def transpose_linears(model: nn.Module) -> None:
    """Store every nn.Linear weight [out, in] as a transposed view of an [in, out]
    contiguous tensor (F.linear then multiplies by a row-contiguous W^T)."""
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            w = mod.weight.data
            mod.weight = nn.Parameter(w.t().contiguous().t(), requires_grad=False)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] float -> (q [out, in] int8, scale [out] bfloat16) with w ~ q * scale[:, None].
    The scale is rounded to bfloat16 before q is chosen, so q is the nearest int8 for the
    scale the kernel multiplies by."""
    wf = w.detach().float()
    amax = wf.abs().amax(dim=1)
    scale = (amax / QMAX).clamp(min=torch.finfo(torch.float32).tiny).to(torch.bfloat16)
    s = scale.float()[:, None]
    q = torch.round(wf / s).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scale


class Int8Linear(nn.Module):
    """Weight-only int8 linear: x [..., in] float32 -> [..., out] float32.

    With ``kernels`` (kernels/cpu_native.py): y = x @ (q * scale)^T by the C kernel
    for up to NATIVE_ROWS rows (decode batches; x rounded to 16-bit fixed point per
    row, cpu_native_gemv.c), and beyond (prefill chunks) as (x @ float(q)^T) * scale
    in float32 through MKL's GEMM on the weight widened for the call. Without:
    y = bf16(x) @ (q * scale)^T by torch's ``_weight_int8pack_mm``. On this
    project's AVX2 box (no AVX-512 BF16), one thread, the default model's layers
    (float inputs to the C kernel then): 1 row 10 ms (C) against 20 (torch's op),
    4 rows 20 against 32, 16 rows ~80 (C or widened GEMM) against 95, 74 rows 220
    (widened GEMM) against 380; 16-bit inputs took the 1-row case to ~7 ms.
    Plus the float32 bias, if any. ``in_dtype`` tells the model what to feed it
    (model/llama.py): float32, as the residual stream."""

    in_dtype = torch.float32
    NATIVE_ROWS = 16  # rows up to which the C kernel beats MKL's GEMM over the widened weight

    def __init__(self, linear: nn.Linear, kernels=None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight)
        self.register_buffer("qweight", q)  # [out, in] int8
        self.register_buffer("scales", scale)  # [out] bfloat16
        self.register_buffer("scales_f32", scale.float(), persistent=False)  # [out], what the C kernel reads
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.kernels = kernels

    def dequantized(self) -> torch.Tensor:
        """[out, in] float32: the weight this layer multiplies by."""
        return self.qweight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() != 2  # the model's activations are [T, in] already: no reshape op per call
        x2 = x.reshape(-1, self.in_features) if flat else x  # [N, in]
        if self.kernels is not None and x2.dtype == torch.float32:
            if x2.shape[0] <= self.NATIVE_ROWS:
                return _unflat(self.kernels.gemv_i8(x2.contiguous(), self.qweight, self.scales_f32, self.bias), x, flat)
            y = torch.mm(x2, self.qweight.t().float()) * self.scales_f32  # [N, out]; q^T widened as a transposed view
            if self.bias is not None:
                y = y + self.bias
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16), self.qweight, self.scales).float()  # [N, out]
            if self.bias is not None:
                y = y + self.bias
        return _unflat(y, x, flat)


def _unflat(y: torch.Tensor, x: torch.Tensor, flat: bool) -> torch.Tensor:
    """y [N, out] back to x's leading dims when x was not [N, in]."""
    return y.view(*x.shape[:-1], y.shape[-1]) if flat else y


def quantize_int8(model: nn.Module, head: bool, kernels=None) -> int:
    """Replace the decoder's nn.Linear layers (and ``lm_head`` when ``head``) with
    Int8Linear (multiplying through ``kernels`` when given), in place; returns how
    many were replaced. CPU tensors only."""
    targets = linear_slots(model, head)
    for parent, _, name, child in targets:
        if child.weight.device.type != "cpu":
            raise ValueError(f"int8 weights run on the CPU only; {name} is on {child.weight.device}")
        setattr(parent, name, Int8Linear(child, kernels))
    return len(targets)
