"""Launch configurations of the quantized kernels (kernels/quant_gemv.py for one
row, kernels/quant_gemm.py for more): an explicit table per format and batch
bucket, optionally refined per weight shape by a tuning file.

A config is a dict:
  block_n  weight rows (outputs) per program
  block_k  input columns per K step (int4: a multiple of 32 = one packed block;
           int8 GEMV: of 16 = one 16-byte vector; GEMM: >= 128 for int4's 8 dots of K/8 >= 16)
  block_m  (GEMM only) batch rows per program: tl.dot's N side, >= 16
  warps, stages   num_warps and the K loop's software-pipelining depth
  waves    split-K target: cut K until programs >= waves * SMs (0: never split)
  math     (int4 GEMV only, optional) "f32" (missing = "f32") or "h2": the packed-half-pair
           kernel of kernels/quant_gemv_h2.py (symmetric int4; zero points stay on "f32")
  prefetch (int4 "f32" GEMV only, optional, missing = 0) 0, 1 or 2: how many K steps ahead
           each thread loads its weight words into registers, so more bytes are in flight
  l2_only  (int4 "f32" GEMV only, optional, missing = false) the weight words bypass L1 (.cg)
  x_resident (int4 "f32" GEMV only, optional, missing = false) kernels/quant_gemv_xres.py: a
           program loads x for one K chunk (block_k columns) once and walks rows, block_n
           per step; waves then sets the rows per program (prefetch 0 or 1 applies, l2_only not)
  pdl      (int4 "f32" GEMV and x_resident, optional, missing = false) launch with programmatic
           dependent launch (Hopper): the kernel lets the next one start at once, and loads its
           first weight words before it waits for the previous kernel (griddepcontrol.wait)
           and reads x, so a chain of GEMVs overlaps one's launch and weight ramp with the
           other's tail. Ignored before compute capability 9.0 and under the interpreter
  l2_prefetch (int4 "f32" GEMV and x_resident, optional, missing = false) each program first asks
           L2 for its whole weight range (prefetch.global.L2), before the wait of "pdl"
  dequant_mib (GEMM only, optional, missing = 0) > 0: kernels/quant_dequant.py, the weight dequantised
           that many MiB of rows at a time into x's dtype, each chunk multiplied by cuBLAS (torch.mm);
           the tile keys are then unused

Why a table and not triton.autotune: autotune re-times every config in every new
process on its first call (a server start would stall for seconds per shape, and
a first call inside a CUDA-graph capture cannot be timed at all), and it keys on
exact sizes, so each batch size would retune. Here the choice is a dict lookup;
``bench/quant_decode.py --sweep`` times the candidates on the GPU once and writes
a file in this module's JSON format. Loaded at import, in order: the file named by
$SWIFTINFER_QUANT_CONFIGS, else quant_configs.json beside this module (the tuned
table committed for the H200), else only the defaults below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BUCKETS = (1, 16, 32, 64, 128, 256, 512)  # batch rows: 1 is the GEMV; larger M (prefill chunks) use 512
MAX_SPLIT = 32

# Guesses from the H200's shape (132 SMs, 4.8 TB/s); the sweep replaces them.
DEFAULTS: dict[str, dict[int, dict]] = {
    "int4": {
        1: dict(block_n=32, block_k=512, warps=4, stages=1, waves=4),
        16: dict(block_m=16, block_n=64, block_k=128, warps=4, stages=3, waves=4),
        32: dict(block_m=32, block_n=64, block_k=128, warps=4, stages=3, waves=4),
        64: dict(block_m=64, block_n=64, block_k=128, warps=4, stages=3, waves=2),
        128: dict(block_m=128, block_n=128, block_k=128, warps=8, stages=3, waves=1),
        256: dict(block_m=128, block_n=128, block_k=128, warps=8, stages=3, waves=1),
        512: dict(block_m=128, block_n=128, block_k=128, warps=8, stages=3, waves=1, dequant_mib=32),
    },
    "int8": {
        1: dict(block_n=32, block_k=256, warps=4, stages=1, waves=4),
        16: dict(block_m=16, block_n=64, block_k=128, warps=4, stages=3, waves=4),
        32: dict(block_m=32, block_n=64, block_k=128, warps=4, stages=3, waves=4),
        64: dict(block_m=64, block_n=64, block_k=128, warps=4, stages=3, waves=2),
        128: dict(block_m=128, block_n=128, block_k=64, warps=8, stages=3, waves=1),
        256: dict(block_m=128, block_n=128, block_k=64, warps=8, stages=3, waves=1),
        512: dict(block_m=128, block_n=128, block_k=64, warps=8, stages=3, waves=1, dequant_mib=1024),
    },
}
# Beyond 256 rows the weight is dequantised and cuBLAS multiplies (dequant_mib). Llama-2-7B's five
# shapes on an H100 (bench/results/quant_sweep_dequant_h100.json, one run): at 1024 rows the fused
# GEMM took 1.66-1.77x the dequantised path's time for int4 and 1.25-1.33x for int8 (the dequantised
# path 0.41-0.45x of bf16's time for int4, 0.51-0.62x for int8); at 128 rows the GEMM was the faster,
# 0.34-0.69x (int4) and 0.36-0.81x (int8) of the dequantised path's time. The crossover, ~300-400
# rows if both scale linearly between, was not measured. The tile keys stay for fp8, which reads
# int8's table (FALLBACK) and ignores dequant_mib: its own dequantised path was the slower at 512 rows
# (0.48x of bf16 against the GEMM's 0.64x, bench/results/fp8_decode_splitk_h100.json).

# What ``--sweep`` tries (waves is a launch argument: no extra compile).
GEMV_CANDIDATES = {
    "int4": [(16, 512, 4), (32, 256, 4), (32, 512, 4), (32, 1024, 4), (32, 512, 8), (64, 512, 4), (64, 512, 8), (64, 1024, 8)],
    "int8": [(16, 256, 4), (32, 128, 4), (32, 256, 4), (32, 512, 4), (32, 256, 8), (64, 256, 4), (64, 256, 8), (64, 512, 8)],
}  # (block_n, block_k, warps), each with stages 1 and 3. Rows per thread = block_n / (warps *
# 32 / (block_k / 32 or 16)): more rows amortise x's loads and conversions (offline sm_90 builds:
# int4 4.6 instructions per weight at 4 rows, 4.2 at 8; int8 5.7 and 5.2) but cost registers
GEMM_CANDIDATES = {
    "int4": [(64, 128, 4, 3), (64, 256, 4, 2), (128, 128, 4, 3), (128, 128, 8, 3), (128, 256, 8, 2), (64, 128, 4, 4)],
    "int8": [(64, 64, 4, 4), (64, 128, 4, 3), (128, 64, 4, 4), (128, 128, 8, 3), (128, 64, 8, 4), (64, 256, 4, 2)],
}  # (block_n, block_k, warps, stages); block_m is the bucket, capped at 128
# The dequantise-then-cuBLAS path's chunk sizes the sweep tries at 64 rows and more, in MiB. The
# H100's L2 is 50 MiB and the H200's 60, so chunks of 8-32 MiB are read back from L2; 1024 takes
# a Llama-7B/8B weight whole (at most 224 MiB in bf16).
DEQUANT_MIB = (8, 16, 32, 1024)
WAVES = (0, 1, 2, 4, 8)
# The sweep tries each GEMV candidate in each math listed here. "h2" (kernels/quant_gemv_h2.py)
# measured 0.88-0.92x of "f32" per Llama shape on an H100 (bench/quant_h2_ab.py), so the
# sweep leaves it out (halving its batch-1 points); add it back to try it on another card.
GEMV_MATHS = {"int4": ("f32",), "int8": ("f32",)}
# What the sweep adds to each int4 "f32" GEMV tile (at stages 1 only: Triton's own pipelining
# and the register prefetch are alternatives, not stacked): more weight bytes in flight per
# thread, and weight words that leave L1 to x's pieces.
GEMV_VARIANTS = {"int4": (dict(prefetch=1), dict(prefetch=2), dict(l2_only=True), dict(prefetch=1, l2_only=True),
                          dict(prefetch=1, pdl=True)), "int8": ()}
# The x-resident int4 GEMV's configs the sweep adds (kernels/quant_gemv_xres.py; block_n rows per
# step, block_k columns per program's K chunk, warps), each in XRES_MATHS at XRES_WAVES, prefetch
# 1, stages 1. Only the leaders of session 28's H100 runs (bench/quant_xres_ab.py): h2 at 4-8 rows
# per step and waves 8-16. Every x-resident config was slower than the default kernel there
# (f32 0.72-0.78x, h2 0.89-0.95x), so the full grid (f32, block_k 512-2048, waves 1-16, pdl)
# is left to that bench instead of costing every sweep ~200 compiles.
GEMV_XRES = {"int4": [(4, 1024, 2), (4, 1024, 4), (8, 1024, 4)], "int8": []}
XRES_MATHS = ("h2",)
XRES_WAVES = (8, 16)
# Formats without a table of their own: int4 with zero points (one more 2-byte load per
# group and, in the GEMM, an fma instead of a multiply per weight) tiles as int4 until a
# tuning file has an "int4_zp" section (the sweep does not time it yet). fp8 (kernels/fp8_gemm.py,
# the int8 GEMM's layout over plain e4m3 bytes: a byte per weight) tiles as int8.
FALLBACK = {"int4_zp": "int4", "fp8": "int8"}

_tuned: dict[str, dict[str, dict[str, dict]]] = {}  # fmt -> bucket -> ("default" | "NxK") -> config


def bucket(m: int) -> int:
    """The table's batch bucket for m rows: the smallest bucket >= m (512 beyond)."""
    return next((b for b in BUCKETS if m <= b), BUCKETS[-1])


