#!/usr/bin/env bash
# Device call (issue 11): the real Engine at every batch size beside batched_decode,
# and the bug reproduced: the code before the fix (.carry/old: cuda_graph.py and
# runner.py of e94975e) and the fixed code with its workspaces dropped, each in its
# own process. Also parks the first part of the default model for the
# gpu_session.sh calls (bench/gpu_stage.sh).
# carry [".carry/smol-1", ".carry/pyd", ".carry/r7b", ".carry/old"]; writes under $OUT; a short table last.
set -uo pipefail
export PYTHONUNBUFFERED=1
bash bench/gpu_stage.sh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .carry/pyd/*.whl || exit 4
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
DEFAULT_STEPS="oldcode repro batches"
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"
SMALL=(--model "$PWD/.carry/r7b" --sizes 64 --rounds 3 --max-sessions 128 --no-bare)
if want oldcode && [ -d .carry/old ]; then
  rm -rf /tmp/old && mkdir /tmp/old && cp -r swiftinfer_core bench /tmp/old/ && cp .carry/old/*.py /tmp/old/swiftinfer_core/engine/
  (cd /tmp/old && step oldcode 150 python3 bench/engine_batches.py "${SMALL[@]}" --name engine_batches_oldcode --out "$OUT")
fi
want repro && step repro 150 python3 bench/engine_batches.py "${SMALL[@]}" --drop-workspaces --name engine_batches_repro --out "$OUT"
want batches && step batches 360 python3 bench/engine_batches.py --model .carry/r7b --out "$OUT"
echo; cat "$OUT/summary.txt"
