#!/usr/bin/env bash
# Device call (issue 17): 1-3 LLM replicas sharing one H200 (bench/serve_gpu7b_shared.yaml,
# gpu_share 0.33), driven through a closed-loop ramp (bench/autoscale_ramp.py) up to about the
# capacity of 3 replicas and back down. Env: PHASES (default "16:45 64:90 140:90 48:75 16:60"),
# NAME (default autoscale_7b). carry [".whl", ".carry/r7b"]; logs and results in $OUT/results.tgz.
# Written without a GPU: not run yet.
set -uo pipefail
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 NCCL_NVLS_ENABLE=0
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
PHASES=${PHASES:-16:45 64:90 140:90 48:75 16:60} NAME=${NAME:-autoscale_7b}
rm -rf /tmp/model && cp -r .carry/r7b /tmp/model
serve run bench/serve_gpu7b_shared.yaml > "$OUT/serve.log" 2>&1 &
t=$SECONDS
for i in $(seq 1 150); do curl -sf 127.0.0.1:8000/healthz > /dev/null && break; sleep 2; done
echo "healthy after $((SECONDS - t))s" | tee -a "$OUT/summary.txt"
timeout 520 python3 bench/autoscale_ramp.py --url http://127.0.0.1:8000 --phases $PHASES --name "$NAME" --out "$OUT" \
  2>&1 | tee "$OUT/ramp.log" | tail -12
cp -r /tmp/ray/session_latest/logs "$OUT/ray_logs" 2>/dev/null
pkill -INT -f "serve run"; sleep 4; ray stop --force > /dev/null 2>&1
(cd "$OUT" && tar czf results.tgz --remove-files $(ls | grep -v -E '^(summary.txt|results.tgz)$'))
tail -12 "$OUT/summary.txt"
