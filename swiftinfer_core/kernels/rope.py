"""Rotary embedding (HF Llama "rotate_half" convention), computed from positions
on the fly so that any, even negative, position is exact in float32."""

from __future__ import annotations

import math

import torch


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """[head_dim/2] float32 inverse frequencies, with Llama-3 style scaling if given."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / freqs
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, freqs / factor, freqs)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        freqs = torch.where(mid, (1 - smooth) * freqs / factor + smooth * freqs, scaled)
    elif scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise NotImplementedError(f"rope scaling {scaling} is not supported")
    return freqs.float()


def rotate(x: torch.Tensor, pos: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x: [N, H, D]; pos: [N] (any integer, may be negative); returns x rotated, in x's dtype."""
    ang = pos.to(torch.float32)[:, None] * freqs.to(x.device)[None, :]  # [N, D/2]
    cos = torch.cat([ang.cos(), ang.cos()], dim=-1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], dim=-1)[:, None, :]
    xf = x.float()
    half = x.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rot * sin).to(x.dtype)
