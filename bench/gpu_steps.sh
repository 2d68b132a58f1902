# Sourced by the device-call scripts (gpu_session.sh, gpu_batches.sh, gpu_capacity.sh).
#   step NAME LIMIT CMD...  runs CMD under `timeout LIMIT` with its output in $OUT/NAME.log,
#                           appends "NAME rc=.. Ns" to $OUT/summary.txt, shows the log's last $TAIL lines
#   want NAME               true when NAME is among $STEPS (the caller's DEFAULT_STEPS if unset)
#   pyd_setup               the kernel-only calls' start: .carry/pyd's wheels into /tmp/site (exit 4 if not), the card
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"; tail -"${TAIL:-14}" "$OUT/$name.log"; }
want() { [[ " ${STEPS:-$DEFAULT_STEPS} " == *" $1 "* ]]; }
pyd_setup() { export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .carry/pyd/*.whl || exit 4
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader; }
