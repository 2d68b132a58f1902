"""Next-token perplexity over a long text in the paper's four modes.

- dense: every token attends to all before it (a cache as long as the text);
- window: the last ``sinks + window`` tokens only, no sinks (positions in cache);
- streaming: StreamingLLM, ``sinks`` + ``window``;
- recompute: for each token, a fresh forward over the last ``sinks + window``
  tokens at positions 0.. (sliding window with re-computation); optionally on
  every ``stride``-th token only, since it costs a full window per token.

Streaming, window and dense run as chunked prefill through the engine's own
model and cache, which equals feeding one token at a time (tested).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.engine.engine_model import EngineModel, relayout


class Mode(str, Enum):
    DENSE = "dense"
    WINDOW = "window"
    STREAMING = "streaming"
    RECOMPUTE = "recompute"


@dataclass
class ModeResult:
    nll: list[float] = field(default_factory=list)  # per predicted token
    targets: list[int] = field(default_factory=list)  # index of each predicted token
    seconds: float = 0.0  # wall time of the mode, model load excluded

    def ppl(self, only: set[int] | None = None) -> float:
        vals = [v for v, t in zip(self.nll, self.targets) if only is None or t in only]
        return math.exp(sum(vals) / len(vals)) if vals else float("nan")

    def segments(self, size: int) -> list[tuple[int, float]]:
        """(first target, perplexity) of each ``size``-token segment that has scored tokens."""
        sums: dict[int, list[float]] = {}
        for v, t in zip(self.nll, self.targets):
            sums.setdefault((t - 1) // size, []).append(v)
        return [(k * size + 1, math.exp(sum(v) / len(v))) for k, v in sorted(sums.items())]


def _runner(m: EngineModel, cfg: EngineConfig, layout: StreamLayout, slots: int) -> ModelRunner:
    r = relayout(m, cfg.model_copy(update={"sink_tokens": layout.sinks, "window": layout.window}), slots)
    return ModelRunner(r.model, r.pool, r.attn, r.device)


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none").tolist()


Progress = Callable[[int, int], None]  # (tokens or targets scored so far, total)


def stream_nll(m: EngineModel, cfg: EngineConfig, ids: list[int], layout: StreamLayout, chunk: int = 512,
               progress: Progress | None = None) -> ModeResult:
    """Chunked prefill of the whole text through one cache slot; NLL of tokens 1..N-1."""
    run = _runner(m, cfg, layout, slots=1)
    res = ModeResult()
    for lo in range(0, len(ids) - 1, chunk):
        part = ids[lo : min(lo + chunk, len(ids) - 1)]
        logits = run.forward(part, [0], [lo], [len(part)], rows=None)
        tgt = torch.tensor(ids[lo + 1 : lo + 1 + len(part)], device=logits.device)
        res.nll.extend(_nll(logits, tgt))
        res.targets.extend(range(lo + 1, lo + 1 + len(part)))
        if progress:
            progress(len(res.nll), len(ids) - 1)
    return res


def recompute_nll(m: EngineModel, cfg: EngineConfig, ids: list[int], size: int, targets: list[int], batch: int = 16,
                  progress: Progress | None = None) -> ModeResult:
    """For each target t, one fresh forward over ids[t-size:t]."""
    layout = StreamLayout(0, size)
    run = _runner(m, cfg, layout, slots=batch)
    res = ModeResult()
    for lo in range(0, len(targets), batch):
        group = targets[lo : lo + batch]
        windows = [ids[max(0, t - size) : t] for t in group]
        flat = [x for w in windows for x in w]
        lens = [len(w) for w in windows]
        rows = [sum(lens[: i + 1]) - 1 for i in range(len(lens))]
        logits = run.forward(flat, list(range(len(group))), [0] * len(group), lens, rows=rows)
        res.nll.extend(_nll(logits, torch.tensor([ids[t] for t in group], device=logits.device)))
        res.targets.extend(group)
        if progress:
            progress(len(res.nll), len(targets))
    return res


@dataclass
class EvalPlan:
    """Which tokens each mode scores. Dense and window may be limited to a
    prefix (dense costs memory linear in the text); recompute scores either
    every ``stride``-th target, or ``sample`` random targets among the last
    ``last`` tokens (seeded)."""

    sinks: int
    window: int
    prefix_tokens: int | None = None  # dense and window: only the first N tokens
    stride: int = 1
    sample: int | None = None
    last: int | None = None
    seed: int = 0

    def recompute_targets(self, n: int) -> list[int]:
        if self.sample is None:
            return list(range(1, n, self.stride))
        lo = max(1, n - (self.last or n))
        g = torch.Generator().manual_seed(self.seed)
        pick = torch.randperm(n - lo, generator=g)[: self.sample] + lo
        return sorted(pick.tolist())


def evaluate(m: EngineModel, cfg: EngineConfig, ids: list[int], modes: list[Mode], plan: EvalPlan,
             progress: Callable[[Mode], Progress] | None = None) -> dict[Mode, ModeResult]:
    """Each mode's NLLs; ``progress(mode)`` gives the callback that mode reports to."""
    short = ids[: plan.prefix_tokens] if plan.prefix_tokens else ids
    runs = {
        Mode.DENSE: lambda p: stream_nll(m, cfg, short, StreamLayout(0, len(short)), progress=p),
        Mode.WINDOW: lambda p: stream_nll(m, cfg, short, StreamLayout(0, plan.sinks + plan.window), progress=p),
        Mode.STREAMING: lambda p: stream_nll(m, cfg, ids, StreamLayout(plan.sinks, plan.window), progress=p),
        Mode.RECOMPUTE: lambda p: recompute_nll(m, cfg, ids, plan.sinks + plan.window, plan.recompute_targets(len(ids)), progress=p),
    }
    out = {}
    for mode in modes:
        t0 = time.perf_counter()
        out[mode] = runs[mode](progress(mode) if progress else None)
        out[mode].seconds = time.perf_counter() - t0
    return out
