"""GPTQ one decoder layer at a time: the calibration Hessians of one layer are held
at once, not the whole model's, as GPTQ's own implementation goes (Frantar et al. 2022).

The calibration text is a list of ``Call`` (one packed forward each). Its input to
layer 0 is captured once per call ([T, hidden] float32, kept on the device: 32 MiB
for 2,048 tokens at hidden 4,096). Then, per layer i:

    hooks on layer i's linears -> layer i over every call (writes layer i's KV, as the
    whole model's forward would) -> round each linear from its Hessian -> free them
    -> ``sequential``: layer i again with its rounded weights swapped in, so layer i+1
       is calibrated on what the quantized model will feed it
    -> its outputs are layer i+1's inputs

Without ``sequential`` every Hessian equals the one-pass collection over the whole
model (model/calibrate.collect_hessians) bit for bit, at a fraction of the memory:
held at once, one layer's [K, K] Hessians (Llama-3.1-8B shape in float32: 4,096^2 x 3
+ 14,336^2 words, 1.0 GiB, against 30.5 GiB for all 32 layers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.model.calibrate import HessianCollector, linear_targets
from swiftinfer_core.model.quant import QuantizedWeight, dequantize
from swiftinfer_core.runner.model_runner import ModelRunner

# (qualified linear name, the float layer, its input Hessian [K, K]) -> the rounded weight,
# dequantized [N, K] (float) or as its QuantizedWeight (dequantized only when ``sequential``
# swaps it in to calibrate the next layer)
RoundLinear = Callable[[str, nn.Linear, torch.Tensor], torch.Tensor | QuantizedWeight]
# (layer index, its collector: Hessians and input amaxes) -> None: may change layer i in place, keeping
# its function (runner/calibration.py's smoothing), and its Hessians to match, before it is rounded
BeforeRound = Callable[[int, HessianCollector], None]


@dataclass(frozen=True)
class Call:
    """One packed forward of calibration text: ModelRunner.forward's arguments."""

    ids: list[int]
    slots: list[int]
    starts: list[int]
    q_lens: list[int]


def text_calls(chunks: list[list[int]], slot: int = 0) -> list[Call]:
    """Chunks of one text, each after the last, through ``slot``'s StreamingLLM cache."""
    calls, pos = [], 0
    for c in chunks:
        calls.append(Call(list(c), [slot], [pos], [len(c)]))
        pos += len(c)
    return calls


def parallel_call(seqs: list[list[int]]) -> Call:
    """Sequences in one forward, each from its start in its own slot (0, 1, ...)."""
    return Call([t for s in seqs for t in s], list(range(len(seqs))), [0] * len(seqs), [len(s) for s in seqs])


@dataclass(frozen=True)
class LayerwiseReport:
    hessian_s: float  # layer forwards with the hooks on
    round_s: float  # rounding, and (sequential) the layer forwards with rounded weights
    hessian_bytes: int  # the most held at once (one layer's)
    layers: int  # linears rounded


class _Captured(Exception):
    """Raised by the layer-0 hook: the rest of the forward is not needed."""


def _first_layer_input(runner: ModelRunner, call: Call) -> torch.Tensor:
    got: list[torch.Tensor] = []

    def grab(_mod: nn.Module, args: tuple) -> None:
        got.append(args[0].clone())
        raise _Captured

    hook = runner.model.layers[0].register_forward_pre_hook(grab)
    try:
        runner.forward(call.ids, call.slots, call.starts, call.q_lens, rows=[0])
    except _Captured:
        pass
    finally:
        hook.remove()
    return got[0]


def _layer(runner: ModelRunner, i: int, x: torch.Tensor, call: Call) -> torch.Tensor:
    """Layer i alone over one call: [T, hidden] -> [T, hidden], writing its KV."""
    plan = runner.attn.prepare(AttnBatch.build(call.slots, call.starts, call.q_lens, runner.device))
    return runner.model.layers[i](x, runner.attn, plan, runner.pool.k[i], runner.pool.v[i], i)


@contextmanager
def _swapped(linears: dict[str, nn.Linear], weights: dict) -> Iterator[None]:
    """The linears compute with ``weights`` (tensors or QuantizedWeights, cast to their dtype) inside the block."""
    old = {n: lin.weight.data for n, lin in linears.items()}
    try:
        for n, lin in linears.items():
            w = weights[n] if isinstance(weights[n], torch.Tensor) else dequantize(weights[n])
            lin.weight.data = w.to(old[n].dtype).contiguous()
        yield
    finally:
        for n, lin in linears.items():
            lin.weight.data = old[n]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_layerwise(runner: ModelRunner, calls: list[Call], round_linear: RoundLinear,
                    dtype: torch.dtype = torch.float64, sequential: bool = False,
                    before_round: BeforeRound | None = None) -> LayerwiseReport:
    """Calls ``round_linear`` once for every decoder linear of ``runner.model``, layer by
    layer, with its input Hessian (``dtype``) over ``calls``; the model's weights are
    left as they were, but for what ``before_round`` does to each layer once its
    Hessians are in. ``runner``'s pool must hold every call's slots and positions."""
    model, dev = runner.model, runner.device
    targets = linear_targets(model)
    with torch.inference_mode():
        xs = [_first_layer_input(runner, c) for c in calls]
    t_h = t_r = 0.0
    held = rounded = 0
    for i in range(len(model.layers)):
        mine = {n: lin for n, lin in targets.items() if n.startswith(f"layers.{i}.")}
        t0 = time.perf_counter()
        with HessianCollector(mine, dtype=dtype) as col, torch.inference_mode():
            outs = [_layer(runner, i, x, c) for x, c in zip(xs, calls)]
        _sync(dev)
        t1 = time.perf_counter()
        held = max(held, sum(h.numel() * h.element_size() for h in col.h.values()))
        if before_round is not None:
            before_round(i, col)
        with torch.no_grad():
            new = {n: round_linear(n, lin, col.h.pop(n)) for n, lin in mine.items()}
        rounded += len(new)
        if sequential:
            with _swapped(mine, new), torch.inference_mode():
                outs = [_layer(runner, i, x, c) for x, c in zip(xs, calls)]
        del new
        _sync(dev)
        t_h, t_r = t_h + t1 - t0, t_r + time.perf_counter() - t1
        xs = outs
    return LayerwiseReport(t_h, t_r, held, rounded)
