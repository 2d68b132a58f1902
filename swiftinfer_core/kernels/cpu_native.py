"""The CPU decode kernels of cpu_native_*.c: compiled once per machine, called through ctypes.

``load()`` compiles the C files (cpu_native.h says what each holds) with the machine's C compiler (``$CC``, else gcc,
else cc) for the machine's own instruction set (``-march=native``: AVX2/FMA on
the project's box) into ``~/.cache/swiftinfer/native/`` (one file per source,
compiler and CPU; a second process finds it there, ~1 s to build otherwise),
and returns the kernels, or None with the reason logged when there is no
compiler or the build fails: callers then keep the torch path
(EngineConfig.cpu_native_kernels).

ctypes releases the GIL during a call, so the engine's asyncio thread runs
while a step computes. Tensors are passed by address: every wrapper checks
dtype, device and contiguity first, since C reads whatever memory it is given.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = [HERE / f"cpu_native_{part}.c" for part in ("gemv", "attn", "layer", "gguf", "pool")]
HEADER = HERE / "cpu_native.h"
FLAGS = ["-O3", "-march=native", "-pthread", "-shared", "-fPIC"]
PROLOGUES = {"none": 0, "rmsnorm": 1, "silu_mul": 2}  # cpu_native.h PRO_*

_P, _I64, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "si_gemv_i8": [_P, _I64, _I64, _I64, _I, _P, _F, _P, _P, _P, _I64, _P, _P, _I],
    "si_attn_decode": [_P, _I64, _I64, _I64, _P, _P, _I64, _P, _P, _I64, _I64, _P, _P, _P, _P, _F, _P, _I],
    "si_decode_layer": [_P, _I64, _I64, _F, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I64, _P, _P, _I64, _I64, _I64,
                        _P, _P, _I64, _P, _P, _P, _P, _P, _P, _P, _F, _I],
    "si_gemv_gguf": [_P, _I64, _I64, _I, _P, _P, _P, _P, _I64, _I],
}
GGUF_QTYPES = {"Q8_0": 0, "Q4_0": 1, "Q4_1": 2}  # cpu_native_gguf.c; Q4_K stays on the torch ops
GGUF_MAX_ROWS = 64


def _check(rc: int) -> None:
    if rc != 0:
        raise MemoryError("cpu_native: the kernel could not allocate its scratch memory")


def _ptr(t: torch.Tensor | None, dtype: torch.dtype, name: str) -> int | None:
    """Address of a contiguous CPU tensor of ``dtype`` (None passes NULL)."""
    if t is None:
        return None
    if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{name}: needs a contiguous CPU {dtype} tensor, got {t.dtype} on {t.device}, strides {t.stride()}")
    return t.data_ptr()


class NativeKernels:
    """Typed wrappers over the compiled library (shapes in each docstring)."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.lib, self.path = lib, path
        self.threads: int | None = None  # worker threads of each call; None: torch.get_num_threads() (engine/cpu_threads.py)
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int

    def _nthreads(self) -> int:
        return self.threads or torch.get_num_threads()

    def gemv_i8(self, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                prologue: str = "none", norm_w: torch.Tensor | None = None, eps: float = 0.0,
                residual: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] float32 ([M, 2K] for 'silu_mul': silu(x[:, :K]) * x[:, K:]); q [N, K] int8;
        scale [N] float32 -> y [M, N] float32 = prologue(x) @ (q * scale)^T + bias + residual.
        ``out`` (may be ``residual`` itself) receives y; 'rmsnorm' normalises x with ``norm_w`` [K]."""
        M, N, K = x.shape[0], q.shape[0], q.shape[1]
        if x.dim() != 2 or x.shape[1] != (2 * K if prologue == "silu_mul" else K):
            raise ValueError(f"x {tuple(x.shape)} does not fit q {tuple(q.shape)} with prologue {prologue}")
        if (prologue == "rmsnorm") != (norm_w is not None) or (norm_w is not None and norm_w.shape != (K,)):
            raise ValueError("norm_w [K] goes with prologue 'rmsnorm' and only then")
        for name, t in (("scale", scale), ("bias", bias)):
            if t is not None and t.shape != (N,):
                raise ValueError(f"{name} must be [{N}], got {tuple(t.shape)}")
        for name, t in (("residual", residual), ("out", out)):
            if t is not None and t.shape != (M, N):
                raise ValueError(f"{name} must be [{M}, {N}], got {tuple(t.shape)}")
        y = out if out is not None else torch.empty(M, N)
        _check(self.lib.si_gemv_i8(_ptr(x, torch.float32, "x"), M, K, x.shape[1], PROLOGUES[prologue],
                            _ptr(norm_w, torch.float32, "norm_w"), eps, _ptr(q, torch.int8, "q"),
                            _ptr(scale, torch.float32, "scale"), _ptr(bias, torch.float32, "bias"), N,
                            _ptr(residual, torch.float32, "residual"), _ptr(y, torch.float32, "out"),
                            self._nthreads()))
        return y

    def gemv_gguf(self, x: torch.Tensor, qtype: str, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        """x [M, K] float32 (M <= GGUF_MAX_ROWS) @ W^T -> [M, N] float32 for W [N, K] in GGUF blocks
        (model/gguf_blocks.py layout: qs int8 [N, K] for Q8_0, uint8 [N, K/2] for Q4_0/Q4_1; d, m float16 [N, K/32])."""
        M, K = x.shape
        N = qs.shape[0]
        code = GGUF_QTYPES[qtype]
        if M > GGUF_MAX_ROWS or K % 32 or qs.shape[1] != (K if code == 0 else K // 2) or d.shape != (N, K // 32):
            raise ValueError(f"gemv_gguf: x {tuple(x.shape)} does not fit {qtype} qs {tuple(qs.shape)} d {tuple(d.shape)}")
        if (code == 2) != (m is not None) or (m is not None and m.shape != d.shape):
            raise ValueError("gemv_gguf: m [N, K/32] goes with Q4_1 and only then")
        y = torch.empty(M, N)
        _check(self.lib.si_gemv_gguf(_ptr(x, torch.float32, "x"), M, K, code,
                                     _ptr(qs, torch.int8 if code == 0 else torch.uint8, "qs"), _ptr(d, torch.float16, "d"),
                                     _ptr(m, torch.float16, "m"), _ptr(y, torch.float32, "y"), N, self._nthreads()))
        return y

    def attn_decode(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_slot: torch.Tensor,
                    v_slot: torch.Tensor, row: int, fill: int, cos: torch.Tensor, sin: torch.Tensor,
                    q_cos: torch.Tensor, q_sin: torch.Tensor, scale: float, out: torch.Tensor) -> None:
        """One sequence, one layer: q [Hq, D]; k_new, v_new [Hkv, D]; k_slot, v_slot [Hkv, cap, D]
        (written at ``row``, attended over rows < ``fill``); cos, sin [fill, D]; q_cos, q_sin [D];
        out [Hq, D] (see cpu_native_attn.c)."""
        hq, D = q.shape
        hkv, cap = k_slot.shape[0], k_slot.shape[1]
        if hq % hkv or k_new.shape != (hkv, D) or v_new.shape != (hkv, D) or v_slot.shape != k_slot.shape \
                or k_slot.shape[2] != D or not 0 <= row < fill <= cap or cos.shape != (fill, D) or sin.shape != (fill, D) \
                or q_cos.shape != (D,) or q_sin.shape != (D,) or out.shape != (hq, D) or D % 2:
            raise ValueError(f"attn_decode: shapes do not fit (q {tuple(q.shape)}, cache {tuple(k_slot.shape)}, "
                             f"row {row}, fill {fill}, cos {tuple(cos.shape)})")
        f32 = torch.float32
        _check(self.lib.si_attn_decode(_ptr(q, f32, "q"), hq, hkv, D, _ptr(k_slot, f32, "k_slot"), _ptr(v_slot, f32, "v_slot"), cap,
                                _ptr(k_new, f32, "k_new"), _ptr(v_new, f32, "v_new"), row, fill,
                                _ptr(cos, f32, "cos"), _ptr(sin, f32, "sin"), _ptr(q_cos, f32, "q_cos"),
                                _ptr(q_sin, f32, "q_sin"), scale, _ptr(out, f32, "out"), self._nthreads()))

    def decode_layer(self, weights: tuple, h: torch.Tensor, k_layer: torch.Tensor, v_layer: torch.Tensor,
                     seqs: "SeqArrays", scale: float) -> None:
        """One Llama layer of a decode step (cpu_native_layer.c): h [B, hidden] float32 updated in
        place; ``weights`` from model/cpu_decode.py's checked binding (addresses and sizes:
        eps, attn_norm, wqkv, sqkv, bqkv, wo, so, mlp_norm, w13, s13, inter, w2, s2, Hq, Hkv, D);
        k_layer, v_layer [slots, Hkv, cap, D] float32; ``seqs`` the step's sequences."""
        B, hidden = h.shape
        if B != seqs.n or k_layer.shape != v_layer.shape or k_layer.shape[1:] != (weights[14], seqs.cap, weights[15]):
            raise ValueError(f"decode_layer: h {tuple(h.shape)}, cache {tuple(k_layer.shape)}, {seqs.n} sequences")
        _check(self.lib.si_decode_layer(_ptr(h, torch.float32, "h"), B, hidden, *weights,
                                        _ptr(k_layer, torch.float32, "k_layer"), _ptr(v_layer, torch.float32, "v_layer"),
                                        seqs.cap, *seqs.arrays, scale, self._nthreads()))