def config(fmt: str, m: int, n: int, k: int) -> dict:
    """The config for an [m, k] x [n, k]^T product in ``fmt`` ("int8"/"int4"/"int4_zp"/"fp8"):
    the tuned one for this shape, else the tuned bucket default (a FALLBACK format's
    the same way), else the table."""
    b = bucket(m)
    for f in (fmt, FALLBACK.get(fmt)):
        tuned = _tuned.get(f, {}).get(str(b), {})
        found = tuned.get(f"{n}x{k}") or tuned.get("default")
        if found:
            return dict(found)
    return dict(DEFAULTS[FALLBACK.get(fmt, fmt)][b])


def gemv_variant(cfg: dict) -> tuple[int, bool]:
    """(prefetch, l2_only) of an int4 GEMV config, missing keys at their defaults (0, False);
    ValueError if either is not one the kernel has."""
    prefetch, l2_only = cfg.get("prefetch", 0), cfg.get("l2_only", False)
    if prefetch not in (0, 1, 2) or not isinstance(l2_only, bool):
        raise ValueError(f'int4 GEMV config "prefetch" must be 0, 1 or 2 and "l2_only" a bool, got {prefetch!r}, {l2_only!r}')
    return prefetch, l2_only


def _flag(cfg: dict, key: str) -> bool:
    flag = cfg.get(key, False)
    if not isinstance(flag, bool):
        raise ValueError(f'GEMV config "{key}" must be a bool, got {flag!r}')
    return flag


