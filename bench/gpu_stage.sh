#!/usr/bin/env bash
# The default model's GGUF (98 MB) on a device machine, which reaches no package index. It travels in four
# parts of 25 MB (.carry/smol-1..4 from bench/gpu_carry.sh), since one call carries at most 64 MiB with the tracked
# tree (28 MiB in session 33). Calls back to back while the machine stays warm (/tmp survives only that long):
#   calls 1-3, carry [".carry/smol-1"], then [".carry/smol-2"], then [".carry/smol-3"]:   bash bench/gpu_stage.sh
#   call 4, carry [".carry/smol-4", ...]: a script that sources this file and calls join_gguf
# join_gguf parks what this call carries, joins the parts, checks the SHA-256 and installs the gguf wheel
# (into ${GGUF_SITE:-/tmp/site}); it exits 3 when a part is missing (the machine went back between calls).
GGUF=/tmp/stage/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
park_parts() { mkdir -p /tmp/stage && for d in .carry/smol-*; do [ -d "$d" ] && cp "$d"/part.* /tmp/stage/; done; ls /tmp/stage; }
join_gguf() {
  park_parts >/dev/null
  cat /tmp/stage/part.a? > "$GGUF"
  echo "$GGUF_SHA  $GGUF" | sha256sum -c --quiet || { echo "GGUF parts missing ($(ls /tmp/stage)): park .carry/smol-1 to -3 first"; exit 3; }
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "${GGUF_SITE:-/tmp/site}" .carry/smol-4/gguf-*.whl || exit 4
}
if [ "${BASH_SOURCE[0]}" = "$0" ]; then park_parts; fi
