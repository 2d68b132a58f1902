"""Logit adjustments before sampling: repetition penalties, logit bias, min_tokens.

What a penalty looks at: the tokens the conversation's cache can see at the
step that samples, i.e. the sinks, the rolling window (earlier rounds, this
turn's input) and this turn's output so far. A token evicted from the window
no longer counts; a token the model still attends to does. Cheaper than the
whole history and the same notion of "the text so far" as the model's own.

For a row with counts ``c[t]`` of visible token ``t`` (float64 reference in
tests/engine/test_penalties.py):

- ``frequency_penalty`` f, ``presence_penalty`` p (OpenAI):
  ``l[t] -= f * c[t] + p * (c[t] > 0)``
- ``repetition_penalty`` r (extension, CTRL / Hugging Face): for ``c[t] > 0``,
  ``l[t] = l[t] / r`` if ``l[t] > 0`` else ``l[t] * r``
- ``logit_bias`` (OpenAI): ``l[t] += bias[t]`` on every step
- ``min_tokens``: while the turn has produced fewer, the end tokens are -inf.

Repetition first, then frequency/presence, then bias, then the min_tokens mask.
All rows are adjusted together on the logits' device: one host-to-device copy
of the rows' (row, token, count) triples and a few dense [R, V] passes over
the adjusted rows only. A step where no row asks for any of it returns the
logits untouched (no copy, no launch).
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

import torch

from swiftinfer_core.config import SamplingParams


class VisibleTokens:
    """Counts of the token ids a conversation's cache holds, kept step by step.

    ``advance(sink_ids, window_ids, window, ids)`` is called before the model's
    write of ``ids`` is recorded in the session (``Session.fed`` runs after
    sampling), with the session's sinks and window as they are then; it mirrors
    what ``fed`` will do: ids fill the free sink rows first, then roll the window.
    """

    def __init__(self, sinks: int):
        self.sinks = sinks
        self.counts: Counter[int] | None = None  # None until the first sampled step

    def advance(self, sink_ids: list[int], window_ids, window: int, ids: list[int]) -> None:
        free = max(0, self.sinks - len(sink_ids))
        to_sinks, to_window = ids[:free], ids[free:]
        if self.counts is None or len(to_window) > window:  # first step (or a chunk longer than the window)
            tail = (list(window_ids) + to_window)[-window:]
            self.counts = Counter(sink_ids) + Counter(to_sinks) + Counter(tail)
            return
        c = self.counts
        c.update(to_sinks)
        drop = len(window_ids) + len(to_window) - window  # evicted by this write, oldest first
        for i in range(max(0, drop)):
            t = window_ids[i]
            c[t] -= 1
            if c[t] == 0:
                del c[t]
        c.update(to_window)


@dataclass
class RowAdjust:
    """What one sampled row needs besides its SamplingParams (None: nothing)."""

    counts: Counter | None = None  # visible token -> count, for penalised rows
    ban: list[int] = field(default_factory=list)  # ids masked to -inf at this step (min_tokens)


def needs_counts(p: SamplingParams) -> bool:
    return p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0


def adjust(logits: torch.Tensor, params: list[SamplingParams], rows: list[RowAdjust | None]) -> torch.Tensor:
    """logits [R, V] float32 -> logits with every row's adjustments (a new tensor
    when any applies: the input may be a CUDA graph's output buffer)."""
    todo = [i for i, (p, a) in enumerate(zip(params, rows)) if a is not None and (a.counts or a.ban or p.logit_bias)]
    if not todo:
        return logits
    dev, vocab = logits.device, logits.shape[-1]
    out = logits.clone()
    pen = [i for i in todo if rows[i].counts and needs_counts(params[i])]
    if pen:
        # the rows' (token, count) pairs, flat, filled at C speed (array.extend over dict views)
        t_ids, cnts, lens = array("q"), array("f"), []
        for i in pen:
            c = rows[i].counts
            t_ids.extend(c.keys())
            cnts.extend(c.values())
            lens.append(len(c))
        idx = torch.tensor(pen, dtype=torch.long, device=dev)
        coef = torch.tensor([[params[i].frequency_penalty, params[i].presence_penalty, params[i].repetition_penalty] for i in pen],
                            dtype=torch.float32, device=dev)  # [P, 3]
        r_ids = torch.repeat_interleave(torch.arange(len(pen)), torch.tensor(lens))  # [N] row of each pair
        count = torch.zeros(len(pen), vocab, dtype=torch.float32, device=dev)  # [P, V]
        count.index_put_((r_ids.to(dev), torch.frombuffer(t_ids, dtype=torch.int64).to(dev)),
                         torch.frombuffer(cnts, dtype=torch.float32).to(dev), accumulate=True)
        x = out.index_select(0, idx)
        seen = count > 0
        rep = coef[:, 2:3]
        x = torch.where(seen, torch.where(x > 0, x / rep, x * rep), x)
        x = x - coef[:, 0:1] * count - coef[:, 1:2] * seen.float()
        out.index_copy_(0, idx, x)
    rows_b, toks_b, vals_b = [], [], []
    for i in todo:
        for tok, val in (params[i].logit_bias or {}).items():
            rows_b.append(i)
            toks_b.append(tok)
            vals_b.append(val)
    if rows_b:
        out.index_put_((torch.tensor(rows_b, device=dev), torch.tensor(toks_b, device=dev)),
                       torch.tensor(vals_b, dtype=out.dtype, device=dev), accumulate=True)
    banned = [(i, t) for i in todo for t in rows[i].ban]
    if banned:
        r, t = zip(*banned)
        out[torch.tensor(r, device=dev), torch.tensor(t, device=dev)] = float("-inf")
    return out
