"""CPU decode speed and weight bytes of quantization 'gguf' (the GGUF's blocks kept
compact) beside 'none' (float32) and 'auto' (int8 C kernels) for the default model.

    python bench/gguf_decode_cpu.py --tokens 100 --rounds 3 --threads 1

Per measured turn (bench/cpu_decode.py's one_turn): a fresh session, one user
message of ~50 tokens plus the chat template, ``--tokens`` generated with
ignore_eos, one conversation. Rounds alternate between the engines (each loaded
once) so that load from other processes falls on all of them alike; round 0 is a
warm-up and not kept; medians reported, every round kept in the JSON. Weight
bytes: every parameter and buffer of the model, tensors shared by two modules
(the gguf engine's tied Q8_0 embedding and head) counted once; norms included.
Writes bench/results/gguf_decode_cpu.json and .png (bench/common.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import save_plot, write_results  # noqa: E402
from bench.cpu_decode import _cpu_flags, _cpu_name, _loadavg, one_turn  # noqa: E402
from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.engine.engine import Engine  # noqa: E402

VARIANTS = {  # name -> EngineConfig overrides
    "none (float32, C attention)": {"quantization": "none"},
    "auto (int8 C layers, int8 head)": {"quantization": "auto"},
    "gguf (Q4_1/Q8_0 blocks, C kernels)": {"quantization": "gguf"},
    "gguf (Q4_1/Q8_0 blocks, torch ops)": {"quantization": "gguf", "cpu_native_kernels": False},
}


def weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t is None or t.device.type == "meta" or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--name", default="gguf_decode_cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load0 = _loadavg()
    engines = {v: Engine(EngineConfig(device="cpu", cpu_threads=a.threads, **VARIANTS[v])) for v in a.variants}
    wbytes = {v: weight_bytes(e.core.loaded.model) for v, e in engines.items()}
    runs: dict[str, list[dict]] = {v: [] for v in a.variants}
    for r in range(a.rounds + 1):
        for v, kept in runs.items():
            sid = f"g{a.variants.index(v)}-{r}"
            res = one_turn(engines[v], sid, a.tokens if r else 8)
            engines[v].close_session(sid)
            res["load_1m"] = (_loadavg() or [None])[0]
            if r:
                kept.append(res)
                print(f"round {r} {v:38s}: {res['tok_s']:6.1f} tok/s  ttft {1e3 * res['ttft_s']:6.0f} ms", flush=True)
    for e in engines.values():
        e.close()
    results = [{"variant": v, "config": VARIANTS[v], "threads": a.threads, "weight_bytes": wbytes[v],
                "tok_s_median": statistics.median(x["tok_s"] for x in kept),
                "ttft_s_median": statistics.median(x["ttft_s"] for x in kept), "rounds": kept} for v, kept in runs.items()]
    for row in results:
        print(f"{row['variant']:38s} {row['tok_s_median']:6.1f} tok/s  ttft {1e3 * row['ttft_s_median']:6.0f} ms  "
              f"weights {row['weight_bytes'] / 2**20:7.1f} MiB")
    out = {"cpu": _cpu_name(), "cpu_flags": _cpu_flags(), "tokens": a.tokens, "rounds": a.rounds,
           "load_avg_start_end": [load0, _loadavg()], "results": results}
    write_results(a.name, out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["variant"] for row in results]
    fig, ax = plt.subplots(1, 2, figsize=(13, 0.5 * len(results) + 1.8))
    ax[0].barh(names, [row["tok_s_median"] for row in results], color="tab:blue")
    ax[0].set_xlabel("decode tokens/s (median of rounds)")
    ax[1].barh(names, [row["weight_bytes"] / 2**20 for row in results], color="tab:green")
    ax[1].set_xlabel("model tensors at rest, MiB")
    ax[1].set_yticklabels([])
    for x in ax:
        x.invert_yaxis()
        x.grid(axis="x", alpha=0.3)
    fig.suptitle(f"SmolLM2-135M on CPU ({out['cpu']}), {a.threads} thread(s), one conversation, {a.tokens} tokens")
    fig.tight_layout()
    save_plot(a.name, fig)


if __name__ == "__main__":
    main()
