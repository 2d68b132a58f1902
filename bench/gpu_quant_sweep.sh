#!/usr/bin/env bash
# Device call: tune the batch-1 int4 GEMV (its kernel variants among the candidates,
# kernels/quant_configs.py GEMV_VARIANTS) and time one decode step's weight products on the
# new table against the committed one, side by side on one GPU. carry [".carry/pyd"].
#   SHAPES (default "llama2-7b llama3.1-8b")   BUDGET_S (sweep budget, default 300)
# Timing seen on an H100 (session 27): the first shape of each K compiles every candidate and
# variant (~48 kernels), 102 s for K=4096 and 74 s for K=11008; shapes of a K already seen take
# ~5 s. So a budget under ~250 s stops after the first shapes (the budget is checked between shapes).
# $OUT: sw/quant_configs.json (the sweep's table: int4 batch 1 only), sw/quant_sweep.json,
# quant_decode_{table,tuned}.json/png (the committed table; it with the swept section in place),
# logs.tgz (the logs and that merged table, merged.json); a table last.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/pyd/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD
SHAPES=${SHAPES:-llama2-7b llama3.1-8b}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_quant_gemv.py > "$OUT/quant_gemv_pytest.log" 2>&1
echo "native tests rc=$?: $(tail -1 "$OUT/quant_gemv_pytest.log")"
timeout $(( ${BUDGET_S:-300} + 120 )) python3 bench/quant_decode.py --sweep --sweep-batches 1 --sweep-formats int4 \
  --shapes $SHAPES --budget-s "${BUDGET_S:-300}" --out "$OUT/sw" > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"; grep -E "^int4|best by variant" "$OUT/sweep.log"
# the committed table with the swept batch-1 int4 section in place of its own
python3 - "$OUT/sw/quant_configs.json" swiftinfer_core/kernels/quant_configs.json "$OUT/merged.json" <<'PY'
import json, sys
swept, table = (json.load(open(p)) for p in sys.argv[1:3])
table["configs"]["int4"]["1"] = swept["configs"]["int4"]["1"]
table["merged_from"] = {"int4 batch 1": swept.get("device"), "date": swept.get("date"), "rest": table.get("date")}
json.dump(table, open(sys.argv[3], "w"), indent=1)
PY
for t in table tuned; do
  cfgs=(); [ "$t" = tuned ] && cfgs=(--configs "$OUT/merged.json")
  timeout 150 python3 bench/quant_decode.py --formats bf16 int4 --batches 1 --shapes $SHAPES "${cfgs[@]}" \
    --name "quant_decode_$t" --out "$OUT" > "$OUT/decode_$t.log" 2>&1
  echo "== $t rc=$?"; grep -E "^ *(shape|llama)" "$OUT/decode_$t.log"
done
# at most 8 files come back from a call: the logs and the merged table go in one tarball
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log merged.json)
ls -R "$OUT"
