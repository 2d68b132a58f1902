#!/usr/bin/env bash
# Device call: tune the quantized kernels' launch table for some batch buckets and time one decode
# step's weight products on the new table against the committed one, side by side on one GPU.
# carry [".carry/pyd"]. By default: the batch-1 int4 GEMV (its kernel variants among the
# candidates, kernels/quant_configs.py GEMV_VARIANTS); bench/gpu_gemm_sweep.sh runs it for the GEMMs.
#   SHAPES (default "llama2-7b llama3.1-8b")  BUDGET_S (sweep budget, default 300)
#   BATCHES / FORMATS (swept buckets and formats, default "1" / "int4")
#   TESTS (native test files first, default tests/kernels/test_quant_gemv.py; SKIP_TESTS set: none)  TESTS_S (default 200)
#   DECODE_FORMATS / DECODE_BATCHES (timed steps, default "bf16 int4" / "1")  DECODE_S (default 150)
#   NAME (the step files' stem, default quant_decode)  SWEEP_ARGS (more quant_decode.py --sweep arguments,
#   e.g. --sweep-dequant-only)
# Timing seen on an H100 (session 27): the first shape of each K compiles every candidate and
# variant (~48 kernels), 102 s for K=4096 and 74 s for K=11008; shapes of a K already seen take
# ~5 s. So a budget under ~250 s stops after the first shapes (the budget is checked between shapes).
# $OUT: sw/quant_configs.json (the swept sections only), sw/quant_sweep.json,
# ${NAME}_{table,tuned}.json/png (the committed table; it with every swept section in place),
# logs.tgz (the logs and that merged table, merged.json); a table last.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/pyd/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD
SHAPES=${SHAPES:-llama2-7b llama3.1-8b}
NAME=${NAME:-quant_decode}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ -z "${SKIP_TESTS:-}" ] && timeout "${TESTS_S:-200}" python3 -m pytest -q -p no:cacheprovider \
  ${TESTS:-tests/kernels/test_quant_gemv.py} > "$OUT/native_pytest.log" 2>&1
echo "native tests rc=$?: $(tail -1 "$OUT/native_pytest.log" 2>/dev/null)"
timeout $(( ${BUDGET_S:-300} + 120 )) python3 bench/quant_decode.py --sweep --sweep-batches ${BATCHES:-1} \
  --sweep-formats ${FORMATS:-int4} --shapes $SHAPES --budget-s "${BUDGET_S:-300}" ${SWEEP_ARGS:-} --out "$OUT/sw" > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"; grep -E "^int|best by variant" "$OUT/sweep.log"
# the committed table with every swept section (format and bucket) in place of its own
python3 - "$OUT/sw/quant_configs.json" swiftinfer_core/kernels/quant_configs.json "$OUT/merged.json" <<'PY'
import json, sys
swept, table = (json.load(open(p)) for p in sys.argv[1:3])
merged = []
for fmt, secs in swept["configs"].items():
    for b, sec in secs.items():
        table["configs"].setdefault(fmt, {})[b] = sec
        merged.append(f"{fmt} batch {b}")
table["merged_from"] = {", ".join(merged): swept.get("device"), "date": swept.get("date"), "rest": table.get("date")}
json.dump(table, open(sys.argv[3], "w"), indent=1)
PY
for t in table tuned; do
  cfgs=(); [ "$t" = tuned ] && cfgs=(--configs "$OUT/merged.json")
  timeout "${DECODE_S:-150}" python3 bench/quant_decode.py --formats ${DECODE_FORMATS:-bf16 int4} --batches ${DECODE_BATCHES:-1} \
    --shapes $SHAPES "${cfgs[@]}" --name "${NAME}_$t" --out "$OUT" > "$OUT/decode_$t.log" 2>&1
  echo "== $t rc=$?"; grep -E "^ *(shape|llama)" "$OUT/decode_$t.log"
done
# at most 8 files come back from a call: the logs and the merged table go in one tarball
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log merged.json)
ls -R "$OUT"
