"""Offline sm_90 builds of the quantized kernels, no GPU needed: compile each
kernel of kernels/quant_gemv.py and quant_gemm.py for Hopper with Triton's
bundled ptxas, then count the SASS instructions of the main K loop (the first
backward branch) per weight a thread handles. The GEMV is issue-bound on the
H200 (4.8 TB/s of int4 is ~9.6e12 weights/s; 132 SMs issue ~3.3e13 instructions/s),
so instructions per weight bound its share of the roofline; registers and
shared-memory round trips (LDS/STS in the loop) show up here too. The int4 GEMV
is built with both maths (config "math": "f32" and "h2", kernels/quant_gemv_h2.py,
its inline PTX on; f32 in each variant of GEMV_VARIANTS), at the table's config and at
twice its rows per program.

    python bench/quant_sass.py                # the table's default configs
    python bench/quant_sass.py --sass DIR     # and keep each kernel's SASS in DIR
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before the kernels import: real compiles
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from swiftinfer_core.kernels import quant_configs as qc
from swiftinfer_core.kernels import quant_gemm as gm
from swiftinfer_core.kernels import quant_gemv as gv
from swiftinfer_core.kernels import quant_gemv_h2 as h2

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
PTR = {"X": "*bf16", "S": "*bf16", "MN": "*bf16", "Y": "*bf16", "WS": "*fp32", "CNT": "*i32", "Q": "*i32",
       "NW": "*bf16", "RES": "*fp32", "eps": "fp32", "SSI": "*fp32", "NWN": "*bf16", "XN": "*bf16", "SSO": "*fp32"}
NO_FOLDS = dict(PRO=0, HAS_RES=False, HANDOFF=False)  # kernels/gemv_fusion.py: the plain product
DIV16 = {"X", "Q", "S", "Y", "WS", "CNT", "N", "K", "KB", "NG", "stride_xm", "stride_ym"}  # as at the 7B shapes


def build(fn, consts: dict, warps: int, stages: int, types: dict | None = None, div16: set | None = None):
    """An sm_90 build of ``fn``: ``types`` of the non-constexpr arguments (default PTR;
    others i32), ``div16`` the arguments known to be multiples of 16 (default DIV16)."""
    types, div16 = PTR if types is None else types, DIV16 if div16 is None else div16
    names = fn.arg_names
    sig = {a: "constexpr" if a in consts else types.get(a, "i32") for a in names}
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in names if a in div16}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(a),): v for a, v in consts.items()}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def loop_mix(kernel) -> tuple[str, list[str], str]:
    """(register/shared usage, opcodes of the first loop, the SASS) of a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([BIN / "cuobjdump", "-sass", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([BIN / "cuobjdump", "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    ins = [(int(m[1], 16), m[3], m[4]) for m in
           re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)([^;]*);", sass)]
    for addr, op, rest in ins:
        t = re.search(r"0x([0-9a-f]+)", rest)
        if op.startswith("BRA") and t and int(t[1], 16) < addr:
            usage = re.search(r"REG:\d+ STACK:\d+ SHARED:\d+", res)
            return (usage[0] if usage else "?"), [o.split(".")[0] for a, o, _ in ins if int(t[1], 16) <= a <= addr], sass
    return "?", [], sass


def gemv_builds(fmt: str, c: dict) -> list[tuple[str, object, dict, int, float]]:
    """(label, kernel, constexprs, warps, weights per thread per loop trip) of the batch-1
    kernels for config c: int8's; int4's f32 and h2 maths at c and at 2x block_n."""
    if fmt == "int8":
        return [("int8 b=1  ", gv._gemv_int8_kernel, dict(BLOCK_N=c["block_n"], NB=c["block_k"] // 16, STAGES=c["stages"], **NO_FOLDS),
                 c["warps"], c["block_n"] * c["block_k"] / (32 * c["warps"]))]
    out = []
    for bn in (c["block_n"], 2 * c["block_n"]):
        base = dict(BLOCK_N=bn, NB=c["block_k"] // 32, STAGES=c["stages"], BPG=4)  # group 128
        weights = bn * c["block_k"] / (32 * c["warps"])
        for v in ({}, *qc.GEMV_VARIANTS["int4"]):  # the variants the sweep tries
            prefetch, l2_only = qc.gemv_variant(v)
            consts = dict(base, ZP=False, PREFETCH=prefetch, CG=l2_only, PDL=qc.pdl(v), L2PF=False, **NO_FOLDS)
            out.append((f"int4 b=1 f32 n{bn:<3} {v}", gv._gemv_int4_kernel, consts, c["warps"], weights))
        out.append((f"int4 b=1 h2  n{bn:<3}", h2.gemv_int4_h2_kernel, dict(base, FAST=True), c["warps"], weights))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sass", default=None, help="folder to keep each kernel's SASS in")
    args = ap.parse_args()
    mma = dict(MMA=tl.bfloat16, PREC="tf32")
    for fmt in ("int4", "int8"):
        for b in qc.BUCKETS:
            c = qc.DEFAULTS[fmt][b]
            if b == 1:
                builds = gemv_builds(fmt, c)
            else:
                consts = dict(BLOCK_M=c["block_m"], BLOCK_N=c["block_n"], BLOCK_K=c["block_k"], STAGES=c["stages"], **mma)
                if fmt == "int4":
                    consts.update(BPG=4, ZP=False)  # group 128, symmetric
                fn = gm._gemm_int4_kernel if fmt == "int4" else gm._gemm_int8_kernel
                builds = [(f"{fmt} b={b:<3}", fn, consts, c["warps"], c["block_n"] * c["block_k"] / (32 * c["warps"]))]
            for label, fn, consts, warps, weights in builds:
                k = build(fn, consts, warps, c["stages"])
                usage, ops, sass = loop_mix(k)
                top = ", ".join(f"{o} {n}" for o, n in Counter(ops).most_common(8))
                print(f"{label:<20} {usage}  loop {len(ops)} instr = {len(ops) / weights:.2f}/weight  [{top}]", flush=True)
                if args.sass:
                    Path(args.sass).mkdir(parents=True, exist_ok=True)
                    (Path(args.sass) / f"{label.replace(' ', '_').replace('=', '').strip('_')}.sass").write_text(sass)


if __name__ == "__main__":
    main()
