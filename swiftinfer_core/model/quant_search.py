"""Better choices inside the existing weight formats (model/quant.py, model/fp8.py):
the same bytes, scales and code ranges the kernels read, chosen to lose less.

- ``int4_search_scales``: per group, the scale is searched over clip ratios of the
  round-to-nearest amax scale, minimising the group's squared error, optionally
  weighted per input column by the activations' second moment (``h_diag``:
  diag(X^T X) of calibration inputs), as llama.cpp's make_qx_quants and AWQ's clip
  search do. ``qmin`` -8 also uses nibble 0 (offset-binary 0, which the format can
  hold and the kernels decode as -8) where it helps a group.
- ``gptq_int4`` / ``gptq_fp8``: GPTQ (Frantar et al. 2022) rounding: columns are
  quantized in order and each one's rounding error is spread over the columns not
  yet quantized through the inverse of the calibration Hessian H = X^T X, so the
  layer's output error on those inputs, not the weight error, is minimised. The
  int4 group scales are chosen when a group's first column is reached (from the
  already-updated weights), or, in activation order (``act_order``: columns by
  decreasing diag H, the best measured), all up front from the original weights;
  FP8 keeps its per-row amax / 448 scale and always goes in activation order.

Every function returns the formats' own tensors (packed uint8 + bf16 scales,
or float8_e4m3fn + float32 scales), so QuantLinear / Fp8Linear and the kernels
take them unchanged. model/calibrate.py collects the Hessians.
"""

from __future__ import annotations

from enum import Enum

import torch

from swiftinfer_core.model.fp8 import E4M3_MAX, FP8_DTYPE, TINY
from swiftinfer_core.model.quant import INT4_QMAX, QuantFormat, QuantizedWeight, check_group, dequantize, pack_int4, quantize_int4

CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(21))  # 1.0 .. 0.5


def _round_int4(w: torch.Tensor, scale: torch.Tensor, qmin: int) -> torch.Tensor:
    """w [..., g] over scale [...] (float32 of the bf16 scale) -> q in qmin..7 (float)."""
    return torch.round(w / scale[..., None]).clamp_(qmin, INT4_QMAX)


def _group_scales(wg: torch.Tensor, d: torch.Tensor | None, qmin: int, grid=CLIP_GRID) -> torch.Tensor:
    """wg [N, G, g] -> bf16 scales [N, G] with the least (d-weighted) squared error
    among the clip ratios of ``grid`` (and, with qmin -8, the negative extreme mapped to -8)."""
    amax = wg.abs().amax(dim=2)  # [N, G]
    cands = [amax * r / INT4_QMAX for r in grid]
    if qmin < -INT4_QMAX:  # a group whose largest-magnitude weight is negative can map it to -8
        neg = -wg.amin(dim=2)
        cands += [torch.where(neg >= amax, neg * r / -qmin, amax * r / INT4_QMAX) for r in grid]
    best_err, best = None, None
    for c in cands:
        s = c.clamp(min=TINY).to(torch.bfloat16)
        sf = s.float()
        e = (wg - _round_int4(wg, sf, qmin) * sf[..., None]) ** 2
        err = (e * d).sum(dim=2) if d is not None else e.sum(dim=2)
        if best is None:
            best_err, best = err, s
        else:
            take = err < best_err
            best_err, best = torch.where(take, err, best_err), torch.where(take, s, best)
    return best


