"""Calibration statistics for model/quant_search.py: each linear layer's input
Hessian H = sum over calibration tokens of x x^T ([K, K], float64 unless asked
otherwise), collected with forward pre-hooks while calibration text runs through
the float model; or text the model writes itself (``self_generated``), which
needs no corpus at load.

The calibration text must be disjoint from any text the quantized model is then
evaluated on (bench/quant_quality_cpu.py takes it from the middle of the plays,
its evaluation from their start).

``skip_rows``: the first rows each layer sees are left out. The default model's
first token (StreamingLLM's first sink) carries "massive activations": its input
to layers.11.w2 has 625x the median token's norm and is 100% of that H's trace
(layers.28.w2: 77%). Measured (bench/results/quant_quality_cpu_calib_skip*.json):
leaving the 4 sink tokens out made the activation-weighted int4 clip search worse
(x1.35 against x1.22 with them), so the sink's rows matter (every later token
attends to it); GPTQ with them in lost to round-to-nearest (x1.64 vs x1.55). How to
weight them is open; the default keeps every row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from swiftinfer_core.model.linear_slots import linear_slots


def linear_targets(model: nn.Module, head: bool = False) -> dict[str, nn.Linear]:
    """Qualified name -> nn.Linear for every decoder linear (and the LM head when ``head``)."""
    return {slot.qualified: slot.linear for slot in linear_slots(model, head)}


class HessianCollector:
    """Context manager: while open, every input row of the hooked linears is added
    to that layer's H ([K, K] in ``dtype``, on the activations' device) and counted,
    and each input channel's largest magnitude kept (``amax`` [K] float32)."""

    def __init__(self, layers: dict[str, nn.Module], skip_rows: int = 0, dtype: torch.dtype = torch.float64):
        self.layers, self.skip_rows, self.dtype = layers, skip_rows, dtype
        self.h: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.amax: dict[str, torch.Tensor] = {}
        self._hooks: list = []
        self._seen: dict[str, int] = {}

    def _hook(self, name: str) -> Callable:
        def pre(_mod: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(self.dtype)  # [M, K]
            if name not in self.h:
                self.h[name] = torch.zeros(x.shape[1], x.shape[1], dtype=self.dtype, device=x.device)
                self.rows[name], self._seen[name] = 0, 0
                self.amax[name] = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
            skip = max(0, self.skip_rows - self._seen[name])
            self._seen[name] += x.shape[0]
            x = x[skip:]
            self.h[name] += x.t() @ x
            if x.shape[0]:
                torch.maximum(self.amax[name], x.abs().amax(0).float(), out=self.amax[name])
            self.rows[name] += x.shape[0]
        return pre

    def __enter__(self) -> HessianCollector:
        self._hooks = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for hk in self._hooks:
            hk.remove()
        self._hooks = []


def self_generated(forward: Callable[..., torch.Tensor], vocab: int, seqs: int, length: int,
                   seed: int = 0, top_p: float = 1.0) -> list[list[int]]:
    """Calibration text the model writes itself, so quantizing needs no corpus: ``seqs``
    sequences of ``length`` tokens, each from a uniformly random first token, then
    sampled at temperature 1 (the data-free calibration of LLM-QAT, Liu et al. 2023),
    from the ``top_p`` nucleus when below 1.
    ``forward(ids, slots, starts, q_lens, rows)`` is ModelRunner.forward over a pool
    with ``seqs`` slots of at least ``length`` positions; one decode step per token
    for all sequences together."""
    g = torch.Generator().manual_seed(seed)
    out = [[int(t)] for t in torch.randint(0, vocab, (seqs,), generator=g)]
    slots = list(range(seqs))
    with torch.no_grad():
        for pos in range(length - 1):
            logits = forward([s[-1] for s in out], slots, [pos] * seqs, [1] * seqs, None)  # [seqs, V]
            probs = torch.softmax(logits.float().cpu(), dim=-1)
            if top_p < 1.0:  # nucleus: drop the tail past top_p of the mass (the most likely token always stays)
                sp, idx = probs.sort(dim=-1, descending=True)
                sp[(sp.cumsum(-1) - sp) >= top_p] = 0.0
                probs = torch.zeros_like(probs).scatter_(-1, idx, sp)
            for s, t in zip(out, torch.multinomial(probs, 1, generator=g)[:, 0]):
                s.append(int(t))
    return out


def collect_hessians(model: nn.Module, run: Callable[[Iterable[int]], object], chunks: Iterable[list[int]],
                     head: bool = False, skip_rows: int = 0, dtype: torch.dtype = torch.float64
                     ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Run ``run(chunk)`` (a forward of the model over one chunk of token ids) for each
    chunk with hooks on the linears, the first ``skip_rows`` rows of each left out;
    returns (H by layer name, on the activations' device, in ``dtype``; rows added by
    layer name)."""
    with HessianCollector(linear_targets(model, head), skip_rows, dtype) as c, torch.no_grad():
        for chunk in chunks:
            run(chunk)
    return c.h, c.rows
