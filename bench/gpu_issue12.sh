#!/usr/bin/env bash
# Device call (issue 12, the profiles behind the missed targets), one H200, ~6 min:
#  bd7, bd8  bench/batched_decode.py --breakdown at the 7B and 8B shapes, N >= 64, full 4+1020 and 4+2044
#            caches: tokens/s against (weights + KV) / copy bandwidth, and each step's kernel time split
#            into decode attention, weight products and the rest;
#  mixed8, mixed7  bench/mixed_step.py at both shapes: a warm turn's chunk beside B decode rows, with the
#            host's issue time per step (host-bound or GPU-bound) and the kernels of the decode-graph and
#            piecewise steps by family (--profile);
#  fp8kv     (issue 16) bench/fp8_kv_decode.py at 4+2044: the whole decode step with the FP8 cache against bf16.
# carry [".carry/pyd", ".carry/r8b", ".carry/r7bz"] (WHL=.carry/whlmin installs that instead of .carry/pyd); results land in $OUT (a short table last).
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "${WHL:-.carry/pyd}"/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD
for m in r8b r7bz; do rm -rf "/tmp/$m" && cp -r ".carry/$m" "/tmp/$m" && gunzip -f "/tmp/$m/tokenizer.json.gz"; done
DEFAULT_STEPS="bd7 bd8 mixed8 mixed7 fp8kv" TAIL=${TAIL:-12}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"
want bd7 && step bd7 150 python3 bench/batched_decode.py --shape llama2-7b --batches 64 128 --variants engine --breakdown \
  --steps 30 --name batched_decode_7b_r2 --out "$OUT"
want bd8 && step bd8 170 python3 bench/batched_decode.py --shape llama3.1-8b --batches 64 128 256 --variants engine --breakdown \
  --steps 30 --name batched_decode_8b --out "$OUT"
want mixed8 && step mixed8 120 python3 bench/mixed_step.py --model /tmp/r8b --decode 0 64 128 256 --chunks 40 256 --slots 257 \
  --profile --name "mixed_step_8b${SUFFIX:-}" --out "$OUT"
want mixed7 && step mixed7 100 python3 bench/mixed_step.py --model /tmp/r7bz --decode 0 128 --chunks 40 --slots 192 \
  --profile --name "mixed_step_7b${SUFFIX:-_r2}" --out "$OUT"
want fp8kv && step fp8kv 240 python3 bench/fp8_kv_decode.py --window 2044 --out "$OUT"
(cd "$OUT" && tar czf results.tgz --remove-files $(ls | grep -v -E '^(summary.txt|results.tgz)$'))
cat "$OUT/summary.txt"
