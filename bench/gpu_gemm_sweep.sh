#!/usr/bin/env bash
# Device call: bench/gpu_quant_sweep.sh for the batched int4/int8 products. It tunes the GEMM
# buckets (the fused GEMMs of kernels/quant_gemm.py and, from 64 rows, the dequantise-then-cuBLAS
# path of kernels/quant_dequant.py, both in the candidates), then times one decode step's weight
# products on the new table against the committed one. carry [".carry/pyd"].
# Defaults here (each overridable, as are gpu_quant_sweep.sh's other variables):
#   SHAPES "llama2-7b"  BATCHES "32 128 16 256"  FORMATS "int4 int8"  BUDGET_S 180
#   TESTS "tests/kernels/test_quant_dequant.py tests/kernels/test_quant_gemm.py" (TESTS_S 100)
#   DECODE_FORMATS "bf16 int8 int4"  DECODE_BATCHES "16 32 128 1024" (DECODE_S 140)  NAME quant_decode_gemm
export SHAPES=${SHAPES:-llama2-7b} BATCHES=${BATCHES:-32 128 16 256} FORMATS=${FORMATS:-int4 int8} BUDGET_S=${BUDGET_S:-180}
export TESTS=${TESTS:-tests/kernels/test_quant_dequant.py tests/kernels/test_quant_gemm.py} TESTS_S=${TESTS_S:-100}
export DECODE_FORMATS=${DECODE_FORMATS:-bf16 int8 int4} DECODE_BATCHES=${DECODE_BATCHES:-16 32 128 1024} DECODE_S=${DECODE_S:-140}
export NAME=${NAME:-quant_decode_gemm}
exec bash "$(dirname "$0")/gpu_quant_sweep.sh"
