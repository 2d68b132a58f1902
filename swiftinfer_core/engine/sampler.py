"""Sampling: greedy, temperature, top-k, top-p, with optional per-request seeds."""

from __future__ import annotations

import torch

from swiftinfer_core.config import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """logits [R, V] float32 -> one token id per row. One host sync for the batch."""
    out = torch.argmax(logits, dim=-1)
    for i, p in enumerate(params):
        if p.greedy:
            continue
        # float64 and max-subtracted: a tiny temperature must not turn logits into inf/nan
        row = logits[i].double()
        row = (row - row.max()) / p.temperature
        if p.top_k:
            kth = torch.topk(row, min(p.top_k, row.numel())).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
            continue  # degenerate distribution (e.g. temperature ~1e-300): the argmax already chosen
        if p.top_p < 1.0:
            sorted_p, idx = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            drop = (sorted_p.cumsum(0) - sorted_p) >= p.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
        gen = generators[i]
        if gen is not None and gen.device != probs.device:
            pick = torch.multinomial(probs.cpu(), 1, generator=gen).to(probs.device)
        else:
            pick = torch.multinomial(probs, 1, generator=gen)
        out[i] = pick[0]
    return out.tolist()