def int4_search_scales(w: torch.Tensor, group: int = 128, h_diag: torch.Tensor | None = None,
                       qmin: int = -INT4_QMAX, grid=CLIP_GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (packed uint8 [N, Kp // 2], scales bf16 [N, Kp // group]) as
    model/quant.quantize_int4, with searched scales. ``h_diag`` [K]: per-column
    error weights (calibration activations' second moments), None: plain MSE."""
    check_group(group)
    n, k = w.shape
    kp = -(-k // group) * group
    wg = torch.nn.functional.pad(w.detach().float(), (0, kp - k)).view(n, kp // group, group)
    d = None
    if h_diag is not None:
        d = torch.nn.functional.pad(h_diag.float(), (0, kp - k)).view(1, kp // group, group)
    scale = _group_scales(wg, d, qmin, grid)
    q = _round_int4(wg, scale.float(), qmin).view(n, kp)
    return pack_int4(q.to(torch.int8)), scale


def _hinv_chol(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1, float64 (GPTQ's Hinv)."""
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def round_block(w1: torch.Tensor, hinv1: torch.Tensor, scale1: torch.Tensor, qmin: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's column loop over one block, in torch: w1 [N, B] float32 (updated in place),
    hinv1 [B, B] (the block of Hinv's upper factor), scale1 [N, B] per weight (int4) or
    [N] per row (fp8) -> (dequantized weights [N, B], scaled errors [N, B]). Each column is
    rounded to int4 codes qmin..7 (``qmin`` given) or to e4m3 (None) over its scale, and its
    error, over Hinv's diagonal, is taken off the block's later columns."""
    deq, err = torch.zeros_like(w1), torch.zeros_like(w1)
    for i in range(w1.shape[1]):
        s = scale1[:, i] if scale1.dim() == 2 else scale1
        col = w1[:, i] / s
        q = (torch.round(col).clamp_(qmin, INT4_QMAX) if qmin is not None
             else col.clamp_(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE).float()) * s
        e = (w1[:, i] - q) / hinv1[i, i]
        w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
        deq[:, i], err[:, i] = q, e
    return deq, err


def _block_rounder(w: torch.Tensor):
    """round_block's contract on w's device: the Triton kernel on CUDA (one launch per
    block, not ~6 per column), torch's column loop elsewhere."""
    if w.is_cuda:
        from swiftinfer_core.kernels.gptq_block import round_block as triton_round_block

        return triton_round_block
    return round_block


def _gptq(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, qmin: int | None, on_block=None, block: int = 128,
          damp: float = 0.01, order: torch.Tensor | None = None, rounder=None) -> torch.Tensor:
    """GPTQ over the columns of w [N, K] (in ``order`` if given). ``scale``: [N, K] per
    weight, in w's own column order (int4; ``on_block(i1, W[:, i1:i2])`` may fill a block's
    columns of it before they are rounded: group scales from the updated weights), or [N]
    per row (fp8). Float32 updates (H's factor in float64); ``rounder``: round_block's
    contract (default: by device). Returns the dequantized weight [N, K] float32."""
    w = w.detach().float().clone()
    if order is not None:
        w, h = w[:, order], h[order][:, order]
        if scale.dim() == 2:
            scale = scale[:, order]
    w[:, torch.diag(h) == 0] = 0
    hinv = _hinv_chol(h, damp).float()
    rounder = rounder or _block_rounder(w)
    k = w.shape[1]
    out = torch.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].contiguous()
        if on_block is not None:
            on_block(i1, w1)
        s1 = scale[:, i1:i2].contiguous() if scale.dim() == 2 else scale
        out[:, i1:i2], err1 = rounder(w1, hinv[i1:i2, i1:i2].contiguous(), s1, qmin)
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if order is not None:
        out = out[:, torch.argsort(order)]
    return out


def gptq_int4(w: torch.Tensor, h: torch.Tensor, group: int = 128, qmin: int = -INT4_QMAX,
              search: bool = True, damp: float = 0.01, act_order: bool = False, rounder=None) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K], h [K, K] (X^T X of calibration inputs) -> (packed, scales) in
    model/quant.py's int4 format, rounded by GPTQ; ``search``: each group's scale by
    int4_search_scales' clip search (diag H weighted) on the updated weights.
    ``act_order``: columns in order of decreasing diag(H), with every group's scale
    chosen up front from the original weights ("static groups"), since the format's
    groups are runs of consecutive columns. ``rounder``: _gptq's."""
    check_group(group)
    n, k = w.shape
    kp = -(-k // group) * group
    wp = torch.nn.functional.pad(w.detach().float(), (0, kp - k))
    hp = torch.zeros(kp, kp, dtype=torch.float64, device=w.device)
    hp[:k, :k] = h.double()
    hd = torch.diag(hp).float()
    grid = CLIP_GRID if search else (1.0,)
    if act_order:  # static groups: every scale now, from the original weights
        scales = _group_scales(wp.view(n, -1, group), hd.view(1, -1, group) if search else None, qmin, grid)
        per_weight, order, on_block, block = scales.float().repeat_interleave(group, dim=1), torch.argsort(hd, descending=True), None, 128
    else:
        scales = torch.zeros(n, kp // group, dtype=torch.bfloat16, device=w.device)
        per_weight, order, block = torch.ones(n, kp, device=w.device), None, max(128, group)

        def on_block(i1: int, w1: torch.Tensor) -> None:  # blocks are whole groups: choose their scales
            g0 = i1 // group
            wg = w1.float().view(n, -1, group)
            d = hd[i1 : i1 + w1.shape[1]].view(1, -1, group) if search else None
            scales[:, g0 : g0 + wg.shape[1]] = _group_scales(wg, d, qmin, grid)
            per_weight[:, i1 : i1 + w1.shape[1]] = scales[:, g0 : g0 + wg.shape[1]].float().repeat_interleave(group, dim=1)

    deq = _gptq(wp, hp, per_weight, qmin, on_block, block=block, damp=damp, order=order, rounder=rounder)
    codes = torch.round(deq / per_weight).to(torch.int8)  # exact: deq is q * scale (per_weight: every column's, filled)
    return pack_int4(codes), scales


def gptq_fp8(w: torch.Tensor, h: torch.Tensor, damp: float = 0.01, act_order: bool = True,
             rounder=None) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K], h [K, K] -> (q float8_e4m3fn [N, K], scale float32 [N]) in model/fp8.py's
    format (the same amax / 448 scales), rounded by GPTQ; ``act_order``: columns in
    order of decreasing diag(H) (free here: the scale is per row). ``rounder``: _gptq's."""
    wf = w.detach().float()
    scale = (wf.abs().amax(dim=1) / E4M3_MAX).clamp_(min=TINY)  # [N]
    order = torch.argsort(torch.diag(h), descending=True) if act_order else None
    deq = _gptq(wf, h, scale, None, damp=damp, order=order, rounder=rounder)
    q = (deq / scale[:, None]).clamp_(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)  # exact: deq is q * scale
    return q.contiguous(), scale


AWQ_GRID = tuple(i / 20 for i in range(21))  # alpha 0 .. 1


def awq_scales(w: torch.Tensor, h: torch.Tensor, group: int = 128, grid=AWQ_GRID) -> torch.Tensor:
    """AWQ's input-channel scales (Lin et al. 2023), searched against the Hessian: s =
    rms(x_j) ** alpha (rms from diag H), alpha on ``grid``, the one whose round-to-nearest
    int4 of W diag(s), scaled back, gives the least output error tr(E H E^T) on the
    calibration inputs. [K] float32, mean-normalised; alpha 0 (all ones) is among them, so
    the result never loses to plain rounding on that error. Using s needs x / s at run
    time: folded into the op before the layer (a norm's weight, the rows that produce its input)."""
    wf, hd = w.detach().float(), h.double()
    rms = torch.diag(hd).clamp(min=1e-12).sqrt().float()
    best, best_s = None, torch.ones_like(rms)
    for a in grid:
        sc = rms ** a
        sc = sc / sc.mean()
        deq = dequantize(QuantizedWeight(QuantFormat.INT4, *quantize_int4(wf * sc, group), *wf.shape, group)) / sc
        e = (wf - deq).double()
        err = float(((e @ hd) * e).sum())
        if best is None or err < best:
            best, best_s = err, sc
    return best_s


class Rounding(Enum):
    """How calibrated int4 weights are chosen."""

    GPTQ = "gptq"  # GPTQ in activation order, static groups with the activation-weighted clip search
    SEARCH = "search"  # the clip search alone, rounded to nearest


def calibrated_weight(w: torch.Tensor, h: torch.Tensor, fmt: QuantFormat, group: int = 128,
                      method: Rounding = Rounding.GPTQ, qmin: int = -8) -> QuantizedWeight:
    """One linear's weight w [N, K] with its input Hessian h [K, K] -> its QuantizedWeight,
    on w's device. int4: ``method`` picks the rounding (``Rounding``; GPTQ in activation
    order is the best measured: x1.10 of float32 perplexity at group 128 calibrated on
    the plays, x1.19 on self-generated text, against x1.215 for the search alone and
    x1.55 rounded to nearest, bench/results/quant_quality_cpu_gptq_*.json); fp8: GPTQ
    (its scales are amax / 448 either way)."""
    method = Rounding(method)  # a plain "gptq" / "search" too; anything else: ValueError
    w, h = w.detach().float(), h.to(w.device)
    n, k = w.shape
    if fmt is QuantFormat.FP8:
        q, s = gptq_fp8(w, h)
        return QuantizedWeight(fmt, q, s, n, k, k)
    if fmt is QuantFormat.INT4:
        p, s = (gptq_int4(w, h, group, qmin, act_order=True) if method is Rounding.GPTQ
                else int4_search_scales(w, group, torch.diag(h), qmin))
        return QuantizedWeight(fmt, p, s, n, k, group)
    raise ValueError(f"calibrated weights are int4 or fp8, not {fmt.value} (int8 is within 0.2% rounded to nearest)")


def calibrated_weights(model: torch.nn.Module, hessians: dict[str, torch.Tensor], fmt: QuantFormat, group: int = 128,
                       method: Rounding = Rounding.GPTQ, qmin: int = -8) -> dict[str, QuantizedWeight]:
    """Qualified layer name -> ``calibrated_weight`` for every linear that has a Hessian
    (model/calibrate.collect_hessians), for quantize_linears / quantize_fp8_linears'
    ``weights``."""
    method = Rounding(method)
    return {name: calibrated_weight(mod.weight, hessians[name], fmt, group, method, qmin)
            for name, mod in model.named_modules() if name in hessians and isinstance(mod, torch.nn.Linear)}
