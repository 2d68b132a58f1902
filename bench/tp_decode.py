"""Tensor-parallel decode: TP=1 vs TP=2 on random-weight Llama shapes (bf16, NCCL, CUDA graphs).

Needs 2+ GPUs on one host. NOT RUN YET: no multi-GPU machine was available
when this was written; bench/results/ holds no TP numbers until someone runs:

    python bench/tp_decode.py                       # 7b:1,7b:2,13b:1,13b:2,70b:2
    python bench/tp_decode.py --configs 7b:1,7b:2 --steps 32

Per config: random weights (bench/tp_random.py; each rank keeps only its
slice), ``--sessions`` cache slots of ``--sinks`` + ``--window`` rows, each
prefilled with ``--context`` random tokens (default: a full cache, so every
decode step reads the whole window and evicts), decode CUDA graphs captured for
batch sizes up to ``--sessions`` (on every rank, NCCL all-reduces inside), then

* latency: one session decoding greedily, ms per token (graph replay + the
  argmax read back on the host, as sampling would), p50 / mean over --steps;
* throughput: all sessions decoding together, tokens/s.

Rank 0 is this process on GPU 0; rank 1 a spawned child on GPU 1 (the CLI
path of the engine: TPDriver + ProcessLauncher). The 70B shape (80 layers,
hidden 8192, 64 heads, 8 KV heads, MLP 28672, ~138 GB in bf16) only fits at TP=2.
Writes bench/results/tp_decode.json and .png. ``--device cpu`` is a plumbing
smoke test (tiny shape, no graphs, eager forward), and writes elsewhere.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

for _k, _v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_k, _v)  # NVLink multicast stays off (shared GPUs); children inherit it

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.tp_random import SHAPES, random_rank  # noqa: E402
from swiftinfer_core.parallel.driver import TPDriver  # noqa: E402
from swiftinfer_core.parallel.launcher import ProcessLauncher  # noqa: E402
from swiftinfer_core.parallel.plan import shard_plans  # noqa: E402
from swiftinfer_core.runner.build import build_rank  # noqa: E402
from swiftinfer_core.runner.rank_config import RankConfig  # noqa: E402

DEFAULT_CONFIGS = "7b:1,7b:2,13b:1,13b:2,70b:2"
TINY = replace(SHAPES["7b"], num_layers=2, hidden_size=256, num_heads=8, num_kv_heads=4, head_dim=32, intermediate_size=512, vocab_size=1000, name="tiny")


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node()}
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["cuda"] = torch.version.cuda
        env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def open_runner(build: RankConfig, tp: int):
    """TP=1: the rank's runner itself; TP>1: a TPDriver (same forward / graphs surface)."""
    if tp == 1:
        return build_rank(build)
    return TPDriver.start(shard_plans(build.args, tp), build, launcher=ProcessLauncher())


def prefill(runner, build: RankConfig, context: int, chunk: int = 2048) -> None:
    gen = torch.Generator().manual_seed(0)
    for slot in range(build.slots):
        ids = torch.randint(0, build.args.vocab_size, (context,), generator=gen).tolist()
        for lo in range(0, context, chunk):
            part = ids[lo : lo + chunk]
            runner.forward(part, [slot], [lo], [len(part)], [len(part) - 1])


def decode_step(runner, toks: list[int], slots: list[int], starts: list[int]) -> list[int]:
    if runner.graphs is not None:
        logits = runner.graphs.run(toks, slots, starts)
    else:
        logits = runner.forward(toks, slots, starts, [1] * len(toks), list(range(len(toks))))
    return logits.argmax(-1).tolist()  # host read-back, as the sampler does


