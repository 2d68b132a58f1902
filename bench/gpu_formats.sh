#!/usr/bin/env bash
# Device call, no model needed, carry [".carry/pyd"]: issue 16's matrix (bench/formats_step.py) and the
# GPU tests of the fp8 kernels and of that bench's byte counts, and the e4m3 row quantization's tiles (bench/fp8_row_quant.py).
#   SHAPES=llama2-7b bash bench/gpu_formats.sh      (then SHAPES=llama3.1-8b STEPS=formats)
# Env: STEPS (tests, rowquant, formats), SHAPES, FORMATS_S (the bench's time limit, s), FORMATS_ARGS (more flags).
set -uo pipefail
DEFAULT_STEPS="tests rowquant formats" TAIL=${TAIL:-30}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"
pyd_setup
# -k: the tests that read the default model wait for the stage calls (bench/gpu_stage.sh)
want tests && step fp8_tests ${TESTS_S:-150} python3 -m pytest -q -m "gpu or not gpu" -p no:cacheprovider -rs \
  -k "not refuses_fp8_at_start and not refused_at_load and not resolve_into" tests/kernels/test_fp8_scaled_mm.py tests/model/test_fp8_linear.py tests/bench/test_formats_step.py
want rowquant && step rowquant ${ROWQUANT_S:-150} python3 bench/fp8_row_quant.py --out "$OUT"
for shape in ${SHAPES:-llama2-7b}; do
  want formats && step "formats_$shape" ${FORMATS_S:-420} python3 bench/formats_step.py --shapes "$shape" --steps 20 \
    --formats bf16 fp8 fp8-down2 int8 int4 --name "formats_step_$shape" --out "$OUT" ${FORMATS_ARGS:-}
done
cat "$OUT/summary.txt"
