"""Runs one scheduled batch through a ModelRunner and samples: ScheduledBatch in, token ids out.

The runner (runner/model_runner.py, or parallel/tp_runner.py over several ranks)
only computes logits; this is where the engine's batch meets it: which rows
replay a decode graph, which run eagerly, prompt scores, penalties, sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from swiftinfer_core.engine.penalties import RowAdjust
from swiftinfer_core.engine.prompt_scores import rows_for, score
from swiftinfer_core.engine.sampler import Drawn, TokenLogprobs, sample_launch
from swiftinfer_core.engine.scheduler import ScheduledBatch, ScheduledSeq
from swiftinfer_core.engine.session import TurnState
from swiftinfer_core.runner.model_runner import ModelRunner


class StepPath(str, Enum):
    """How a step ran (the last one: ``BatchRunner.path``; engine/step_trace.py records it)."""

    GRAPH = "graph"  # decode rows only, one CUDA graph replay
    SPLIT = "split"  # decode graph + an eager pass for the chunks (split_mixed_steps)
    PIECEWISE = "piecewise"  # graphs between attention calls (runner/piecewise.py)
    EAGER = "eager"  # one eager forward (CPU, no graphs, or a step past the piecewise buckets)


@dataclass
class LaunchedStep:
    """A step whose draws may still be on the device (``BatchRunner.launch``)."""

    seqs: int
    order: list[int]  # sequence index of each sampled row
    drawn: Drawn | None
    scores: dict[int, list[TokenLogprobs]]  # read already (a step with scored prefill chunks syncs early)

    def wait(self) -> tuple[list[int | None], list[TokenLogprobs | None], dict[int, list[TokenLogprobs]]]:
        out: list[int | None] = [None] * self.seqs
        lps: list[TokenLogprobs | None] = [None] * self.seqs
        if self.drawn is not None:
            toks, probs = self.drawn.read()
            for i, tok, lp in zip(self.order, toks, probs):
                out[i], lps[i] = tok, lp
        return out, lps, self.scores


class BatchRunner:
    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.path = StepPath.EAGER

    def run(self, batch: ScheduledBatch) -> tuple[list[int | None], list[TokenLogprobs | None], dict[int, list[TokenLogprobs]]]:
        """Sampled token per sequence (None where a prefill chunk ends mid-input),
        its logprobs where the turn asked for them, and the input tokens' logprobs
        of scored prefill chunks by sequence index (prompt_scores.py)."""
        return self.launch(batch).wait()

    def launch(self, batch: ScheduledBatch) -> "LaunchedStep":
        """``run``'s work queued on the device; ``wait`` reads its results back.

        A pure decode step replays its CUDA graph. A mixed step (with steady
        arrivals, nearly every step admits a turn) is one forward with the decode
        rows first, through the piecewise graphs where its token count fits them
        (else eagerly): the attention plan sends the decode rows through the decode
        kernel and the chunks through the prefill kernel (kernels/attention.py,
        MixedPlan), so the step reads the weights once (a graph for the decode rows
        plus an eager pass for the chunks, ``split_mixed``, read them twice)."""
        seqs = batch.seqs
        decode = [i for i, s in enumerate(seqs) if s.decode]
        taken = set(decode)
        rest = [i for i in range(len(seqs)) if i not in taken]
        if self.runner.graphs is not None and decode and self.runner.graphs.fits(len(decode)) and (not rest or self.runner.split_mixed):
            parts = [self._graph(seqs, decode)] + ([self._eager(seqs, rest)] if rest else [])
            self.path = StepPath.SPLIT if rest else StepPath.GRAPH
        else:
            parts = [self._eager(seqs, decode + rest)]
            self.path = StepPath.PIECEWISE if self.runner.runs_piecewise(batch.num_tokens) else StepPath.EAGER
        order = [i for idx, _, _ in parts for i in idx]
        logits = parts[0][1] if len(parts) == 1 else torch.cat([lg for _, lg, _ in parts])
        scores = {i: sc for _, _, part in parts for i, sc in part.items()}
        drawn = None
        if order:
            turns = [seqs[i].turn for i in order]
            rows = adjust_rows([seqs[i] for i in order])
            grammars = [t.grammar for t in turns] if any(t.grammar is not None for t in turns) else None
            drawn = sample_launch(logits, [t.params for t in turns], [t.generator for t in turns], rows, grammars)
        return LaunchedStep(len(seqs), order, drawn, scores)

    def _graph(self, seqs: list[ScheduledSeq], idx: list[int]) -> tuple[list[int], torch.Tensor, dict]:
        """(sampled sequence indices, logits [len(idx), V], no prompt scores) of decode rows, by graph replay."""
        picked = [seqs[i] for i in idx]
        logits = self.runner.graphs.run([s.token_ids[0] for s in picked], [s.turn.session.slot for s in picked], [s.start for s in picked])
        return idx, logits, {}

    def _eager(self, seqs: list[ScheduledSeq], idx) -> tuple[list[int], torch.Tensor | None, dict]:
        """(sampled sequence indices, their logits, prompt scores by sequence index)
        of ``seqs[idx]`` in one eager forward. Scored prefill chunks (prompt_scores.py)
        add rows after the sampled ones."""
        ids, rows, sampled, scored, offset = [], [], [], [], 0
        for i in idx:
            s = seqs[i]
            if s.turn.state is TurnState.PREFILL:
                part = rows_for(i, s.turn, s.token_ids, offset, s.sample)
                if part is not None and part.rows:
                    scored.append(part)
            ids.extend(s.token_ids)
            offset += len(s.token_ids)
            if s.sample:
                rows.append(offset - 1)
                sampled.append(i)
        picked = [seqs[i] for i in idx]
        extra = [r for p in scored for r in p.rows]
        logits = self.runner.forward(ids, [s.turn.session.slot for s in picked], [s.start for s in picked],
                              [len(s.token_ids) for s in picked], rows + extra)
        if not scored:
            return sampled, logits, {}
        return sampled, logits[: len(rows)], score(logits[len(rows) :], scored)


def adjust_rows(seqs: list[ScheduledSeq]) -> list[RowAdjust | None] | None:
    """Per sampled row, what penalties.adjust needs; None when no row needs anything
    (the common step: no per-row work at all). A penalised turn's visible-token
    counts advance by the tokens this step writes (``seq.token_ids``)."""
    if not any(s.turn.adjusts for s in seqs):
        return None
    rows: list[RowAdjust | None] = []
    for s in seqs:
        t = s.turn
        if not t.adjusts:
            rows.append(None)
            continue
        row = RowAdjust()
        if t.visible is not None:
            sess = t.session
            t.visible.advance(sess.sink_ids, sess.window_ids, sess.layout.window, s.token_ids)
            row.counts = t.visible.counts
        if len(t.output_ids) < t.params.min_tokens:
            row.ban = t.min_tokens_ban
        rows.append(row)
    return rows
