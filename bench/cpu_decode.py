"""CPU decode speed of the default model through ``Engine.chat_sync``, before and
after the CPU fast path, side by side in one run.

    python bench/cpu_decode.py --tokens 200 --rounds 3 --threads 1 2 --json bench/results/cpu_decode.json \
        --plot bench/results/cpu_decode.png

Variants (each its own Engine, loaded once): the reference path as it was
(``cpu_fast_path=False``: TorchAttention, [out, in] weights); the fast path in
torch ops (``cpu_native_kernels=False``: float32, and int8 weights with the LM
head in float32 and in int8), as before the C kernels; and the same formats with
the C kernels (kernels/cpu_native_*.c: attention only for float32 weights, a
whole layer per call for int8; ``quantization: auto`` is int8 with an int8 head,
serve_config.yaml's CPU default); each at the thread counts given. Rounds alternate between variants so that load from other
processes on a shared machine falls on all of them alike; the medians are
reported, with every round kept in the JSON. Each engine's step thread has its own
OpenMP team, so with several variants in one process libgomp sees more threads than
cores and sleeps between parallel regions: prefill (TTFT) at 2+ threads is then up to
2x slower than in a served process, which holds one engine. Time one variant per run
for TTFT at more than one thread (bench/results/cpu_decode_r4.json).

Per measured turn: a fresh session, one user message of ~50 tokens (plus the
chat template), ``max_tokens`` generated with ``ignore_eos``. TTFT is from the
call to the first chunk with a token; tokens/s counts tokens after the first
over the time after it. ``--fill N`` first feeds N raw tokens to each session
(unmeasured), so the turn decodes over a deep cache (full once N >= sinks + window).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import header  # noqa: E402
from swiftinfer_core.config import EngineConfig, SamplingParams  # noqa: E402
from swiftinfer_core.engine.engine import Engine  # noqa: E402
from swiftinfer_core.protocol import RawPrompt  # noqa: E402

VARIANTS = {  # name -> EngineConfig overrides
    "reference (before)": {"cpu_fast_path": False},
    "fast float32, torch ops": {"cpu_native_kernels": False},
    "fast int8, head float32, torch ops": {"quantization": "int8", "lm_head_fp32": True, "cpu_native_kernels": False},
    "fast int8, head int8, torch ops": {"quantization": "int8", "lm_head_fp32": False, "cpu_native_kernels": False},
    "fast float32, C attention": {},
    "int8 C kernels, head float32": {"quantization": "int8", "lm_head_fp32": True},
    "int8 C kernels, head int8 (auto)": {"quantization": "auto"},
    # torch's _weight_int4pack_mm_for_cpu (bf16), head float32; C attention
    "int4 g32, torch int4 op": {"quantization": "int4", "quant_group": 32},
    "int4 g32 zero point, torch int4 op": {"quantization": "int4", "quant_group": 32, "quant_zero_point": True},
}
PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle on a stormy night. "
          "Describe the sea, the light, the keeper's old dog, and what the message says, in plain simple words.")


def one_turn(eng: Engine, sid: str, tokens: int, fill: int = 0) -> dict:
    """One measured chat turn on a fresh session; with ``fill``, the session first
    takes ``fill`` raw tokens (one unmeasured turn), so the turn decodes over a
    cache that many tokens deep (a full window once fill >= sinks + window)."""
    if fill:
        ids = [100 + (i * 7919) % 40000 for i in range(fill)]  # arbitrary ordinary token ids
        for _ in eng.chat_sync(sid, RawPrompt(token_ids=ids), SamplingParams(max_tokens=1, ignore_eos=True)):
            pass
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    t0 = time.perf_counter()
    first, n = None, 0
    for chunk in eng.chat_sync(sid, [{"role": "user", "content": PROMPT}], params):
        if first is None and chunk.token_ids:
            first = time.perf_counter()
        n += len(chunk.token_ids)
    end = time.perf_counter()
    prompt_tokens = chunk.usage.prompt_tokens if chunk.usage else None
    return {"ttft_s": first - t0, "tok_s": (n - 1) / (end - first), "tokens": n, "prompt_tokens": prompt_tokens}


def on_step_thread(eng: Engine, fn):
    """fn() run on the engine's step thread (between steps), its result returned.

    The thread count must be set there: torch.set_num_threads sets the OpenMP count
    of the calling thread only (and of threads it starts later), and torch fixes a
    thread's count at its first parallel op, so a call on the main thread after the
    step thread has run never reached it. Before this was done here, the first
    round's count (1) stayed on every engine's step thread: the "2 threads" rows of
    bench/results/cpu_decode*.json ran our engines with one thread (checked for
    'auto': torch.get_num_threads() on the step thread read 1). llama.cpp's rows
    are unaffected (its own process, its own thread count)."""
    return eng._on_step_thread(fn)


def set_threads(eng: Engine, t: int) -> int:
    """On the step thread: the engine's own setting where it has one (engine/cpu_threads.py:
    decode steps run torch on one thread, the C kernels on t), else torch's count; returns
    the count now in force."""
    threads = getattr(eng.core, "cpu_threads", None)
    if threads is not None:
        threads.set(t)
        return threads.count
    torch.set_num_threads(t)
    return torch.get_num_threads()


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["results"]
    names = [f"{r['variant']}\n{r['threads']} thr" for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(14, 0.45 * len(rows) + 1.8))
    ax[0].barh(names, [r["tok_s_median"] for r in rows], color="tab:blue")
    ax[0].set_xlabel("decode tokens/s (median of rounds)")
    ax[1].barh(names, [1e3 * r["ttft_s_median"] for r in rows], color="tab:orange")
    ax[1].set_xlabel("first-token latency, ms")
    for a in ax:
        a.invert_yaxis()
        a.grid(axis="x", alpha=0.3)
    ax[1].set_yticklabels([])
    deep = f", after {out['fill']} tokens of context" if out.get("fill") else ""
    fig.suptitle(f"SmolLM2-135M, Engine.chat_sync on CPU ({out['cpu']}), {out['tokens']} tokens, batch 1{deep}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fill", type=int, default=0, help="raw tokens fed to each session before the measured turn")
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--llama-python", default=None, help="python of a venv with llama-cpp-python: also run llama.cpp (bench/llamacpp_decode.py)")
    ap.add_argument("--gguf", default=None, help="the GGUF file for --llama-python (the default model's source, see its SOURCE file)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    a = ap.parse_args()
    load0 = _loadavg()  # other processes on a shared machine: 1-minute load before and after
    engines = {v: Engine(EngineConfig(device="cpu", **VARIANTS[v])) for v in a.variants}
    runs: dict[tuple[str, int], list[dict]] = {(v, t): [] for v in a.variants for t in a.threads}
    llama_runs: dict[int, list[dict]] = {t: [] for t in a.threads} if a.llama_python else {}
    for r in range(a.rounds + 1):  # round 0 warms each engine up and is not kept
        for (v, t), kept in runs.items():
            on_step_thread(engines[v], lambda t=t: set_threads(engines[v], t))  # see on_step_thread
            sid = f"v{a.variants.index(v)}-{t}-{r}"
            res = one_turn(engines[v], sid, a.tokens if r else 8, a.fill)
            engines[v].close_session(sid)
            res["load_1m"] = (_loadavg() or [None])[0]  # at the end of this turn
            if r:
                kept.append(res)
                print(f"round {r} {v:34s} {t} thr: {res['tok_s']:6.1f} tok/s  ttft {1e3 * res['ttft_s']:6.0f} ms", flush=True)
        for t, kept in llama_runs.items():  # in the same rounds, so the same load falls on it
            if r:
                kept.append(_llama_cpp(a, t))
    for eng in engines.values():
        eng.close()
    llama = [{"variant": f"llama.cpp {Path(a.gguf).name}", "config": {"llama_cpp_python": kept[0]["llama_cpp_python"], "system_info": kept[0]["system_info"]},
              "threads": t, "tok_s_median": statistics.median(x["tok_s"] for x in kept),
              "ttft_s_median": statistics.median(x["ttft_s"] for x in kept), "rounds": kept} for t, kept in llama_runs.items()]
    out = {**header(), "cpu": _cpu_name(), "cpu_flags": _cpu_flags(), "tokens": a.tokens, "rounds": a.rounds, "fill": a.fill,
           "load_avg_start_end": [load0, _loadavg()], "results": [
        {"variant": v, "config": VARIANTS[v], "threads": t,
         "tok_s_median": statistics.median(x["tok_s"] for x in kept),
         "ttft_s_median": statistics.median(x["ttft_s"] for x in kept), "rounds": kept}
        for (v, t), kept in runs.items()] + llama}
    print(json.dumps([{k: r[k] for k in ("variant", "threads", "tok_s_median", "ttft_s_median")} for r in out["results"]], indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    if a.plot:
        plot(out, a.plot)


def _llama_cpp(a, threads: int) -> dict:
    """One llama.cpp round on the same prompt in its own venv and process (its own
    8-token warm-up first, as the engines' round 0), between the engines' rounds."""
    import subprocess

    if not a.gguf:
        raise SystemExit("--llama-python needs --gguf")
    cmd = [a.llama_python, str(Path(__file__).with_name("llamacpp_decode.py")), "--gguf", a.gguf, "--prompt", PROMPT,
           "--tokens", str(a.tokens), "--rounds", "1", "--threads", str(threads)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    res = {**out["rounds"][0], "llama_cpp_python": out["llama_cpp_python"], "system_info": out["system_info"], "load_1m": (_loadavg() or [None])[0]}
    print(f"llama.cpp {threads} thr: {res['tok_s']:6.1f} tok/s  ttft {1e3 * res['ttft_s']:6.0f} ms", flush=True)
    return res


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return "unknown"


def _cpu_flags() -> list[str]:
    """The vector extensions that decide which kernels are fast here (AVX2 only vs AVX-512/VNNI/BF16/AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


if __name__ == "__main__":
    main()
