"""``quant_rounding: gptq``: a rank's quantized weights chosen by GPTQ at load,
calibrated on text the float model writes itself, so no corpus ships or is fetched.

Order inside ``build_rank`` (after the float weights, before they are replaced):
a temporary KV pool of ``seqs`` slots of 4 + SEQ_LEN rows (no eviction) and the
rank's attention backend -> the float model samples ``seqs`` sequences of
SEQ_LEN tokens from random first tokens (model/calibrate.self_generated) ->
runner/layerwise.round_layerwise runs them through one decoder layer at a time with
hooks that add each linear's input Hessian X^T X, rounds that layer
(model/quant_search.calibrated_weight: GPTQ in activation order; int4: static groups
with the activation-weighted clip search) on the weights' device, frees its Hessians,
and feeds the next layer the float layer's outputs (``quant_smoothing``: before a layer is
rounded, model/smooth.py folds its scales in from the same pass's input amaxes and its
Hessians are rescaled to match; the layer's function, and so the next layer's input, is
unchanged): the Hessians are those of one pass
over the whole float model, bit for bit. GPTQ's own order feeds it the rounded layer's
outputs instead (``sequential``); on the default model that measured no better
(bench/results/quant_quality_cpu_gptq_seq*.json, three calibration seeds, 4+256: fp8
mean x1.0068 of float32 against x1.0089, int4 group 128 x1.181 against x1.193, the
order changing from seed to seed), so the engine keeps the float inputs.

Memory at load: one layer's [K, K] Hessians at a time (float32 on a GPU, float64 on
the CPU): 4 per Llama layer, 1.0 GiB for the Llama-3.1-8B shape (K = 4,096 x 3 and
14,336), where all 32 layers' at once took 30.5 GiB on an H200
(bench/results/gptq_load_8b_gpu.json, before this order); plus the calibration
text's residual stream, [tokens, hidden] float32 twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.kernels.attention import Attention
from swiftinfer_core.model.calibrate import HessianCollector, self_generated
from swiftinfer_core.model.quant import QuantizedWeight
from swiftinfer_core.model.quant_search import Rounding, calibrated_weight
from swiftinfer_core.model.smooth import SMOOTHED, smooth_block
from swiftinfer_core.runner.layerwise import BeforeRound, parallel_call, round_layerwise, text_calls
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.runner.rank_config import RankConfig

log = logging.getLogger(__name__)

SEQ_LEN = 256  # tokens per self-generated sequence (the measured setting: 8 x 256 for 2,048)


@dataclass(frozen=True)
class CalibrationReport:
    """What one calibrated load cost (logged; bench/gptq_load.py reads it from the log record)."""

    fmt: str
    source: str  # "self-generated" or "file" (quant_calibration_file)
    tokens: int
    generate_s: float  # sampling the calibration text (0 for a file: tokenized before)
    hessian_s: float  # the layer forwards with the Hessian hooks
    round_s: float  # GPTQ over every decoder linear (and the layer forwards with rounded weights)
    hessian_bytes: int  # the most Hessians held at once: one layer's
    layers: int  # linears rounded

    def __str__(self) -> str:
        return (f"{self.fmt}: {self.tokens} {self.source} tokens in {self.generate_s:.1f} s, Hessians "
                f"{self.hessian_s:.1f} s ({self.hessian_bytes / 2**30:.2f} GiB), {self.layers} layers rounded in "
                f"{self.round_s:.1f} s")


def calibration_text_ids(tokenizer, path: Path, tokens: int) -> tuple[int, ...]:
    """The first ``tokens`` token ids of the UTF-8 text file ``path`` (quant_calibration_file);
    a missing or unreadable file, or one shorter than SEQ_LEN tokens, is the caller's mistake."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(tokens * 16)  # ~4 characters a token: enough, without reading a large file whole
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"quant_calibration_file {path}: {exc}") from None
    ids = tokenizer(text, add_special_tokens=False).input_ids[:tokens]
    if len(ids) < SEQ_LEN:
        raise InvalidRequestError(f"quant_calibration_file {path} holds {len(ids)} tokens; GPTQ needs at least {SEQ_LEN}")
    return tuple(ids)


def smoothing(model: nn.Module, alpha: float) -> BeforeRound:
    """quant_smoothing for round_layerwise: fold layer i's scales in (model/smooth.py) from its
    inputs' amaxes; those inputs X become X / s, so each Hessian H -> diag(1/s) H diag(1/s)."""

    def smooth_layer(i: int, col: HessianCollector) -> None:
        names = {kind: f"layers.{i}.{kind}" for kind in SMOOTHED}
        s = smooth_block(model.layers[i], {kind: col.amax[n] for kind, n in names.items()}, alpha)
        with torch.inference_mode():  # the Hessians were made under it; in place: no second [K, K]
            for kind, n in names.items():
                inv = s[kind].reciprocal().to(col.h[n])
                col.h[n].mul_(inv[:, None]).mul_(inv[None, :])
    return smooth_layer


def gptq_weights(model: nn.Module, cfg: RankConfig, device: torch.device, make_attention,
                 sequential: bool = False) -> dict[str, QuantizedWeight]:
    """Qualified linear name -> its GPTQ-rounded weight in ``cfg.quant``'s format, from
    ``cfg.calibration_ids`` (a file's text) or else ``cfg.calibration_tokens`` self-generated
    tokens, one layer at a time (runner/layerwise.py; ``sequential``: each layer calibrated
    on the outputs of the layers already rounded, which measured no better: module doc).
    ``make_attention(cfg, device)``: the
    rank's backend builder (runner/build.py), given a layout that fits one sequence."""
    seqs = max(1, cfg.calibration_tokens // SEQ_LEN)
    layout = StreamLayout(sinks=cfg.layout.sinks, window=SEQ_LEN)
    tmp = replace(cfg, layout=layout, kv_dtype=None)  # the float cache: calibration sees the float model's own keys
    pool = KVPool(layout, cfg.args.num_layers, seqs, cfg.args.num_kv_heads, cfg.args.head_dim, cfg.dtype, device)
    attn: Attention = make_attention(tmp, device)
    runner = ModelRunner(model, pool, attn, device)
    t0 = time.perf_counter()
    if cfg.calibration_ids is not None:  # quant_calibration_file: one text through slot 0's StreamingLLM cache
        ids, source = list(cfg.calibration_ids), "file"
        calls = text_calls([ids[i : i + SEQ_LEN] for i in range(0, len(ids), SEQ_LEN)])
    else:
        out = self_generated(runner.forward, cfg.args.vocab_size, seqs, SEQ_LEN, seed=cfg.seed)
        calls, source = [parallel_call(out)], "self-generated"
    t1 = time.perf_counter()
    weights: dict[str, QuantizedWeight] = {}

    def round_linear(name: str, linear: nn.Linear, h: torch.Tensor) -> QuantizedWeight:
        weights[name] = calibrated_weight(linear.weight, h, cfg.quant, cfg.quant_group, Rounding.GPTQ)
        return weights[name]

    dtype = torch.float64 if device.type == "cpu" else torch.float32  # float32 halves the Hessians
    smooth = smoothing(model, cfg.smoothing) if cfg.smoothing is not None else None
    lw = round_layerwise(runner, calls, round_linear, dtype, sequential, smooth)
    report = CalibrationReport(cfg.quant.value, source, sum(len(c.ids) for c in calls), t1 - t0, lw.hessian_s,
                               lw.round_s, lw.hessian_bytes, lw.layers)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.info("gptq %s", report)
    return weights
