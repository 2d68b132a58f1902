"""Rotary embedding (HF Llama "rotate_half" convention), computed from positions
on the fly so that any, even negative, position is exact in float32."""

from __future__ import annotations

import torch


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None, max_position: int = 4096, capacity: int = 0) -> torch.Tensor:
    """[head_dim/2] float32 inverse frequencies of a full rotary (model/rope_scaling.py
    has every rope type; their attention factor is not applied here)."""
    from swiftinfer_core.model.rope_scaling import RopeParams, rope_frequencies

    return rope_frequencies(RopeParams.from_hf(scaling, theta), head_dim, max_position, capacity)[0]


def rotate(x: torch.Tensor, pos: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x: [N, H, D]; pos: [N] (any integer, may be negative); returns x rotated, in x's dtype."""
    ang = pos.to(torch.float32)[:, None] * freqs.to(x.device)[None, :]  # [N, D/2]
    cos = torch.cat([ang.cos(), ang.cos()], dim=-1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], dim=-1)[:, None, :]
    xf = x.float()
    half = x.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rot * sin).to(x.dtype)