class SeqArrays:
    """A decode step's sequences as C arrays (kernels/torch_decode.py _DecodeSeq each):
    slot, row, fill (int64) and the addresses of cos, sin, q_cos, q_sin. Holds the
    tensors, so the addresses stay valid while it lives."""

    def __init__(self, seqs: list, cap: int):
        self.n, self.cap, self._keep = len(seqs), cap, []
        f32 = torch.float32
        ptrs = []
        for name in ("cos", "sin", "q_cos", "q_sin"):
            ts = [getattr(s, name) for s in seqs]
            self._keep.extend(ts)
            ptrs.append((ctypes.c_void_p * self.n)(*(_ptr(t, f32, name) for t in ts)))
        ints = [(ctypes.c_int64 * self.n)(*(getattr(s, f) for s in seqs)) for f in ("slot", "row", "fill")]
        self.arrays = (*ints, *ptrs)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model name and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))


def library_path(cache_dir: Path, cc: str) -> Path:
    """Where this source, compiler and CPU's build lives."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    texts = [p.read_text() for p in (*SOURCES, HEADER)]
    key = hashlib.sha256("\0".join([*texts, cc, version, " ".join(FLAGS), _cpu_id()]).encode()).hexdigest()[:16]
    return cache_dir / f"cpu_native-{key}.so"


def build(cache_dir: Path) -> Path:
    """Compile the cpu_native_*.c files (unless this machine's build is cached) and return the library's path.
    Raises RuntimeError with the compiler's message when it cannot."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set CC, or install gcc)")
    path = library_path(cache_dir, cc)
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)  # same directory: os.replace is atomic
    os.close(fd)
    try:
        res = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed: {res.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@functools.cache
def load(cache_dir: Path | None = None) -> NativeKernels | None:
    """The kernels, built on first use in this process; None (logged) when they cannot be built."""
    # beside the models (model/fetch.py): $SWIFTINFER_HOME, else ~/.cache/swiftinfer
    cache_dir = cache_dir or Path(os.environ.get("SWIFTINFER_HOME", Path.home() / ".cache" / "swiftinfer")) / "native"
    try:
        path = build(cache_dir)
        return NativeKernels(ctypes.CDLL(str(path)), path)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.warning("CPU native kernels unavailable, using torch ops: %s", exc)
        return None