def x_resident(cfg: dict) -> bool:
    """Whether an int4 GEMV config runs kernels/quant_gemv_xres.py (missing = False);
    ValueError unless a bool."""
    return _flag(cfg, "x_resident")


def pdl(cfg: dict) -> bool:
    """Whether a GEMV config launches with programmatic dependent launch (missing = False);
    ValueError unless a bool."""
    return _flag(cfg, "pdl")


def dequant_mib(cfg: dict) -> int:
    """An int4/int8 GEMM config's "dequant_mib" (missing = 0: the fused kernels); > 0: the product goes
    through kernels/quant_dequant.py in chunks of that many MiB. ValueError if not an int >= 0."""
    mib = cfg.get("dequant_mib", 0)
    if not isinstance(mib, int) or isinstance(mib, bool) or mib < 0:
        raise ValueError(f'GEMM config "dequant_mib" must be an int >= 0, got {mib!r}')
    return mib


def l2_prefetch(cfg: dict) -> bool:
    """Whether a GEMV config's programs prefetch their weight range into L2 first (missing = False)."""
    return _flag(cfg, "l2_prefetch")


def pick_split(tiles: int, steps: int, sms: int, waves: int) -> tuple[int, int]:
    """(split, steps per split) for ``tiles`` output tiles whose K loop has
    ``steps`` steps: the fewest parts giving >= waves * sms programs, no part empty."""
    if waves <= 0 or steps <= 1:
        return 1, max(steps, 1)
    want = -(-waves * sms // tiles)
    split = max(1, min(want, steps, MAX_SPLIT))
    per = -(-steps // split)
    return -(-steps // per), per


def load(path: str | os.PathLike) -> None:
    """Replace the tuned configs with those of a JSON file written by the sweep."""
    data = json.loads(Path(path).read_text())
    _tuned.clear()
    _tuned.update(data["configs"])


def reset() -> None:
    """Forget tuned configs: the defaults only (tests)."""
    _tuned.clear()


def _load_at_import() -> None:
    env = os.environ.get("SWIFTINFER_QUANT_CONFIGS")
    packaged = Path(__file__).with_name("quant_configs.json")
    if env:
        load(env)
    elif packaged.exists():
        load(packaged)


_load_at_import()
