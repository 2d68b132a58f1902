"""Activation smoothing for FP8 with e4m3 activations (SmoothQuant, Xiao et al. 2023).

_scaled_mm rounds each activation row to e4m3 over the row's own amax, so a few
large input channels set every row's scale and the small channels lose their bits.
Smoothing divides input channel j by s_j and multiplies the weight's column j by
s_j: the product is unchanged, and with s_j = amax_x[j]^alpha / amax_w[j]^(1 - alpha)
both operands are closer to flat across channels. The division is folded into what
produces the input, so no kernel changes and no op is added:

  wqkv  input rmsnorm(x) * attn_norm.weight    -> attn_norm.weight / s
  w13   input rmsnorm(h) * mlp_norm.weight     -> mlp_norm.weight / s
  w2    input silu(gate) * up                  -> up's rows of w13 / s
  wo    input softmax(qk) v per query head h   -> v's rows of wqkv (and bias) / t[g(h)]:
        query heads of one KV group share that group's v, so their channels take one
        scale, t[g, j] from the group's largest amax_x[h, j] and amax_w[h, j]

Exact in real arithmetic; in bf16 the folded norm and v weights round once more.
The statistics are each linear's input amax per channel over calibration text
(runner/calibration.py; the same pass as GPTQ's Hessians, which are rescaled to
match: H' = diag(1/s) H diag(1/s)).
"""

from __future__ import annotations

import torch

from swiftinfer_core.model.layers import RMSNorm

EPS = 1e-5  # floor of both amaxes: a channel never seen (or an all-zero column) keeps a finite scale
SMOOTHED = ("wqkv", "wo", "w13", "w2")  # a Block's linears, each smoothed at its input


def _migrate(ax: torch.Tensor, aw: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = amax_x^alpha / amax_w^(1 - alpha), both floored at EPS (float32)."""
    return ax.float().clamp(min=EPS).pow(alpha) / aw.float().clamp(min=EPS).pow(1.0 - alpha)


def scales(amax_x: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per input channel s [K] (float32) for a weight [N, K] whose input's amax per channel is ``amax_x`` [K]."""
    return _migrate(amax_x, weight.detach().abs().amax(0), alpha)


def _group_scales(amax_o: torch.Tensor, wo: torch.Tensor, hq: int, hkv: int, d: int, alpha: float) -> torch.Tensor:
    """wo's input scales, one per (KV group, channel): [hkv, d] (see the module doc)."""
    ax = amax_o.float().view(hkv, hq // hkv, d).amax(1)
    aw = wo.detach().float().abs().amax(0).view(hkv, hq // hkv, d).amax(1)
    return _migrate(ax, aw, alpha)


@torch.no_grad()
def smooth_block(block, amax: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Fold smoothing scales into one model/llama.Block in place. ``amax``: "wqkv", "wo", "w13",
    "w2" -> that linear's input amax per channel [K]. Returns each linear's scales [K] by which
    its input was divided (for rescaling Hessians gathered before)."""
    if not isinstance(block.attn_norm, RMSNorm) or not isinstance(block.mlp_norm, RMSNorm):
        raise ValueError(f"smoothing folds into Llama's RMSNorm, not {type(block.attn_norm).__name__}")
    hq, hkv, d = block.hq, block.hkv, block.head_dim
    inter = block.w2.in_features
    s = {"wqkv": scales(amax["wqkv"], block.wqkv.weight, alpha), "w13": scales(amax["w13"], block.w13.weight, alpha),
         "w2": scales(amax["w2"], block.w2.weight, alpha)}
    t = _group_scales(amax["wo"], block.wo.weight, hq, hkv, d, alpha)  # [hkv, d]
    s["wo"] = t.repeat_interleave(hq // hkv, dim=0).reshape(-1)  # [hq * d]: query head h takes its group's
    _scale(block.attn_norm.weight, 1 / s["wqkv"])
    _scale(block.wqkv.weight, s["wqkv"][None, :])
    v_rows = slice((hq + hkv) * d, (hq + 2 * hkv) * d)
    _scale(block.wqkv.weight[v_rows], 1 / t.reshape(-1)[:, None])
    if block.wqkv.bias is not None:
        _scale(block.wqkv.bias[v_rows], 1 / t.reshape(-1))
    _scale(block.wo.weight, s["wo"][None, :])
    _scale(block.mlp_norm.weight, 1 / s["w13"])
    _scale(block.w13.weight, s["w13"][None, :])
    _scale(block.w13.weight[inter:], 1 / s["w2"][:, None])  # up's rows: silu(gate) * up / s
    _scale(block.w2.weight, s["w2"][None, :])
    return s


def _scale(p: torch.Tensor, by: torch.Tensor) -> None:
    """p *= by, computed in float32 and rounded once to p's dtype."""
    p.copy_((p.float() * by.to(p.device)).to(p.dtype))
