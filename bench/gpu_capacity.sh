#!/usr/bin/env bash
# Device call (issues 11/12): on one H200, 7B shape (random bf16, 4+1020, 128 slots):
#  1. the pre-fix fault reproduced on the fixed code by freeing the graphs' workspaces;
#  2. the engine alone at 64 and 128 conversations, 4 rounds x 64 tokens, 24-word prompts;
#  3. the whole Serve stack (bench/serve_gpu7b.yaml), closed loop, the same work: 64 then 128
#     sessions arriving together, no think time, audited against the session log;
#  4. a device fault injected into the replica: seconds until turns are served again.
# carry [".whl", ".carry/r7b"]; writes under $OUT; a short table last.
set -uo pipefail
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 NCCL_NVLS_ENABLE=0
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
rm -rf /tmp/r7b && cp -r .carry/r7b /tmp/r7b
T0=$SECONDS
DEFAULT_STEPS="repro engine serve closed fault" TAIL=${TAIL:-6}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"
want repro && step repro 100 python3 bench/engine_batches.py --model /tmp/r7b --drop-workspaces --sizes 64 \
  --rounds 2 --max-sessions 128 --no-bare --name engine_batches_repro --out "$OUT"
want engine && step engine 200 python3 bench/engine_batches.py --model /tmp/r7b --sizes 64 128 --max-sessions 128 \
  --rounds 4 --words 24 --no-bare --name capacity_engine_7b --out "$OUT"
if want serve; then
  sed -e 's|^    import_path: deployments.app.builder:build_app|    import_path: deployments.app.builder:build_app\n    runtime_env: {env_vars: {SWIFTINFER_FAULT_INJECTION: "1"}}|' bench/serve_gpu7b.yaml > /tmp/serve.yaml
  serve run /tmp/serve.yaml > /tmp/serve.log 2>&1 &
  SERVE=$!
  for i in $(seq 1 120); do curl -sf 127.0.0.1:8000/healthz > /dev/null && break; sleep 2; done
  echo "healthy after $((SECONDS - T0))s: $(curl -s 127.0.0.1:8000/healthz)"
  want closed && for n in 64 128; do
    step closed_$n 200 python3 bench/load.py --url http://127.0.0.1:8000 --sessions $n --rate 1000 --think-s 0 --rounds 4 \
      --max-tokens 64 --prompt-words 24 --timeout-s 120 --retry-s 60 --metrics-every-s 2 --model llama2-7b-random \
      --name capacity_serve_7b_$n --out "$OUT"
  done
  want fault && step fault 240 python3 bench/fault_recovery.py --sessions 8 --out "$OUT"
  curl -s 127.0.0.1:8000/metrics > /tmp/metrics_end.txt
  kill -INT $SERVE; sleep 3; kill -9 $SERVE 2>/dev/null
  cp /tmp/serve.log /tmp/metrics_end.txt "$OUT"/; cp -r /tmp/ray/session_latest/logs/serve "$OUT"/serve_logs 2>/dev/null
fi
# 8 files come back: the JSON reports, the summary and one tarball of the rest
(cd "$OUT" && tar czf logs.tgz --remove-files $(ls | grep -v -E '^(summary.txt|[a-z_0-9]+[0-9a-z]\.json)$' | grep -v partial.json; ls *.partial.json 2>/dev/null))
ls "$OUT"; echo; cat "$OUT/summary.txt"
