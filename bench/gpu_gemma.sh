#!/usr/bin/env bash
# Device calls: Gemma 3 270M (the second real model, issue 15) over a million tokens of
# the plays on one H200, `eval-ppl` in its four modes. The machine reaches no package
# index, so the pinned GGUF (253 MB) travels in five pieces of at most 55 MB (each call's
# carry plus the 10 MB tree stays under the 64 MiB limit), in calls made back to back
# while the machine stays warm (/tmp survives only that long):
#   here, once (after `swiftinfer fetch-model gemma3-270m`, whose tokenizer travels too):
#                                 bash bench/gpu_gemma.sh split ~/path/gemma-3-270m-q4_k_m.gguf
#   calls 1-4, carry [".carry/gem-N"]:                          bash bench/gpu_gemma.sh stage gem-N
#   call 5, carry [".carry/gem-5", ".carry/pyd", ".carry/data"]: bash bench/gpu_gemma.sh
# The last call joins the pieces, converts them with `fetch-model gemma3-270m --gguf` (the
# SHA-256 pin is checked there) and runs eval-ppl. Env: TOKENS, PREFIX, SAMPLE, DTYPE, STEPS.
set -uo pipefail
export PYTHONUNBUFFERED=1 SWIFTINFER_HOME=/tmp/swh
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
case "${1:-run}" in
  split)
    rm -rf .carry/gem-[1-5] /tmp/gem-split && mkdir -p /tmp/gem-split
    split -b 55000000 -d -a 1 "$2" /tmp/gem-split/piece.
    for i in 0 1 2 3 4; do mkdir -p ".carry/gem-$((i + 1))" && mv "/tmp/gem-split/piece.$i" ".carry/gem-$((i + 1))/"; done
    cp .carry/smol-4/gguf-*.whl .carry/gem-5/
    # the tokenizer as converted here: the GPU machine's transformers (5.17) loses the GGUF's merges
    tar cJf .carry/gem-5/tokenizer.tar.xz -C "${TOKENIZER_DIR:-$HOME/.cache/swiftinfer/models/gemma3-270m}" \
      tokenizer.json tokenizer_config.json chat_template.jinja
    du -b .carry/gem-*; exit ;;
  stage)
    mkdir -p /tmp/stage && cp ".carry/$2"/piece.* /tmp/stage/ && ls -l /tmp/stage; exit ;;
esac
GGUF=/tmp/gemma-3-270m-q4_k_m.gguf
cp .carry/gem-5/piece.4 /tmp/stage/ && cat /tmp/stage/piece.{0,1,2,3,4} > "$GGUF" || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .carry/gem-5/*.whl .carry/pyd/*.whl || exit 4
mkdir -p "$SWIFTINFER_HOME" && cp .carry/data/shakespeare.txt "$SWIFTINFER_HOME/"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
DEFAULT_STEPS="convert ppl" TAIL=${TAIL:-8}
source "$(dirname "${BASH_SOURCE[0]}")/gpu_steps.sh"
mkdir -p /tmp/gemtok && tar xJf .carry/gem-5/tokenizer.tar.xz -C /tmp/gemtok
want convert && step convert 240 python3 -m swiftinfer_core.cli.main fetch-model gemma3-270m --gguf "$GGUF" --tokenizer /tmp/gemtok
EVAL="python3 -m swiftinfer_core.cli.main eval-ppl --model gemma3-270m --text $SWIFTINFER_HOME/shakespeare.txt --sinks 4 --window 1020 --device cuda"
# probe (not by default): 20k tokens in float32, which has not finished on the H200 yet (its
# progress lines show where the time goes); the million-token run is bf16 unless DTYPE says otherwise
want probe && step probe 90 $EVAL --tokens 20000 --modes streaming,dense,recompute --prefix-tokens 8192 \
  --recompute-sample 64 --dtype float32 --json "$OUT/probe_float32.json"
want ppl && step ppl "${PPL_S:-380}" $EVAL --tokens "${TOKENS:-1000000}" --modes streaming,recompute,window,dense --prefix-tokens "${PREFIX:-40960}" \
  --recompute-sample "${SAMPLE:-1000}" --recompute-last 100000 --segment 100000 --dtype "${DTYPE:-bfloat16}" \
  --json "$OUT/ppl_gemma3_1m.json" --plot "$OUT/ppl_gemma3_1m.png"
echo; cat "$OUT/summary.txt"
