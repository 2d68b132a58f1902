"""QuantLinear: a weight-only int8/int4 nn.Linear replacement (model/quant.py formats).

On CUDA it multiplies with the Triton kernels: kernels/quant_gemv.py for one
row (batch-1 decode), kernels/quant_gemm.py for more (decode batches, prefill
chunks); activations stay in the model's dtype (``in_dtype``, the replaced
weight's dtype), the output comes back in that dtype.

On the CPU (int4 only: CPU int8 is model/cpu_weights.Int8Linear) it calls torch's
``_weight_int4pack_mm_for_cpu``, whose format is ours with zero points 0
(w = (nibble - 8) * scale + zero). With ``zero_point`` (model/quant.py's
asymmetric int4: float16 scale and min per group) zero = min + 8 * scale. That op
wants N % 16 == 0 and K % group == 0: N is padded with zero rows (sliced off the
output) and x with zero columns up to Kp. As Int8Linear, it takes the float32
residual stream, multiplies in bfloat16 and returns float32; its scales and zeros
are bfloat16 too (the op's float32 variant was 25-45x slower on the default model's
shapes at one row in a hand-timed run on the project's CPU box: 0.6-4.6 ms against
26-104 us), so on the CPU a zero-point layer's float16 scale and zero are
rounded to 8 mantissa bits, as x is. The kernel's own packed copy is kept too
(``dequantized``: the stored format, float16 exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from swiftinfer_core.model.linear_slots import linear_slots
from swiftinfer_core.model.quant import (
    INT4_OFFSET,
    QuantFormat,
    QuantizedWeight,
    dequantize,
    quantize,
    unpack_int4,
)

CPU_N_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu: "expect N to be dividable by 16"


def cpu_int4_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


class QuantLinear(nn.Module):
    """Weight-only quantized linear: x [..., K] -> [..., N] (see the module doc for dtypes)."""

    def __init__(self, linear: nn.Linear, fmt: QuantFormat, group: int = 128, qw: QuantizedWeight | None = None,
                 zero_point: bool = False):
        """``qw``: this layer's weight already quantized (model/quant_search.py's
        calibrated choices, same format); None: round-to-nearest here.
        ``zero_point``: int4 with a float16 min per group (model/quant.py)."""
        super().__init__()
        w = linear.weight
        self.fmt, self.group = fmt, group
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.on_cpu = w.device.type == "cpu"
        if self.on_cpu and fmt is not QuantFormat.INT4:
            raise ValueError("QuantLinear serves int8 on CUDA only; the CPU's int8 is model/cpu_weights.Int8Linear")
        self.in_dtype = torch.float32 if self.on_cpu else w.dtype
        if qw is None:
            qw = quantize(w, fmt, group, zero_point)
        elif (qw.fmt, qw.out_features, qw.in_features, qw.group, qw.zero_point) != (
                fmt, self.out_features, self.in_features, group if fmt is QuantFormat.INT4 else self.in_features, zero_point):
            raise ValueError(f"precomputed weight {qw.fmt.value} [{qw.out_features}, {qw.in_features}] group {qw.group} "
                             f"zero point {qw.zero_point} does not fit this {fmt.value} layer "
                             f"[{self.out_features}, {self.in_features}] zero point {zero_point}")
        mins = None if qw.mins is None else qw.mins.to(w.device)
        perm = None if qw.in_perm is None else qw.in_perm.to(w.device, torch.int64)
        qw = QuantizedWeight(qw.fmt, qw.qweight.to(w.device), qw.scales.to(w.device), qw.out_features, qw.in_features,
                             qw.group, mins, perm)
        self.register_buffer("qweight", qw.qweight)  # int8 [N, K16] or uint8 [N, Kp/2] (model/quant.py layouts)
        self.register_buffer("scales", qw.scales)  # bf16 [N] or [N, Kp/group]; float16 with zero points
        self.register_buffer("mins", qw.mins)  # zero points: float16 [N, Kp/group]; else None
        self.register_buffer("in_perm", qw.in_perm)  # int64 [K]: act-order checkpoints gather x first; else None
        bias = linear.bias
        bias_dtype = torch.float32 if self.on_cpu else w.dtype
        self.register_buffer("bias", None if bias is None else bias.detach().to(bias_dtype).clone())
        if self.on_cpu:
            self._pack_for_cpu(qw)

    def _pack_for_cpu(self, qw: QuantizedWeight) -> None:
        n, n_pad = self.out_features, -(-self.out_features // CPU_N_MULTIPLE) * CPU_N_MULTIPLE
        nib = (unpack_int4(qw.qweight).to(torch.int32) + INT4_OFFSET)  # [N, Kp] in 1..15
        nib = F.pad(nib, (0, 0, 0, n_pad - n), value=INT4_OFFSET)  # padded rows: q = 0
        self.register_buffer("cpu_packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(nib, 1))
        s = F.pad(qw.scales.float(), (0, 0, 0, n_pad - n))  # [N_pad, G]
        z = torch.zeros_like(s) if qw.mins is None else F.pad(qw.mins.float(), (0, 0, 0, n_pad - n)) + INT4_OFFSET * s
        sz = torch.stack([s.t(), z.t()], dim=2)  # [G, N_pad, 2]: scale, zero (w = (nibble - 8) * scale + zero)
        self.register_buffer("cpu_scales_zeros", sz.to(torch.bfloat16).contiguous())
        self.k_pad = qw.scales.shape[1] * self.group

    def quantized(self) -> QuantizedWeight:
        return QuantizedWeight(self.fmt, self.qweight, self.scales, self.out_features, self.in_features,
                               self.group if self.fmt is QuantFormat.INT4 else self.in_features, self.mins, self.in_perm)

    def dequantized(self) -> torch.Tensor:
        """[N, K] float32: the weight this layer multiplies by."""
        return dequantize(self.quantized())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        if self.in_perm is not None:
            x2 = x2.index_select(1, self.in_perm)  # the stored column order (static shape: graphs capture it)
        y = self._cpu(x2) if self.on_cpu else self._cuda(x2)  # [M, N]
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def _cpu(self, x2: torch.Tensor) -> torch.Tensor:
        xb = F.pad(x2.to(torch.bfloat16), (0, self.k_pad - self.in_features))  # [M, Kp]
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, self.cpu_packed, self.group, self.cpu_scales_zeros)
        return y[:, : self.out_features].float()

    def _cuda(self, x2: torch.Tensor) -> torch.Tensor:
        from swiftinfer_core.kernels import quant_gemm, quant_gemv  # needs triton

        x2 = x2.contiguous()
        int4 = self.fmt is QuantFormat.INT4
        if x2.shape[0] == 1:
            if int4:
                return quant_gemv.gemv_int4(x2, self.qweight, self.scales, self.in_features, self.group, mins=self.mins)
            return quant_gemv.gemv_int8(x2, self.qweight, self.scales)
        if int4:
            return quant_gemm.gemm_int4(x2, self.qweight, self.scales, self.in_features, self.group, mins=self.mins)
        return quant_gemm.gemm_int8(x2, self.qweight, self.scales)


def quantize_linears(model: nn.Module, fmt: QuantFormat, group: int, head: bool,
                     weights: dict[str, QuantizedWeight] | None = None, zero_point: bool = False) -> int:
    """Replace the decoder's nn.Linear layers (and ``lm_head`` when ``head``) with
    QuantLinear, in place; returns how many were replaced. ``weights``: qualified
    name -> precomputed QuantizedWeight (model/quant_search.calibrated_weights);
    layers it lacks are rounded to nearest. ``zero_point``: int4 with float16 mins."""
    weights = weights or {}
    targets = linear_slots(model, head)
    for parent, qual, name, child in targets:
        setattr(parent, name, QuantLinear(child, fmt, group, weights.get(qual), zero_point))
    return len(targets)
