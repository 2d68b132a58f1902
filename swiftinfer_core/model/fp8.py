"""FP8 (e4m3) weights: the format, its reference math, and which devices run it.

Format (model/quant.py QuantFormat.FP8, quantized at load from the float checkpoint):
  q      torch.float8_e4m3fn [N, K]   e4m3: 1 sign, 4 exponent, 3 mantissa bits;
                                      largest finite 448, smallest subnormal 2^-9
  scale  float32 [N]                  one per output channel, amax(|w[n, :]|) / 448
  w[n, k] ~ float(q[n, k]) * scale[n]

Why per channel and float32: the whole row maps onto e4m3's full range (its
largest weight becomes +-448), and 4 bytes per row are nothing next to K bytes of
weights. e4m3 is a float, so unlike int8 the error is relative: a weight in e4m3's
normal range (|w| / scale >= 2^-6) is off by at most 2^-4 of itself (half of
its 3-bit mantissa step), a smaller one by at most 2^-10 x scale (half of the
subnormal step 2^-9). torch's cast rounds to nearest, ties to even; the values
are clamped to +-448 first, since e4m3fn has no infinity (a larger value would
become NaN).

The same per-row quantization serves activations on the batched path
(kernels/fp8_scaled_mm.py: one scale per token row, computed on the fly);
``reference_linear`` is that path's and the GEMV's arithmetic in float64, for
tests and the CPU emulation in bench/fp8_quality_cpu.py.
"""

from __future__ import annotations

import torch

E4M3_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn
MIN_CAPABILITY = (8, 9)  # Ada and Hopper: e4m3 conversions and FP8 tensor cores
TINY = torch.finfo(torch.float32).tiny  # the scale of an all-zero row: q = 0, no division by zero


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float (any device) -> (q float8_e4m3fn [N, K], scale float32 [N]),
    with w ~ float(q) * scale[:, None], each row's amax mapped to 448."""
    wf = w.detach().float()
    scale = (wf.abs().amax(dim=1) / E4M3_MAX).clamp_(min=TINY)  # [N]
    q = (wf / scale[:, None]).clamp_(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
    return q.contiguous(), scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[N, K] float32: the weight the kernels multiply by."""
    return q.float() * scale[:, None]


def error_bound(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[N, K]: the largest |w - dequantized| round-to-nearest allows (see the module doc)."""
    return torch.maximum(w.float().abs() * 2.0**-4, scale[:, None] * 2.0**-10)


def reference_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, quantize_x: bool = False) -> torch.Tensor:
    """x [M, K] -> [M, N] float64: x @ dequantized^T. ``quantize_x``: x's rows are
    first quantized to e4m3 with their own scales, as the _scaled_mm path does."""
    xd = x.double()
    if quantize_x:
        xq, sx = quantize_fp8(x)
        xd = xq.double() * sx.double()[:, None]
    return xd @ (q.double() * scale.double()[:, None]).t()


def fp8_unsupported(device: torch.device) -> str | None:
    """Why FP8 weights cannot run on ``device`` (None: they can): a CUDA GPU of
    compute capability 8.9 or newer is needed."""
    if device.type != "cuda":
        return (f"needs a CUDA GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ada, Hopper), "
                f"not {device.type}; on the CPU use 'int8'")
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (f"needs compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (e4m3 conversions and FP8 "
                f"tensor cores: Ada, Hopper); {name} is {cap[0]}.{cap[1]}; use 'int8'")
    return None
