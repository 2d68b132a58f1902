#!/usr/bin/env bash
# Device call, no model needed, carry [".carry/pyd"]: where the batch-1 step's time goes (bench/step_profile.py:
# kernel families, launches and gaps per weight format, chain on and off) and the FP8 GEMV's tiles
# (bench/fp8_gemv_sweep.py: per layer shape, with and without the chain's folds).
#   bash bench/gpu_batch1.sh      Env: STEPS (profile, sweep), SHAPES, FORMATS, SWEEP_S (the sweep's budget, s)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .carry/pyd/*.whl || exit 4
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
DEFAULT_STEPS="profile sweep" TAIL=${TAIL:-40}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"
SHAPES=${SHAPES:-llama2-7b llama3.1-8b}
want profile && step step_profile ${PROFILE_S:-240} python3 bench/step_profile.py --shapes $SHAPES \
  --formats ${FORMATS:-bf16 fp8 int4} --chain both --reps 10 --name "${NAME:-step_profile}" --out "$OUT"
want sweep && step fp8_gemv_sweep $(( ${SWEEP_S:-200} + 90 )) python3 bench/fp8_gemv_sweep.py --shapes $SHAPES \
  --budget-s ${SWEEP_S:-200} --name "${SWEEP_NAME:-fp8_gemv_sweep}" --out "$OUT"
cat "$OUT/summary.txt"
