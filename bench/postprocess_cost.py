"""Issue 12: host time of one engine step's postprocessing (engine/postprocess.py) at N
decode rows, with the detokenizer calling transformers' decode wrapper against the
tokenizers library directly (conversation/detokenizer.text_decoder), side by side;
and the sampler's per-row uniform draws of a step, one ``torch.rand`` call per row
against engine/sampler.Uniforms' blocks (``uniforms_*``).

On the GPU a step's postprocessing is serial with the device (served_8b_r3_trace: 1.36
ms of a 13.1 ms graph step at 118 rows), so its host time is step time. The model here
is a one-layer shape with the default tokenizer and random weights on the CPU, so the
forward is cheap and the figure is the postprocessing alone (same Python, any device).

    python bench/postprocess_cost.py [--sizes 32 128 256] [--tokens 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

from bench.shape_config import make_config_dir  # noqa: E402
from swiftinfer_core import SamplingParams  # noqa: E402
from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.conversation import detokenizer  # noqa: E402
from swiftinfer_core.engine.core import EngineCore  # noqa: E402
from swiftinfer_core.engine.sampler import Uniforms, _uniform  # noqa: E402
from swiftinfer_core.model.fetch import default_model_dir  # noqa: E402

WAYS = ("wrapper", "direct")


def post_ms(core: EngineCore, n: int, tokens: int, round_: int) -> list[float]:
    """Per decode step of one round of ``n`` conversations: ms in ``core.post``."""
    times: list[float] = []
    real = core.post

    def timed(*a):
        t = time.perf_counter()
        out = real(*a)
        times.append((time.perf_counter() - t) * 1e3)
        return out

    core.post = timed
    try:
        params = SamplingParams(max_tokens=tokens, ignore_eos=True)
        words = "river stone light garden letter winter morning castle".split()
        turns = [core.add_turn(f"s{i}", [{"role": "user", "content": " ".join(words[(i + round_ + j) % 8] for j in range(3 + i % 5))}],
                               params) for i in range(n)]
        while any(t.session.turn is t for t in turns):
            core.step()
    finally:
        core.post = real
    return times[2:]  # the prefill steps first


def uniforms_ms(n: int, steps: int = 200) -> dict[str, float]:
    """p50 ms of drawing one uniform for each of ``n`` seeded turns, both ways."""
    out = {}
    for way in ("one_call_each", "blocks"):
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        draws = gens if way == "one_call_each" else [Uniforms(g) for g in gens]
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            [_uniform(d) for d in draws]
            times.append((time.perf_counter() - t) * 1e3)
        out[f"uniforms_{way}_ms_p50"] = statistics.median(times)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 128, 256])
    ap.add_argument("--tokens", type=int, default=40, help="tokens generated per turn")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per way and size, alternating the ways")
    ap.add_argument("--name", default="postprocess_cost")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    shape = make_config_dir(Path(default_model_dir()), Path(tempfile.mkdtemp()) / "tiny", hidden_size=64, intermediate_size=128,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    fast = detokenizer.text_decoder
    rows = []
    for n in a.sizes:
        core = EngineCore(EngineConfig(model=str(shape), load_format="random", device="cpu", dtype="float32", sink_tokens=4,
                                       window=60, max_sessions=n, max_batch_tokens=8192, prefill_chunk=512))
        wrapper = partial(core.tokenizer.decode, skip_special_tokens=True)
        samples: dict[str, list[float]] = {w: [] for w in WAYS}
        for r in range(a.rounds):
            for way in WAYS:  # the module's function, swapped for the whole round: turns build their detokenizers in it
                detokenizer.text_decoder = fast if way == "direct" else (lambda tok: wrapper)
                try:
                    samples[way] += post_ms(core, n, a.tokens, r)
                finally:
                    detokenizer.text_decoder = fast
        row = {"N": n, "steps": {w: len(samples[w]) for w in WAYS}}
        for way in WAYS:
            p50 = statistics.median(samples[way])
            row[f"{way}_ms_p50"] = p50
            row[f"{way}_us_per_row"] = p50 / n * 1e3
        row["speedup"] = row["wrapper_ms_p50"] / row["direct_ms_p50"]
        row.update(uniforms_ms(n))
        rows.append(row)
        print(row, flush=True)
        core.close()
    common.write_results(a.name, {"command": " ".join(sys.argv), "what": "EngineCore.post per decode step (p50), tiny model on the CPU",
                                  "rows": rows}, a.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for way in WAYS:
        ax.plot([r["N"] for r in rows], [r[f"{way}_ms_p50"] for r in rows], marker="o", label=f"decode via {way}")
    ax.set_xlabel("decode rows per step")
    ax.set_ylabel("postprocessing ms per step (p50)")
    ax.set_title("engine postprocessing, host CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    common.save_plot(a.name, fig, a.out)
    print(common.table(rows, ["N", "wrapper_ms_p50", "direct_ms_p50", "wrapper_us_per_row", "direct_us_per_row", "speedup",
                              "uniforms_one_call_each_ms_p50", "uniforms_blocks_ms_p50"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
