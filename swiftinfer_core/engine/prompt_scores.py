"""Prompt logprobs (``/v1/completions`` with ``echo``): each input token's
log-probability given everything before it in the cache, scored while the
prompt is prefilled.

A prefill chunk of a scored turn asks the model for the logits of every one of
its positions (not only the last): position ``q`` of the chunk predicts input
token ``q + 1``, and a chunk's last position predicts the next chunk's first
token, so a prompt split over several steps is scored whole. The final chunk's
last position predicts the first output token: that row is the sampler's. A
prompt longer than the cache is scored with the StreamingLLM cache as it rolls
(sinks + window), the same as ``eval-ppl``. The input's first token has no
score when nothing precedes it in the cache.

Log-probabilities are ``log_softmax`` of the raw logits (no penalties: those
shape sampling, not the prompt), read back in one copy per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swiftinfer_core.engine.sampler import TokenLogprobs, finite_logprobs


@dataclass
class ScoreRows:
    """The extra logits rows of one scored prefill chunk: flat rows of the step's
    input, and the input token each one predicts."""

    seq: int  # index in the batch
    rows: list[int]
    targets: list[int]
    top: int


def rows_for(seq_index: int, turn, token_ids: list[int], offset: int, sample: bool) -> ScoreRows | None:
    """``offset``: flat row of ``token_ids[0]`` in the step's input."""
    k = turn.params.prompt_logprobs
    if k is None:
        return None
    fed = turn.prefilled  # tokens of turn.to_feed before this chunk
    n = len(token_ids) - (1 if sample else 0)  # the final chunk's last row is the sampler's
    targets = turn.to_feed[fed + 1 : fed + 1 + n]
    return ScoreRows(seq_index, [offset + q for q in range(len(targets))], targets, k)


def score(logits: torch.Tensor, parts: list[ScoreRows]) -> dict[int, list[TokenLogprobs]]:
    """logits [sum of rows, V] in the order of ``parts`` -> seq index -> its TokenLogprobs."""
    targets = torch.tensor([t for p in parts for t in p.targets], dtype=torch.long, device=logits.device)
    lp = torch.log_softmax(logits.float(), dim=-1)  # [S, V]
    chosen = finite_logprobs(lp.gather(1, targets[:, None])).flatten()
    k = max(p.top for p in parts)
    packed = [chosen]
    if k:
        top_v, top_i = lp.topk(k, dim=-1)
        packed += [finite_logprobs(top_v).flatten(), top_i.double().flatten()]
    flat = torch.cat(packed).tolist()
    S = targets.shape[0]
    out: dict[int, list[TokenLogprobs]] = {}
    j = 0
    for p in parts:
        items = []
        for t in p.targets:
            top = [(int(flat[S + S * k + j * k + m]), flat[S + j * k + m]) for m in range(p.top)]
            items.append(TokenLogprobs(t, flat[j], top))
            j += 1
        out[p.seq] = items
    return out
