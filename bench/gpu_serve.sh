#!/usr/bin/env bash
# Device call: the Serve app on one GPU (7B shape, random weights) under bench/load.py.
# carry [".whl", ".carry/r7b"]; writes under $OUT; a short table last.
set -uo pipefail
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 NCCL_NVLS_ENABLE=0
WHL=${WHL:-.whl}  # .carry/whlmin (bench/gpu_carry.sh) when .whl would not fit the carry beside a model
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHL"/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
rm -rf /tmp/r7b && cp -r "${MODEL_DIR:-.carry/r7b}" /tmp/r7b && { [ ! -f /tmp/r7b/tokenizer.json.gz ] || gunzip /tmp/r7b/tokenizer.json.gz; }  # MODEL_DIR=.carry/r7bz: gzipped tokenizer (gpu_carry.sh)
DURATION=${DURATION:-300} RATE=${RATE:-1.2} ROUNDS=${ROUNDS:-8} THINK=${THINK:-8} NAME=${NAME:-load_gpu_7b}
T0=$SECONDS
sed -e "s/ingress_replicas: 4/ingress_replicas: ${INGRESS:-4}/" -e "s/gil_switch_interval_ms: 0.5/gil_switch_interval_ms: ${GIL_MS:-0.5}/" -e "s/stream_interval_ms: 50/stream_interval_ms: ${PACE_MS:-50}/" \
  bench/serve_gpu7b.yaml > /tmp/serve_gpu7b.yaml
grep -E "ingress_replicas|stream_interval_ms" /tmp/serve_gpu7b.yaml
serve run /tmp/serve_gpu7b.yaml > /tmp/serve.log 2>&1 &
SERVE=$!
for i in $(seq 1 120); do curl -sf 127.0.0.1:8000/healthz > /dev/null && break; sleep 2; done
echo "healthy after $((SECONDS - T0))s: $(curl -s 127.0.0.1:8000/healthz)"
( while sleep 30; do echo "t=$((SECONDS - T0))s $(curl -s 127.0.0.1:8000/metrics | grep -E '^swiftinfer_(turns_total|sessions |completion_tokens_total)' | tr '\n' ' ') $(nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader)"; done ) &
WATCH=$!
if [ -n "${PROFILE_AT:-}" ] && ls .carry/prof/*.whl > /dev/null 2>&1; then  # py-spy on each Serve process, mid-run
  python3 -m pip install -q --no-index --no-deps --target /tmp/spy .carry/prof/*.whl
  ( sleep "$PROFILE_AT"; mkdir -p /tmp/prof
    for role in LLMReplica Ingress ProxyActor SessionDirectory; do
      for pid in $(pgrep -f "ray::.*$role" | head -2); do
        /tmp/spy/bin/py-spy record --nonblocking --format raw -r 50 -d 20 -o /tmp/prof/$role-$pid.txt -p "$pid" > /tmp/prof/$role-$pid.log 2>&1 &
      done
    done; wait; tar czf "$OUT/prof.tgz" -C /tmp prof ) &
fi
timeout $((DURATION + 170)) python3 bench/load.py --url http://127.0.0.1:8000 --sessions 64 --rounds "$ROUNDS" \
  --think-s "$THINK" --duration-s "$DURATION" --concurrency 256 --rate "$RATE" --max-tokens 64 --prompt-words 24 \
  --timeout-s 120 --retry-s 60 --metrics-every-s 5 --model llama2-7b-random --name "$NAME" --out "$OUT" > "$OUT/load.log" 2>&1
echo "load rc=$? at $((SECONDS - T0))s"
kill $WATCH
curl -s 127.0.0.1:8000/metrics > "$OUT/metrics_end.txt"  # per-phase turn times (swiftinfer_turn_phase_seconds) among them
grep -E '^swiftinfer_turn_phase_seconds' "$OUT/metrics_end.txt"
tail -300 /tmp/serve.log > "$OUT/serve_tail.log"
kill -INT $SERVE; sleep 3; kill -9 $SERVE 2>/dev/null
tail -25 "$OUT/load.log"