def measure(runner, build: RankConfig, context: int, steps: int) -> dict:
    sync = torch.cuda.synchronize if torch.cuda.is_available() and build.device_type == "cuda" else (lambda: None)
    toks, times = [1], []
    for i in range(steps + 5):  # batch 1, slot 0; 5 warm-up steps
        t0 = time.perf_counter()
        toks = decode_step(runner, toks, [0], [context + i])
        times.append(time.perf_counter() - t0)
    lat = times[5:]
    n = build.slots
    toks, start = [1] * n, context + steps + 5
    decode_step(runner, toks, list(range(n)), [start] * n)  # warm-up
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        toks = decode_step(runner, toks, list(range(n)), [start + 1 + i] * n)
    wall = time.perf_counter() - t0
    return {
        "latency_ms_p50": 1e3 * statistics.median(lat), "latency_ms_mean": 1e3 * statistics.fmean(lat),
        "throughput_tok_s": n * steps / wall, "throughput_step_ms": 1e3 * wall / steps,
    }


def run_config(shape: str, tp: int, a: argparse.Namespace) -> dict:
    args = TINY if a.device == "cpu" else SHAPES[shape]
    dtype = torch.float32 if a.device == "cpu" else torch.bfloat16
    build = random_rank(args, a.sinks, a.window, a.sessions, dtype, device_type=a.device, triton=a.device == "cuda")
    t0 = time.perf_counter()  # rank 0 on the current GPU (0)
    runner = open_runner(build, tp)
    try:
        load_s = time.perf_counter() - t0
        context = a.context or a.sinks + a.window
        t0 = time.perf_counter()
        prefill(runner, build, context)
        prefill_s = time.perf_counter() - t0
        if a.device == "cuda":
            runner.capture_decode_graphs(a.sessions)
        out = {"shape": shape, "model": args.name, "tp": tp, "dtype": str(dtype).removeprefix("torch."),
               "sessions": a.sessions, "context": context, "cache_rows": a.sinks + a.window, "steps": a.steps,
               "load_s": load_s, "prefill_s": prefill_s, "cuda_graphs": a.device == "cuda"}
        out |= measure(runner, build, context, a.steps)
        if a.device == "cuda":
            out["peak_mem_gib_rank0"] = torch.cuda.max_memory_allocated(0) / 2**30
        return out
    finally:
        if tp > 1:
            runner.close()
        del runner
        gc.collect()
        if a.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(0)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['shape']}\nTP={r['tp']}" for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(labels, [r["latency_ms_p50"] for r in results], color="tab:blue")
    ax1.set_ylabel("ms / token (batch 1, p50)")
    ax1.set_title("decode latency")
    ax2.bar(labels, [r["throughput_tok_s"] for r in results], color="tab:green")
    ax2.set_ylabel(f"tokens / s ({results[0]['sessions']} sessions)")
    ax2.set_title("decode throughput")
    fig.suptitle(f"SwiftInfer TP decode, bf16, cache {results[0]['cache_rows']} rows, random weights")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="shape:tp list, shapes: " + ", ".join(SHAPES))
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--window", type=int, default=2044)
    p.add_argument("--context", type=int, default=0, help="tokens prefilled per session (0: sinks + window)")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    configs = [(s, int(t)) for s, t in (c.split(":") for c in a.configs.split(","))]
    need = max(t for _, t in configs)
    if a.device == "cuda" and torch.cuda.device_count() < need:
        print(f"needs {need} GPUs, {torch.cuda.device_count()} visible; nothing measured", file=sys.stderr)
        return 2
    if a.device == "cpu" and a.out == ROOT / "bench" / "results":
        p.error("--device cpu is a smoke test: pass --out elsewhere (bench/results holds GPU numbers only)")
    results = []
    for shape, tp in configs:
        r = run_config(shape, tp, a)
        print(json.dumps(r), flush=True)
        results.append(r)
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {"bench": "tp_decode", "argv": sys.argv[1:], "env": environment(), "results": results}
    (a.out / "tp_decode.json").write_text(json.dumps(doc, indent=2))
    plot(results, a.out / "tp_decode.png")
    print(f"wrote {a.out / 'tp_decode.json'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
