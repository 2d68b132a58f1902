#!/usr/bin/env bash
# Device call, no model needed, carry [".carry/pyd"]: the batch-1 chain's GPU tests, then issue 16's batch-1 step
# per weight format with the chain on and off (bench/formats_step.py), where the step's time goes
# (bench/step_profile.py: kernel families, launches and gaps) and the FP8 GEMV's tiles (bench/fp8_gemv_sweep.py).
#   STEPS="tests formats" bash bench/gpu_batch1.sh; then STEPS="profile sweep" (back to back, ~4 min each on an H100)
# Env: STEPS (tests formats profile sweep), SHAPES, FORMATS, SWEEP_S (the sweep's budget, s), NAME (a results suffix)
set -uo pipefail
DEFAULT_STEPS="tests formats profile sweep" TAIL=${TAIL:-40}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"
pyd_setup
SHAPES=${SHAPES:-llama2-7b llama3.1-8b} FORMATS=${FORMATS:-bf16 fp8 int8 int4} SUFFIX=${NAME:-}
want tests && step chain_tests ${TESTS_S:-200} python3 -m pytest -q -m "gpu or not gpu" -p no:cacheprovider -rs \
  tests/kernels/test_gemv_fusion.py tests/kernels/test_gemv.py tests/kernels/test_fp8_gemv.py tests/model/test_fused_decode.py
want formats && step formats_b1 ${FORMATS_S:-330} python3 bench/formats_step.py --shapes $SHAPES --formats $FORMATS \
  --kv bf16 --batches 1 --no-fit --chain both --steps 40 --name "formats_chain_b1$SUFFIX" --out "$OUT"
want profile && step step_profile ${PROFILE_S:-200} python3 bench/step_profile.py --shapes $SHAPES \
  --formats $FORMATS --chain both --reps 10 --name "step_profile$SUFFIX" --out "$OUT"
want sweep && step fp8_gemv_sweep $(( ${SWEEP_S:-120} + 90 )) python3 bench/fp8_gemv_sweep.py --shapes $SHAPES \
  --budget-s ${SWEEP_S:-120} --name "fp8_gemv_sweep$SUFFIX" --out "$OUT"
cat "$OUT/summary.txt"
