#!/usr/bin/env bash
# Device call (issue 11): the real Engine at every batch size beside batched_decode,
# and the pre-fix bug reproduced in its own process. Also parks the first half of the
# default model for a following gpu_session.sh call (see ../shared/device/stage-smollm2.sh).
# carry [".carry/smol-a", ".carry/pyd", ".carry/r7b"]; writes under $OUT; a short table last.
set -uo pipefail
export PYTHONUNBUFFERED=1
mkdir -p /tmp/stage && cp .carry/smol-a/* /tmp/stage/
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .carry/pyd/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"; tail -${TAIL:-14} "$OUT/$name.log"; }
want() { [[ " ${STEPS:-repro batches} " == *" $1 "* ]]; }
want repro && step repro 170 python3 bench/engine_batches.py --model .carry/r7b --drop-workspaces --sizes 48 64 \
  --rounds 2 --max-sessions 128 --name engine_batches_repro --out "$OUT"
want batches && step batches 420 python3 bench/engine_batches.py --model .carry/r7b --out "$OUT"
echo; cat "$OUT/summary.txt"
