"""CPU decode of the default model (``quantization: auto``, the int8 C kernels) at 1 and 2
threads, with the C kernels of another git revision ("before") and of this checkout
("after"), side by side in one run.

    python bench/cpu_decode_threads.py --before 6fd28d9 --tokens 200 --rounds 5 --threads 1 2 \\
        --json bench/results/cpu_decode_threads.json --plot bench/results/cpu_decode_threads.png

Each library gets its own Engine (loaded once); the "before" engine's decoder is
pointed at the other revision's kernels, built from its cpu_native_*.c into a
temporary folder (the ctypes signatures must be the same). Same measured turn as
bench/cpu_decode.py (fresh session, ~74-token prompt, ``max_tokens`` with
``ignore_eos``; tok/s after the first token).

Threads: set on the engine's step thread itself (bench/cpu_decode.py set_threads,
posted through the engine's inbox): the engine's own setting where it has one
(engine/cpu_threads.py), else torch.set_num_threads, which sets only the calling
thread's OpenMP count (and what threads it starts later inherit).

Rounds alternate between (library, threads) pairs. Load from other processes is
measured per turn as the CPU time all other processes took during it
(/proc/stat busy time minus this process's); a round in which any turn saw more
than ``--disturbed`` core-seconds per second of others' work is kept in the JSON
but left out of the medians and run again (up to ``--max-rounds`` in all).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.common import header  # noqa: E402
from bench.cpu_decode import _cpu_flags, _cpu_name, _loadavg, on_step_thread, set_threads  # noqa: E402
from bench.cpu_decode import one_turn as cpu_decode_turn  # noqa: E402
from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.engine.engine import Engine  # noqa: E402
from swiftinfer_core.kernels import cpu_native  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build_revision(rev: str, out: Path) -> cpu_native.NativeKernels:
    """The C kernels of git revision ``rev``, compiled as cpu_native.build compiles this checkout's."""
    files = subprocess.run(["git", "ls-tree", "--name-only", rev, "swiftinfer_core/kernels/"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    srcs = [f for f in files if Path(f).name.startswith("cpu_native") and f.endswith((".c", ".h"))]
    for f in srcs:
        (out / Path(f).name).write_text(subprocess.run(["git", "show", f"{rev}:{f}"], cwd=ROOT, check=True,
                                                       capture_output=True, text=True).stdout)
    lib = out / "cpu_native.so"
    cc = cpu_native._compiler()
    subprocess.run([cc, *cpu_native.FLAGS, *(str(out / Path(f).name) for f in srcs if f.endswith(".c")), "-o", str(lib), "-lm"],
                   check=True)
    return cpu_native.NativeKernels(ctypes.CDLL(str(lib)), lib)


def cpu_busy_s() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, of this process) so far."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    busy = (sum(f[:8]) - f[3] - f[4]) / tick  # all but idle and iowait (guest time is inside user)
    t = os.times()
    return busy, t.user + t.system


def one_turn(eng: Engine, sid: str, tokens: int) -> dict:
    """bench/cpu_decode.py's measured turn, with the CPU others used meanwhile."""
    b0, s0 = cpu_busy_s()
    t0 = time.perf_counter()
    res = cpu_decode_turn(eng, sid, tokens)
    wall = time.perf_counter() - t0
    b1, s1 = cpu_busy_s()
    return res | {"others_cpu_per_s": max(0.0, (b1 - b0) - (s1 - s0)) / wall, "self_cpu_per_s": (s1 - s0) / wall}


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["results"]
    names = [f"{r['library']}\n{r['threads']} thr" for r in rows]
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(rows) + 1.6))
    bars = ax.barh(names, [r["tok_s_median"] for r in rows], color=["tab:gray" if r["library"].startswith("before") else "tab:blue" for r in rows])
    for b, r in zip(bars, rows):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {r['tok_s_median']:.1f}", va="center")
    for ref in out.get("llama_cpp_reference", []):
        ax.axvline(ref["tok_s_median"], ls="--", color="tab:red" if ref["threads"] == 2 else "tab:orange", lw=1,
                   label=f"llama.cpp {ref['threads']} thr: {ref['tok_s_median']:.1f}\n({ref['cpu']}, {ref['date'][:10]})")
    if out.get("llama_cpp_reference"):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="earlier run, other CPU", title_fontsize=7)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"decode tokens/s, median of {out['kept_rounds']} undisturbed alternated rounds")
    ax.set_title(f"SmolLM2-135M int8 C kernels, Engine.chat_sync, {out['tokens']} tokens, batch 1\n{out['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="HEAD", help="git revision whose C kernels are 'before'")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5, help="undisturbed rounds wanted")
    ap.add_argument("--max-rounds", type=int, default=12)
    ap.add_argument("--disturbed", type=float, default=0.15, help="others' CPU (cores) during a turn that disturbs a round")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--llama-cpp-json", type=Path, default=ROOT / "bench/results/cpu_decode.json",
                    help="an earlier bench/cpu_decode.py run whose llama.cpp rows are drawn for reference")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    a = ap.parse_args()
    load0 = _loadavg()
    rev = subprocess.run(["git", "rev-parse", "--short", a.before], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "swiftinfer_core"], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip())
    tmp = tempfile.TemporaryDirectory()
    libs = {f"before ({rev})": build_revision(a.before, Path(tmp.name)), f"after ({head}{'+changes' if dirty else ''})": None}
    engines = {}
    for name, kern in libs.items():
        eng = Engine(EngineConfig(device="cpu", quantization="auto"))
        dec = eng.core.runner.model.cpu_decode
        if dec is None:
            raise SystemExit("the engine has no C decoder here (no compiler?)")
        if kern is not None:
            dec.kernels = kern
        engines[name] = eng
    pairs = [(name, t) for name in libs for t in a.threads]
    rounds: list[dict] = []
    for r in range(a.max_rounds + 1):  # round 0 warms each engine up and is not kept
        turns = []
        for name, t in pairs:
            eng = engines[name]
            seen = on_step_thread(eng, lambda t=t: set_threads(eng, t))
            if seen != t:
                raise SystemExit(f"the step thread runs {seen} threads, not {t}")
            sid = f"l{list(libs).index(name)}-{t}-{r}"
            res = one_turn(eng, sid, a.tokens if r else 8)
            eng.close_session(sid)
            res.update(library=name, threads=t, load_1m=(_loadavg() or [None])[0])
            turns.append(res)
            if r:
                print(f"round {r} {name:28s} {t} thr: {res['tok_s']:6.1f} tok/s  others' CPU {res['others_cpu_per_s']:.2f}"
                      f"  load {res['load_1m']}", flush=True)
        if not r:
            continue
        disturbed = max(x["others_cpu_per_s"] for x in turns) > a.disturbed
        rounds.append({"round": r, "disturbed": disturbed, "turns": turns})
        if sum(not x["disturbed"] for x in rounds) >= a.rounds:
            break
    for eng in engines.values():
        eng.close()
    kept = [x for x in rounds if not x["disturbed"]]
    results = []
    for name, t in pairs:
        got = [u for x in kept for u in x["turns"] if u["library"] == name and u["threads"] == t]
        results.append({"library": name, "threads": t, "tok_s_median": statistics.median(u["tok_s"] for u in got) if got else None,
                        "ttft_s_median": statistics.median(u["ttft_s"] for u in got) if got else None,
                        "tok_s_all_kept": [u["tok_s"] for u in got]})
    llama = []
    if a.llama_cpp_json and a.llama_cpp_json.exists():
        prev = json.loads(a.llama_cpp_json.read_text())
        llama = [{"threads": x["threads"], "tok_s_median": x["tok_s_median"], "from": str(a.llama_cpp_json.relative_to(ROOT)),
                  "date": prev.get("date"), "cpu": prev.get("cpu")} for x in prev["results"] if x["variant"].startswith("llama.cpp")]
    out = {**header(), "cpu": _cpu_name(), "cpu_flags": _cpu_flags(), "tokens": a.tokens, "before": a.before,
           "disturbed_threshold_cores": a.disturbed, "kept_rounds": len(kept), "load_avg_start_end": [load0, _loadavg()],
           "results": results, "llama_cpp_reference": llama, "rounds": rounds}
    print(json.dumps([{k: r[k] for k in ("library", "threads", "tok_s_median")} for r in results], indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    if a.plot:
        plot(out, a.plot)


if __name__ == "__main__":
    main()
