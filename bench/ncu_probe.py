"""Launch one kernel family a few times on real shapes, for Nsight Compute to profile.

The timing benches (kernels_decode.py, quant_h2_ab.py) say how far a kernel is from
copy bandwidth; this says why: run it under ``ncu`` (bench/gpu_ncu.sh) and read the
stall reasons, occupancy and DRAM throughput per launch. Each target is launched
``--launches`` times on fresh inputs (ncu flushes the caches before each profiled
pass, so every launch reads from HBM as a real layer does).

    attn   decode attention, Llama-2-7B MHA (32/32 x 128) and GQA (32/8 x 128), 4+2044
           full caches, 32 conversations: the bf16 cache at TritonAttention's default
           tiles and the FP8 cache at FP8_DECODE_TILES
    gemv   batch-1 int4 GEMV (group 128, the launch table's config) on Llama-2-7B's
           four layer weights

    python3 bench/ncu_probe.py attn|gemv [--launches 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

SINKS, WINDOW, BATCH = 4, 2044, 32
ATTN_SHAPES = (("MHA", 32, 32, 128), ("GQA", 32, 8, 128))
GEMV_SHAPES = ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008))  # 7B qkv, o, gate-up, down


def attn(launches: int) -> None:
    from kernels_decode import DEFAULT, FP8_DEFAULT, layer_cache

    from swiftinfer_core.kernels.decode_attention import decode_attention
    from swiftinfer_core.kernels.rope import inv_freq

    dev, cap = "cuda", SINKS + WINDOW
    for name, hq, hkv, d in ATTN_SHAPES:
        for kv in ("bf16", "fp8"):
            block_n, _, _, stages, _, _ = FP8_DEFAULT if kv == "fp8" else DEFAULT  # the engine's tiles
            k, v, ks, vs = layer_cache(BATCH, hkv, cap, d, kv, dev)
            q = torch.randn(BATCH, hq, d, device=dev, dtype=torch.bfloat16)
            kn, vn = (torch.randn(BATCH, hkv, d, device=dev, dtype=torch.bfloat16) for _ in range(2))
            slots = torch.arange(BATCH, dtype=torch.int32, device=dev)
            starts = torch.tensor([10 * cap + 7 * b for b in range(BATCH)], dtype=torch.int64, device=dev)
            freqs = inv_freq(d, 10000.0).to(dev)
            for _ in range(launches):
                decode_attention(q, kn, vn, k, v, slots, starts, freqs, d**-0.5, SINKS, WINDOW,
                                 block_n=block_n, stages=stages, k_scale=ks, v_scale=vs)
            torch.cuda.synchronize()
            print(f"attn {name} {kv}: block_n {block_n} stages {stages}, {launches} launches", flush=True)


def gemv(launches: int) -> None:
    from swiftinfer_core.kernels.quant_gemv import gemv_int4
    from swiftinfer_core.model.quant import QuantFormat, quantize

    dev = "cuda"
    for n, k in GEMV_SHAPES:
        qw = quantize(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02, QuantFormat.INT4, 128)
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        for _ in range(launches):
            gemv_int4(x, qw.qweight, qw.scales, k, 128)
        torch.cuda.synchronize()
        print(f"gemv int4 {n}x{k}: {launches} launches", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=("attn", "gemv"))
    ap.add_argument("--launches", type=int, default=2)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("ncu_probe.py needs a CUDA GPU")
    {"attn": attn, "gemv": gemv}[args.target](args.launches)


if __name__ == "__main__":
    main()
