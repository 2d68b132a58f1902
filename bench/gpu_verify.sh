#!/usr/bin/env bash
# The carried folders (.whl, .carry/*) are ignored by git: on a fresh checkout `bash bench/gpu_carry.sh` builds them.
# Device call: every GPU test and one engine capacity point, to check that a change
# meant to keep behaviour (issue 20's refactor, piecewise graphs by default) keeps it.
# Needs the default model converted under /tmp/swh by four earlier calls, back to back (bench/gpu_stage.sh):
#   1-3) carry [".carry/smol-1"], then [".carry/smol-2"], then [".carry/smol-3"]:  bash bench/gpu_stage.sh
#   4) carry [".carry/smol-4", ".carry/pyd", ".carry/data"]:  bash bench/gpu_verify.sh stage
#      (.carry/data/shakespeare.txt: the plays, for test_gpu_engine; the machine cannot fetch them)
#   5) carry [".whl", ".carry/r7b"]:           bash bench/gpu_verify.sh
# Issue 18's bench alone (no converted model needed), carry [".carry/pyd", ".carry/xg", ".carry/r7b"]:
#      WHEELS=.carry/pyd STEPS=structured bash bench/gpu_verify.sh
# Issue 16's quantized kernels alone (no model), carry [".carry/pyd"]:
#      WHEELS=.carry/pyd STEPS=quant bash bench/gpu_verify.sh
#   = quant_tests (GPU tests of kernels/quant_*.py), quant_sweep (bench/quant_decode.py --sweep:
#   $OUT/quant_configs.json, budget $SWEEP_BUDGET s), quant_bench (bench/quant_decode.py on
#   $QUANT_CONFIGS, default the sweep's file when there is one; flags in $QBENCH_ARGS); each is also a step name.
#   int4 with zero points alone (GPU tests, then zero-point vs symmetric int4 and bf16 at batch 1 and 32):
#      WHEELS=.carry/pyd STEPS=quant_tests QTESTS_S=170 bash bench/gpu_verify.sh
#      WHEELS=.carry/pyd STEPS=quant_bench QBENCH_S=170 QBENCH_ARGS="--formats bf16 int4 int4-zp --batches 1 32 \
#        --shapes llama2-7b --name quant_decode_zp" bash bench/gpu_verify.sh
# Issue 16's FP8 weights alone (no converted model needed), carry [".carry/pyd"]:
#      WHEELS=.carry/pyd STEPS=fp8 bash bench/gpu_verify.sh
#   step fp8_tests: every fp8 test natively (the interpreter's cases too) and the seeded-rank GPU test;
#   step fp8_bench: bench/fp8_decode.py (bf16, int8, fp8 paths; JSON + PNG under $OUT). The real-model
#   fp8 check (tests/engine/test_gpu_engine.py) runs in gpu_tests, after the staging calls.
# Issue 16's fp8 KV cache (GPU tests + bf16/fp8 decode bench; no model needed), carry [".carry/pyd"]:
#      WHEELS=.carry/pyd STEPS=fp8kv bash bench/gpu_verify.sh      (after the stage calls: the engine tests too)
#   = fp8kv_tests (test_kv_fp8_attention.py and test_kv_fp8_decode_f16.py natively, the bf16 kernels' GPU tests, test_kv_fp8_engine.py where the
#   model is staged), fp8kv_kernel (bench/kernels_decode.py --kv both) then fp8kv_bench (bench/fp8_kv_decode.py: bf16 vs fp8 KV,
#   7B shape, 4+2044); each is a step name
# The engine point repeats served_7b_r8's engine row at N=128 (7B shape, random bf16,
# 4+1020, 191 slots, 8 rounds, closed loop); step "structured" (STEPS=structured) is issue 18's bench. Env: STEPS, TESTS, MARK (default gpu; "gpu or not gpu"
# also runs the kernel tests that take the device from their fixture). Writes under $OUT; a short table last.
set -uo pipefail
export PYTHONUNBUFFERED=1 SWIFTINFER_HOME=/tmp/swh RAY_USAGE_STATS_ENABLED=0 NCCL_NVLS_ENABLE=0
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
if [ "${1:-}" = stage ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/gpu_stage.sh" && join_gguf
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .carry/pyd/*.whl || exit 4
  mkdir -p "$SWIFTINFER_HOME" && cp .carry/data/shakespeare.txt "$SWIFTINFER_HOME/"
  python3 -m swiftinfer_core.model.fetch "$GGUF" 2>&1 | grep -v "it/s" | tail -2
  exit
fi
# WHEELS: .whl (Ray and the rest) by default; the structured step needs only .carry/pyd plus
# .carry/xg (xgrammar 0.2.9 and apache-tvm-ffi, cp312), which keeps its carry under the limit
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "${WHEELS:-.whl}"/*.whl \
  $(ls .carry/xg/*.whl 2>/dev/null) || exit 4
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
DEFAULT_STEPS="gpu_tests engine" TAIL=${TAIL:-12}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"
TESTS=${TESTS:-tests/runner tests/model/test_families_gpu.py tests/kernels tests/parallel/test_tensor_parallel_gpu.py tests/engine/test_gpu_engine.py}
want gpu_tests && step gpu_tests ${TESTS_S:-360} python3 -m pytest -q -m "${MARK:-gpu}" -p no:cacheprovider --durations=12 -rs $TESTS
rm -rf /tmp/model && cp -r .carry/r7b /tmp/model
want engine && step engine ${ENGINE_S:-180} python3 bench/engine_batches.py --model /tmp/model --sizes 128 --max-sessions 191 \
  --window 1020 --rounds 8 --words 24 --no-bare --closed-loop --name verify_engine_7b --out "$OUT"
# issue 12 (not by default): batched decode with the fused norms and SiLU*up against the torch layers ("unfused"),
# side by side, kernel time by family (8B then 7B shape; DECODE_SHAPES, DECODE_BATCHES); no model needed, carry [".carry/pyd"]
for shape in ${DECODE_SHAPES:-llama3.1-8b llama2-7b}; do
  want decode_ab && step "decode_ab_$shape" ${DECODE_S:-200} python3 bench/batched_decode.py --shape "$shape" --windows 1020 \
    --batches ${DECODE_BATCHES:-1 64 128 256} --variants engine unfused --breakdown --name "batched_decode_fused_$shape" --out "$OUT"
done
# ... and one prefill chunk (40 to 2,048 tokens into an empty 4+1020 slot) with and without them, 8B shape
want prefill_ab && step prefill_ab ${PREFILL_S:-150} python3 bench/prefill_speed.py --shapes llama3.1-8b --windows 1020 --cached 0 \
  --chunks 40 256 1024 2048 --compare-unfused --no-attention --name prefill_fused_8b --out "$OUT"
# ... and a 40-token warm turn on an idle 7B engine, and 128 decode rows + 40/256-token chunks, both ways (carry .carry/r7b)
for v in fused unfused; do
  want mixed_ab && step "mixed_ab_$v" ${MIXED_S:-120} python3 bench/mixed_step.py --model /tmp/model --decode 0 128 --chunks 40 256 \
    $([ $v = unfused ] && echo --unfused) --name "mixed_step_7b_$v" --out "$OUT"
done
# ... and the engine alone at 128 conversations (8B shape, closed loop) with its postprocessing overlapped and not (carry .carry/r8b)
for v in overlap no-overlap; do
  want overlap_ab && rm -rf /tmp/model8 && cp -r .carry/r8b /tmp/model8 && gunzip -f /tmp/model8/tokenizer.json.gz 2>/dev/null; \
  want overlap_ab && step "overlap_ab_$v" ${OVERLAP_S:-150} python3 bench/engine_batches.py --model /tmp/model8 --sizes 128 --max-sessions 256 \
    --window 1020 --rounds 4 --words 24 --no-bare --closed-loop --$v --name "engine_8b_$v" --out "$OUT"
done
# issue 18 (not by default): structured output and logprobs on batched decode, 64 sessions, 7B shape
want structured && step structured ${STRUCT_S:-300} python3 bench/structured_output.py --random --model /tmp/model --sessions 64 --out "$OUT"
# issue 16 (not by default): quantized GEMV/GEMM tests, config sweep, decode-step bench on the swept configs
wantq() { want quant || want "$1"; }
wantq quant_tests && step quant_tests ${QTESTS_S:-240} python3 -m pytest -q -m gpu -p no:cacheprovider --durations=8 -rs \
  --continue-on-collection-errors tests/kernels/test_quant_gemv.py tests/kernels/test_quant_gemm.py tests/model/test_quant_linear.py
wantq quant_sweep && step quant_sweep ${SWEEP_S:-300} python3 bench/quant_decode.py --sweep --budget-s ${SWEEP_BUDGET:-200} --out "$OUT"
QCFG=${QUANT_CONFIGS:-$OUT/quant_configs.json}
[ -f "$QCFG" ] && export SWIFTINFER_QUANT_CONFIGS=$QCFG
# QBENCH_ARGS: extra flags, e.g. "--formats bf16 int4 int4-zp --batches 1 32 --shapes llama2-7b --name quant_decode_zp"
wantq quant_bench && step quant_bench ${QBENCH_S:-240} python3 bench/quant_decode.py ${QBENCH_ARGS:-} --out "$OUT"
# issue 16 (not by default): FP8 weights
FP8_TESTS="tests/kernels/test_fp8_gemv.py tests/kernels/test_fp8_gemm.py tests/kernels/test_fp8_scaled_mm.py tests/model/test_fp8.py tests/model/test_fp8_linear.py tests/runner/test_fp8_rank_gpu.py"
want fp8 && step fp8_tests ${FP8_S:-240} python3 -m pytest -q -m "gpu or not gpu" -p no:cacheprovider -rs -s --durations=8 $FP8_TESTS
want fp8 && step fp8_bench ${FP8_BENCH_S:-300} python3 bench/fp8_decode.py --out "$OUT"
# issue 16 (not by default): quant_rounding gptq at load: build time and memory on random 7B/8B weights (no model
# needed, carry [".carry/pyd"]: WHEELS=.carry/pyd STEPS=gptq bash bench/gpu_verify.sh), then its real-model fp8 test
# where the default model is staged (the stage calls above)
# gptq_round: the torch column loop against the Triton block kernel per 8B linear, then the kernel's GPU tests
want gptq_round && step gptq_round ${GPTQ_R_S:-300} python3 bench/gptq_round.py --json "$OUT/gptq_round.json"
want gptq_round && step gptq_block_tests ${GPTQ_BT_S:-120} python3 -m pytest -q -m "gpu or not gpu" -p no:cacheprovider -rs \
  tests/kernels/test_gptq_block.py
# GPTQ_ARGS: e.g. "--torch-loop" (the same build with torch's column loop, side by side)
want gptq && step gptq_load ${GPTQ_S:-420} python3 bench/gptq_load.py --shapes ${GPTQ_SHAPES:-llama2-7b llama3.1-8b} --formats fp8 int4 \
  ${GPTQ_ARGS:-} --json "$OUT/gptq_load.json"
[ -d "$SWIFTINFER_HOME/models" ] && want gptq && step gptq_tests ${GPTQ_TESTS_S:-240} python3 -m pytest -q -m gpu -s \
  -p no:cacheprovider -rs tests/runner/test_calibration_gpu.py
# compressed-tensors checkpoints (w4a16, FP8-dynamic) of the staged default model, the FP8 one built on the GPU
[ -d "$SWIFTINFER_HOME/models" ] && want ct_tests && step ct_tests ${CT_S:-240} python3 -m pytest -q -s -p no:cacheprovider -rs \
  tests/model/test_ct_checkpoint.py
# fp8 nearest vs GPTQ on the GPU path over 3,000 tokens against float32 and bf16 (staged model; not by default);
# GPTQ_Q_ARGS replaces "--seeds 0 1", e.g. "--seeds 0 --weight-only" (fp8_activations: false beside each fp8 row)
want gptq_quality && step gptq_quality ${GPTQ_Q_S:-300} python3 bench/fp8_gptq_gpu.py --tokens 3000 --window 1020 \
  ${GPTQ_Q_ARGS:---seeds 0 1} --out "$OUT"
# issue 16 (not by default): bf16 vs fp8 KV batched decode at the 7B shape, 4+2044 (JSON + PNG under $OUT), after the
# GPU tests of the bf16 kernels and of the fp8 cache (the engine's too where the default
# model is staged under /tmp/swh); every test of tests/kernels/test_kv_fp8_attention.py, natively (its unmarked ones take the GPU too)
KVFP8_TESTS="tests/kernels/test_decode_attention.py tests/kernels/test_prefill_attention.py tests/kernels/test_attention.py"
[ -d "$SWIFTINFER_HOME/models" ] && KVFP8_TESTS="$KVFP8_TESTS tests/engine/test_kv_fp8_engine.py"
wantk() { want fp8kv || want "$1"; }  # each of the two is also a step name (one call may not hold both: 600 s)
wantk fp8kv_tests && step fp8kv_tests ${KVFP8_TESTS_S:-300} bash -c "python3 -m pytest -q -p no:cacheprovider -rs tests/kernels/test_kv_fp8_attention.py tests/kernels/test_kv_fp8_decode_f16.py; r=\$?; \
  python3 -m pytest -q -m gpu -p no:cacheprovider --durations=8 -rs $KVFP8_TESTS || r=1; exit \$r"
# the decode kernel alone, bf16 against fp8 cache (the float16 fp8 tiles of kernels/kv_fp8_decode_tl.py; ~1 min)
wantk fp8kv_kernel && step fp8kv_kernel ${KVFP8_KERNEL_S:-120} python3 bench/kernels_decode.py --kv both --windows 2044 \
  --batches 32 128 --shapes 0 --name kernels_decode_fp8_f16 --out "$OUT"
wantk fp8kv_bench && step fp8kv_bench ${KVFP8_BENCH_S:-420} python3 bench/fp8_kv_decode.py --window 2044 --out "$OUT"
# shared prompt prefixes (not by default; carry [".carry/pyd", ".carry/r8b", ".carry/data"]: WHEELS=.carry/pyd STEPS=prefix):
# new-conversation TTFT with a 900/1,900/4,000-token system prompt (the last longer than the cache), prefix cache off and on, Llama-3.1-8B shape, random bf16, 4+2044
# (.carry/r8b's tokenizer is gzipped to fit the carry: unpacked into /tmp/model8 first)
want prefix && mkdir -p "$SWIFTINFER_HOME" && cp .carry/data/shakespeare.txt "$SWIFTINFER_HOME/" && rm -rf /tmp/model8 \
  && cp -r .carry/r8b /tmp/model8 && { [ ! -f /tmp/model8/tokenizer.json.gz ] || gunzip /tmp/model8/tokenizer.json.gz; } \
  && step prefix ${PREFIX_S:-300} python3 bench/prefix_cache.py --model /tmp/model8 --device cuda --dtype bfloat16 --random --window 2044 --lengths 900 1900 4000 \
  --conversations 16 --name prefix_cache_8b --out "$OUT"
(cd "$OUT" && tar czf logs.tgz *.log)
echo; cat "$OUT/summary.txt"
