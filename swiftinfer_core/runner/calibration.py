"""``quant_rounding: gptq``: a rank's quantized weights chosen by GPTQ at load,
calibrated on text the float model writes itself, so no corpus ships or is fetched.

Order inside ``build_rank`` (after the float weights, before they are replaced):
a temporary KV pool of ``seqs`` slots of 4 + SEQ_LEN rows (no eviction) and the
rank's attention backend -> the float model samples ``seqs`` sequences of
SEQ_LEN tokens from random first tokens (model/calibrate.self_generated) ->
those sequences run again as prefill with hooks that add every linear's input
Hessian X^T X -> model/quant_search.calibrated_weights rounds each layer (GPTQ in
activation order; int4: static groups with the activation-weighted clip search)
on the weights' device -> the Hessians are freed (the temporary pool is a few MiB).

Measured on the default model (emulated, 4,000 tokens of the plays at 4+256,
bench/results/quant_quality_cpu_gptq_self.json, _draws.json): with 2,048
self-generated tokens fp8 weights moved from x1.025 to x1.000-1.014 of float32's
perplexity depending on the sampled text (mean x1.009), int4 group 128 from x1.55
to x1.15-1.19. Memory at load: one [K, K] float32
Hessian per decoder linear on the device (float64 on the CPU): 4 per Llama layer,
30.5 GiB for the Llama-3.1-8B shape (K = 4,096 x 3 and 14,336; measured on an H200,
bench/results/gptq_load_8b_gpu.json), freed before the KV pool is sized.
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
from swiftinfer_core.model.calibrate import collect_hessians, self_generated
from swiftinfer_core.model.quant import QuantizedWeight
from swiftinfer_core.model.quant_search import Rounding, calibrated_weights
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
    hessian_s: float  # its prefill with the Hessian hooks
    round_s: float  # GPTQ over every decoder linear
    hessian_bytes: int  # the Hessians held at once
    layers: int

    def __str__(self) -> str:
        return (f"{self.fmt}: {self.tokens} {self.source} tokens in {self.generate_s:.1f} s, Hessians "
                f"{self.hessian_s:.1f} s ({self.hessian_bytes / 2**30:.2f} GiB), {self.layers} layers rounded in "
                f"{self.round_s:.1f} s")


def text_replay(runner: ModelRunner):
    """A forward for chunks of one text, each after the last, through slot 0's
    StreamingLLM cache (the calibration file here; the plays in bench/quant_quality_cpu.py)."""
    pos = 0

    def run(chunk: list[int]) -> None:
        nonlocal pos
        runner.forward(chunk, [0], [pos], [len(chunk)], rows=[0])
        pos += len(chunk)
    return run


def _sampled(runner: ModelRunner, cfg: RankConfig, seqs: int):
    """([the model's own sequences, concatenated]), and a replay that runs them
    together, each from its start in its own slot."""
    out = self_generated(runner.forward, cfg.args.vocab_size, seqs, SEQ_LEN, seed=cfg.seed)
    slots = list(range(seqs))

    def replay(ids: list[int]) -> None:
        runner.forward(ids, slots, [0] * seqs, [SEQ_LEN] * seqs, rows=[0])
    return [[t for seq in out for t in seq]], replay


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


def gptq_weights(model: nn.Module, cfg: RankConfig, device: torch.device, make_attention) -> dict[str, QuantizedWeight]:
    """Qualified linear name -> its GPTQ-rounded weight in ``cfg.quant``'s format, from
    ``cfg.calibration_ids`` (a file's text) or else ``cfg.calibration_tokens`` self-generated tokens. ``make_attention(cfg, device)``:
    the rank's backend builder (runner/build.py), given a layout that fits one sequence."""
    seqs = max(1, cfg.calibration_tokens // SEQ_LEN)
    layout = StreamLayout(sinks=cfg.layout.sinks, window=SEQ_LEN)
    tmp = replace(cfg, layout=layout, kv_dtype=None)  # the float cache: calibration sees the float model's own keys
    pool = KVPool(layout, cfg.args.num_layers, seqs, cfg.args.num_kv_heads, cfg.args.head_dim, cfg.dtype, device)
    attn: Attention = make_attention(tmp, device)
    runner = ModelRunner(model, pool, attn, device)
    t0 = time.perf_counter()
    if cfg.calibration_ids is not None:  # quant_calibration_file: one text through slot 0's StreamingLLM cache
        ids, source = list(cfg.calibration_ids), "file"
        chunks, replay = [ids[i : i + SEQ_LEN] for i in range(0, len(ids), SEQ_LEN)], text_replay(runner)
    else:
        (chunks, replay), source = _sampled(runner, cfg, seqs), "self-generated"
    t1 = time.perf_counter()
    dtype = torch.float64 if device.type == "cpu" else torch.float32  # float32 halves a 7B's 43 GiB
    hs, _ = collect_hessians(model, replay, chunks, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the Hessians' time is theirs, not GPTQ's
    t2 = time.perf_counter()
    weights = calibrated_weights(model, hs, cfg.quant, cfg.quant_group, Rounding.GPTQ)
    report = CalibrationReport(cfg.quant.value, source, sum(map(len, chunks)), t1 - t0, t2 - t1, time.perf_counter() - t2,
                               sum(h.numel() * h.element_size() for h in hs.values()), len(weights))
    del hs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.info("gptq %s", report)
    return weights
