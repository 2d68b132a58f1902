"""Shared bench bits: import path, device/version info, copy bandwidth, timing,
JSON + PNG writers. Bench scripts import only torch, triton, matplotlib and
swiftinfer_core submodules that need no pydantic (the GPU image lacks it)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            out[mod] = None
    out["cuda"] = torch.version.cuda
    return out


def device_info() -> dict:
    if not torch.cuda.is_available():
        return {"name": "cpu"}
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "sms": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
            "l2_mib": round(getattr(p, "L2_cache_size", 0) / 2**20, 1), "capability": f"{p.major}.{p.minor}"}


# Vendor datasheet peaks by a substring of torch's device name: dense (no sparsity)
# bf16 tensor-core FLOP/s and HBM bytes/s. The H100 SXM reports "H100 80GB HBM3".
DEVICE_PEAKS = {
    "H200": {"bf16_dense_flops": 989e12, "hbm_Bps": 4.8e12},
    "H100 80GB HBM3": {"bf16_dense_flops": 989e12, "hbm_Bps": 3.35e12},
}


def device_peaks(name: str | None = None) -> dict:
    """{"bf16_dense_flops", "hbm_Bps"} of the current (or the named) device; None values
    for a device missing from DEVICE_PEAKS (and for the CPU)."""
    name = name if name is not None else device_info()["name"]
    for key, peaks in DEVICE_PEAKS.items():
        if key in name:
            return {"device": name, "matched": key, **peaks}
    return {"device": name, "matched": None, "bf16_dense_flops": None, "hbm_Bps": None}


def header() -> dict:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "device": device_info(),
        "versions": versions(),
        "host": platform.node(),
    }


def copy_bandwidth(gib: float = 2.0, reps: int = 20) -> float:
    """Device-to-device copy, bytes read + written per second (median)."""
    n = int(gib * 2**30) // 2
    a = torch.randn(n // 2, dtype=torch.float32, device="cuda").view(torch.bfloat16)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * n * 2 / statistics.median(ts)


def time_graph(fn, reps: int = 10, warmup: int = 2) -> tuple[float, torch.cuda.CUDAGraph]:
    """Capture fn() in a CUDA graph; median seconds per replay over reps."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # compile / warm up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(warmup):
        g.replay()
    ts = []
    for _ in range(reps):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        g.replay()
        en.record()
        en.synchronize()
        ts.append(st.elapsed_time(en) / 1e3)
    return statistics.median(ts), g


def time_eager(fn, reps: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        fn()
        en.record()
        en.synchronize()
        ts.append(st.elapsed_time(en) / 1e3)
    return statistics.median(ts)


WEIGHT_KERNELS = ("gemm", "gemv", "nvjet", "cutlass", "xmma", "sm90_", "cublas")  # cuBLAS / Triton weight products
DECODE_ATTENTION_KERNELS = ("_decode_split_kernel", "decode_combine")


def kernel_ms_by_family(fn, families: tuple[tuple[str, tuple[str, ...]], ...], reps: int = 3, top: int | None = 12) -> dict:
    """GPU ms per call of ``fn`` by kernel family (torch.profiler, CUDA activity; kernels
    inside CUDA graph replays included): a kernel belongs to the first family one of
    whose name pieces it contains, else to "other". Plus "total" and the ``top`` kernels
    by time (None: every kernel), each with its calls per call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # compile and allocate outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {f: 0.0 for f, _ in families} | {"other": 0.0}
    kernels = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if not us or ev.key.startswith("cuda"):  # runtime calls, not kernels
            continue
        name = ev.key.lower()
        fam = next((f for f, keys in families if any(k.lower() in name for k in keys)), "other")
        out[fam] += us / 1e3 / reps
        kernels.append({"ms": round(us / 1e3 / reps, 4), "calls": ev.count // reps, "name": ev.key[:90]})
    kernels.sort(key=lambda t: -t["ms"])
    return {k: round(v, 4) for k, v in out.items()} | {"total": round(sum(out.values()), 4), "top": kernels[:top]}


def module_at(rev: str, path: str, name: str):
    """The repo's module ``path`` as of git revision ``rev``, imported as ``name``
    (a baseline measured side by side with the working tree's version)."""
    import importlib.util
    import subprocess
    import tempfile

    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def timed(fn, reps: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``reps`` calls after ``warmup`` calls; the
    device is synced before each call, and ``fn`` must end in a host sync itself."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def write_results(name: str, data: dict, out_dir: str | None = None) -> Path:
    d = Path(out_dir or os.environ.get("OUT") or RESULTS)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json"
    path.write_text(json.dumps({**header(), **data}, indent=1, default=str))
    print(f"wrote {path}")
    return path


def save_plot(name: str, fig, out_dir: str | None = None) -> Path:
    d = Path(out_dir or os.environ.get("OUT") or RESULTS)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")
    return path


def table(rows: list[dict], cols: list[str]) -> str:
    w = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.rjust(w[c]) for c in cols)]
    lines += ["  ".join(_fmt(r.get(c)).rjust(w[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
