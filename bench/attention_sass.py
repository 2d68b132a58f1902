"""Offline sm_90 build of the decode attention kernel, no GPU needed: compile
kernels/decode_attention.py's split kernel for Hopper with Triton's bundled ptxas,
bf16 cache against FP8 cache (with a bf16 query, so the float16 tile path F16 of
kernels/kv_fp8_decode_tl.py), and count the SASS of its main loop (one K/V tile
per iteration), registers, shared-memory reads (LDS, LDSM) and local-memory spills
(STACK; LDL/STL in the loop).

Why: on the H200 the FP8 variant takes 457 us per layer against bf16's 307 us at
32 conversations, 4+2044 (bench/results/kernels_decode_fp8.json), although it reads
half the bytes; no launch setting helped, so the cost is in the instructions. The
loop-instruction ratio this prints is the first thing to move.

    python bench/attention_sass.py [--block-n 64] [--warps 4] [--stages 3] [--sass DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before the kernels import: real compiles
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from quant_sass import build, loop_mix  # noqa: E402

from swiftinfer_core.kernels import decode_attention as da  # noqa: E402

FLOATS = {"scale_log2", "SCALE_CAP", "CAP_LOG2"}
DIV16 = {"Q", "K_NEW", "V_NEW", "K_CACHE", "V_CACHE", "K_SCALE", "V_SCALE", "ACC", "ML", "OUT",
         "sc_s", "sc_h", "sc_r", "ss_s", "ss_h", "sq_b", "sq_h", "sn_b", "sn_h", "so_b", "so_h"}  # as at the 7B shape


def build_decode(fp8: bool, block_n: int, warps: int, stages: int, group: int = 1, hkv: int = 32):
    """The split kernel at Llama-2-7B's heads (head_dim 128; group = Hq / Hkv)."""
    fn = da._decode_split_kernel
    cache = "*fp8e4nv" if fp8 else "*bf16"
    ptr = {"Q": "*bf16", "K_NEW": "*bf16", "V_NEW": "*bf16", "K_CACHE": cache, "V_CACHE": cache, "K_SCALE": "*fp32",
           "V_SCALE": "*fp32", "SLOTS": "*i32", "STARTS": "*i64", "FREQS": "*fp32", "SLOPES": "*fp32", "ACC": "*fp32",
           "ML": "*fp32", "SEM": "*i32", "OUT": "*bf16"}
    consts = dict(HKV=hkv, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HALF=64, HALF_PAD=64, D_PAD=128,
                  HAS_CAP=False, HAS_ALIBI=False, HAS_SLIDING=False, BLOCK_N=block_n, FUSE_NEW=True, MMA=tl.bfloat16, PREC="tf32",
                  STAGES=stages, FAST=True, FUSED_COMBINE=False, SPLIT_PAD=2, FP8=fp8, F16=fp8)
    return build(fn, consts, warps, stages, types={**ptr, **dict.fromkeys(FLOATS, "fp32")}, div16=DIV16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block-n", type=int, default=64)
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--group", type=int, default=1, help="query heads per KV head (1: Llama-2-7B, 4: Llama-3.1-8B)")
    ap.add_argument("--sass", default=None, help="folder to keep each build's SASS and TTGIR in")
    args = ap.parse_args()
    counts = {}
    for fp8 in (False, True):
        k = build_decode(fp8, args.block_n, args.warps, args.stages, args.group, 32 // args.group)
        usage, ops, sass = loop_mix(k)
        name = "fp8" if fp8 else "bf16"
        counts[name] = len(ops)
        c = Counter(ops)
        top = ", ".join(f"{o} {n}" for o, n in c.most_common(10))
        mem = f"LDS {c['LDS']} LDSM {c['LDSM']} STS {c['STS']} LDL/STL {c['LDL'] + c['STL']}"  # shared-memory reads, spills
        print(f"{name:4s} {usage}  loop {len(ops)} instr per {args.block_n}-key tile  {mem}  [{top}]")
        if args.sass:
            Path(args.sass).mkdir(parents=True, exist_ok=True)
            (Path(args.sass) / f"decode_{name}.sass").write_text(sass)
            (Path(args.sass) / f"decode_{name}.ttgir").write_text(k.asm["ttgir"])
    print(f"fp8 / bf16 loop instructions: {counts['fp8'] / counts['bf16']:.2f}")


if __name__ == "__main__":
    main()
