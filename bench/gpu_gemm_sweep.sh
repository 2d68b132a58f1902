#!/usr/bin/env bash
# Device call: tune the batched int4/int8 products (the fused GEMMs of kernels/quant_gemm.py and,
# from 64 rows, the dequantise-then-cuBLAS path of kernels/quant_dequant.py, both in the candidates)
# for the GEMM buckets, then time one decode step's weight products on the new table against the
# committed one, side by side on one GPU. carry [".carry/pyd"].
#   SHAPES (default "llama2-7b")  FORMATS (swept, default "int4 int8")  BATCHES (sweep buckets, default "32 128 16 256")
#   SKIP_TESTS (set: no native tests first)  TESTS (the native test files)  DECODE_BATCHES (default "16 32 128 1024")  BUDGET_S (sweep budget, default 180)
# $OUT: sw/quant_configs.json (the sweep's GEMM sections), sw/quant_sweep.json,
# quant_decode_gemm_{table,tuned}.json/png, logs.tgz (logs, merged.json); a table last.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/pyd/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD
SHAPES=${SHAPES:-llama2-7b}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ -z "${SKIP_TESTS:-}" ] && timeout 100 python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/kernels/test_quant_dequant.py tests/kernels/test_quant_gemm.py} > "$OUT/gemm_pytest.log" 2>&1
echo "native tests rc=$?: $(tail -1 "$OUT/gemm_pytest.log" 2>/dev/null)"
timeout $(( ${BUDGET_S:-180} + 120 )) python3 bench/quant_decode.py --sweep --sweep-batches ${BATCHES:-32 128 16 256} \
  --sweep-formats ${FORMATS:-int4 int8} --shapes $SHAPES --budget-s "${BUDGET_S:-180}" --out "$OUT/sw" > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"; grep -E "^int|best by variant" "$OUT/sweep.log"
# the committed table with the swept int4 GEMM sections in place of its own
python3 - "$OUT/sw/quant_configs.json" swiftinfer_core/kernels/quant_configs.json "$OUT/merged.json" <<'PY'
import json, sys
swept, table = (json.load(open(p)) for p in sys.argv[1:3])
for fmt, secs in swept["configs"].items():
    for b, sec in secs.items():
        if b != "1":
            table["configs"].setdefault(fmt, {})[b] = sec
table["merged_from"] = {"GEMM buckets": swept.get("device"), "date": swept.get("date"), "rest": table.get("date")}
json.dump(table, open(sys.argv[3], "w"), indent=1)
PY
for t in table tuned; do
  cfgs=(); [ "$t" = tuned ] && cfgs=(--configs "$OUT/merged.json")
  timeout 140 python3 bench/quant_decode.py --formats bf16 int8 int4 --batches ${DECODE_BATCHES:-16 32 128 1024} \
    --shapes $SHAPES "${cfgs[@]}" --name "quant_decode_gemm_$t" --out "$OUT" > "$OUT/decode_$t.log" 2>&1
  echo "== $t rc=$?"; grep -E "^ *(shape|llama)" "$OUT/decode_$t.log"
done
# at most 8 files come back from a call: the logs and the merged table go in one tarball
(cd "$OUT" && tar czf logs.tgz --remove-files ./*.log merged.json)
ls -R "$OUT"
