#!/usr/bin/env bash
# One device call that runs the real-model GPU checks and benches (STEPS picks them).
# Needs, from three earlier calls (bench/gpu_stage.sh): .carry/smol-1 to -3 parked, and
#   carry [".carry/smol-4", ".carry/pyd", ".carry/data"].
# Writes everything under $OUT; prints a short table last.
set -uo pipefail
export PYTHONUNBUFFERED=1 SWIFTINFER_HOME=/tmp/swh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_stage.sh" && join_gguf
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .carry/pyd/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD
mkdir -p "$SWIFTINFER_HOME" && cp .carry/data/shakespeare.txt "$SWIFTINFER_HOME/shakespeare.txt"
python3 -m swiftinfer_core.model.fetch "$GGUF" 2>&1 | grep -v "it/s" | tail -2
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
DEFAULT_STEPS="gpu_tests ppl_1m multiround" TAIL=${TAIL:-25}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"
want gpu_tests && step gpu_tests 200 python3 -m pytest -q -m gpu tests/engine/test_gpu_engine.py tests/model/test_fused_decode.py -p no:cacheprovider
want ppl_1m && step ppl_1m 200 python3 -m swiftinfer_core.cli.main eval-ppl --text "$SWIFTINFER_HOME/shakespeare.txt" \
  --tokens 1000000 --sinks 4 --window 1020 --modes streaming,dense,window,recompute --prefix-tokens 20000 \
  --recompute-sample 2000 --recompute-last 100000 --segment 100000 --device cuda --dtype float32 \
  --json "$OUT/ppl_1m.json" --plot "$OUT/ppl_1m.png"
want decode_latency && step decode_latency 300 python3 bench/decode_latency.py --models llama2-7b smollm2-135m --out "$OUT"
want multiround && step multiround 300 python3 bench/multiround.py --rounds 20 --tokens 96 --out "$OUT"
echo; cat "$OUT/summary.txt"
