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

Before any of that, ``penalties.adjust`` applies the rows' penalties, logit
bias and min_tokens mask, then ``grammar.mask_logits`` the structured-output
rows' token masks (nothing at all for a step without them), so greedy rows
take the argmax of the adjusted logits too. Log-probabilities, for rows
that ask, are ``log_softmax`` of those adjusted (and masked) logits at temperature 1, before
top-k/top-p: the model's distribution as the sampler shaped it with the
request's penalties and bias, but the same at any temperature (as OpenAI's, and
defined for greedy rows, where the sampled distribution is one-hot). They ride
the same host copy as the token ids: still one sync per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swiftinfer_core.config import SamplingParams
from swiftinfer_core.engine.grammar import GrammarState, mask_logits
from swiftinfer_core.engine.penalties import RowAdjust, adjust

LOGPROB_FLOOR = -9999.0  # stands for -inf in logprobs


@dataclass
class TokenLogprobs:
    """One sampled position: the sampled token's log-probability and the
    ``top_logprobs`` most likely tokens, most likely first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, log-probability)


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[Uniforms | torch.Generator | None],
           extras: list[RowAdjust | None] | None = None) -> list[int]:
    return sample_step(logits, params, generators, extras)[0]


def sample_step(logits: torch.Tensor, params: list[SamplingParams], generators: list[Uniforms | torch.Generator | None],
                extras: list[RowAdjust | None] | None = None, grammars: list[GrammarState | None] | None = None
                ) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits [R, V] float32 -> (token id per row, its TokenLogprobs where asked, else None)."""
    return sample_launch(logits, params, generators, extras, grammars).read()


@dataclass
class Drawn:
    """A step's draws still on the device; ``read`` is the step's one copy to the host
    (and its sync), so a caller can do host work while the device finishes."""

    flat: torch.Tensor  # the ids [R] alone, or [R ids | L chosen logprobs | L*k top logprobs | L*k top ids] float64
    want: list[int]  # rows with logprobs
    tops: list[int]  # their top_logprobs

    def read(self) -> tuple[list[int], list[TokenLogprobs | None]]:
        flat = self.flat.tolist()
        if not self.want:
            return flat, [None] * len(flat)
        L, k = len(self.want), max(self.tops)
        R = len(flat) - L * (1 + 2 * k)  # the layout _with_logprobs packs
        ids = [int(x) for x in flat[:R]]
        res: list[TokenLogprobs | None] = [None] * R
        for j, i in enumerate(self.want):
            base_v, base_i = R + L + j * k, R + L + L * k + j * k
            top = [(int(flat[base_i + m]), flat[base_v + m]) for m in range(self.tops[j])]
            res[i] = TokenLogprobs(ids[i], flat[R + j], top)
        return ids, res


def sample_launch(logits: torch.Tensor, params: list[SamplingParams], generators: list[Uniforms | torch.Generator | None],
                  extras: list[RowAdjust | None] | None = None, grammars: list[GrammarState | None] | None = None) -> Drawn:
    """``sample_step``'s device work, queued: ``extras``: per row, what penalties.adjust
    needs (None: no row needs anything); ``grammars``: per row, its structured-output
    state (None: no row is constrained)."""
    given = logits
    if extras is not None:
        logits = adjust(logits, params, extras)
    if grammars is not None:
        rows = [i for i, g in enumerate(grammars) if g is not None]
        if rows:  # in place only on a tensor adjust already copied (never the caller's, maybe a graph's buffer)
            logits = mask_logits(logits, rows, [grammars[i] for i in rows], inplace=logits is not given)
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
    want = [i for i, p in enumerate(params) if p.logprobs]
    if not want:
        return Drawn(out, [], [])
    tops = [params[i].top_logprobs for i in want]
    return Drawn(_with_logprobs(logits, out, want, max(tops)), want, tops)


def finite_logprobs(lp: torch.Tensor) -> torch.Tensor:
    """-inf (a masked token) and nan as -9999.0, as vLLM: JSON has no infinities."""
    return torch.nan_to_num(lp.double(), nan=LOGPROB_FLOOR, neginf=LOGPROB_FLOOR, posinf=0.0)


def _with_logprobs(logits: torch.Tensor, out: torch.Tensor, want: list[int], k: int) -> torch.Tensor:
    """The ids and the logprobs of rows ``want`` packed for one copy (``Drawn.read``):
    [R ids | L chosen logprobs | L*k top logprobs | L*k top ids] as float64 (token ids
    are exact in float64)."""
    idx = torch.tensor(want, dtype=torch.long, device=logits.device)
    lp = torch.log_softmax(logits.index_select(0, idx).float(), dim=-1)  # [L, V]
    chosen = lp.gather(1, out.index_select(0, idx)[:, None])  # [L, 1]
    parts = [out.double(), finite_logprobs(chosen).flatten()]
    if k:
        top_v, top_i = lp.topk(k, dim=-1)  # [L, k], most likely first
        parts += [finite_logprobs(top_v).flatten(), top_i.double().flatten()]
    return torch.cat(parts)


def candidates(p: SamplingParams, vocab: int) -> int:
    """0: no truncation (every token, vocabulary order); else how many of the most
    likely tokens a row may keep (top-k, or the whole vocabulary for top-p)."""
    if 0 < p.top_k < vocab:
        return p.top_k
    return vocab if p.top_p < 1.0 else 0


class Uniforms:
    """A turn's uniform draws in [0, 1): its CPU generator's float64 stream taken
    ``BLOCK`` at a time. A CPU generator fills a block element by element, so these
    are the numbers, in the order, of one ``torch.rand`` call per draw, for 1/BLOCK
    of the calls (one call per sampled row was ~0.3 ms of a 128-row step's host time)."""

    BLOCK = 64

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator
        self._buf: list[float] = []
        self._at = 0

    def next(self) -> float:
        if self._at == len(self._buf):
            self._buf = torch.rand(self.BLOCK, dtype=torch.float64, generator=self.generator).tolist()
            self._at = 0
        self._at += 1
        return self._buf[self._at - 1]


def _uniform(gen: Uniforms | torch.Generator | None) -> float:
    if isinstance(gen, Uniforms):
        return gen.next()
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
