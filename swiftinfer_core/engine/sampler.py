"""Sampling: greedy, temperature, top-k, top-p, with per-turn seeded draws.

Sampled rows are drawn together on the logits' device, a few vectorised
passes per group of rows that keep the same number of candidates, with one
small copy in (a uniform per row) and one copy out (the token ids): a step
pays one host sync whatever its batch size. The randomness is one uniform per
row from that turn's own CPU generator, and how a row is drawn depends only on
its own parameters, so a turn's draws depend only on its seed and its logits,
never on which other turns share the step or on the device.

A row is drawn by inverse CDF: the first candidate whose cumulative kept mass
exceeds ``u * kept mass``. Candidates are the whole vocabulary in vocabulary
order when nothing is truncated (temperature alone: no sort at all), else the
``top_k`` (or, for top-p alone, all) tokens in descending probability.
"""

from __future__ import annotations

import torch

from swiftinfer_core.config import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """logits [R, V] float32 -> one token id per row."""
    out = torch.argmax(logits, dim=-1)
    vocab = logits.shape[-1]
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(params):
        if not p.greedy:
            groups.setdefault(candidates(p, vocab), []).append(i)
    dev = logits.device
    for count, rows in groups.items():
        idx = torch.tensor(rows, dtype=torch.long, device=dev)
        temp = torch.tensor([params[i].temperature for i in rows], dtype=torch.float64, device=dev)
        top_p = torch.tensor([params[i].top_p for i in rows], dtype=torch.float64, device=dev)
        u = torch.tensor([_uniform(generators[i]) for i in rows], dtype=torch.float64, device=dev)
        out[idx] = draw(logits.index_select(0, idx), temp, top_p, u, count, out[idx])
    return out.tolist()


def candidates(p: SamplingParams, vocab: int) -> int:
    """0: no truncation (every token, vocabulary order); else how many of the most
    likely tokens a row may keep (top-k, or the whole vocabulary for top-p)."""
    if 0 < p.top_k < vocab:
        return p.top_k
    return vocab if p.top_p < 1.0 else 0


def _uniform(gen: torch.Generator | None) -> float:
    return float(torch.rand((), dtype=torch.float64, generator=gen))


def draw(logits: torch.Tensor, temp: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor, count: int,
         fallback: torch.Tensor) -> torch.Tensor:
    """logits [S, V]; temp, top_p, u [S] float64; ``count`` as from ``candidates``
    -> ids [S]. ``fallback`` (the argmax) stands for a degenerate distribution."""
    # float64 and max-subtracted: a tiny temperature must not turn logits into inf/nan
    x = logits.double()
    x = (x - x.max(dim=-1, keepdim=True).values) / temp[:, None]
    probs = torch.softmax(x, dim=-1)
    order = None
    kept = probs
    if count:
        kept, order = torch.topk(probs, count, dim=-1) if count < probs.shape[-1] else torch.sort(probs, dim=-1, descending=True)
        # top-p on what top-k kept, renormalised: the smallest prefix whose mass
        # reaches top_p (always at least one token)
        cdf = kept.cumsum(dim=-1)
        before = (cdf - kept) / cdf[:, -1:]
        first = torch.arange(kept.shape[-1], device=kept.device)[None, :] == 0
        kept = torch.where((top_p[:, None] >= 1.0) | (before < top_p[:, None]) | first, kept, torch.zeros_like(kept))
    cdf = kept.cumsum(dim=-1)
    total = cdf[:, -1]
    pos = torch.searchsorted(cdf, (u * total)[:, None], right=True).clamp_(max=kept.shape[-1] - 1)
    picks = (pos if order is None else order.gather(1, pos)).squeeze(1)
    ok = torch.isfinite(probs).all(dim=-1) & (total > 0)  # e.g. temperature ~1e-300: the argmax already chosen
    return torch.where(ok, picks, fallback)
