#!/usr/bin/env bash
# Device call: Nsight Compute over the decode attention and batch-1 int4 GEMV kernels
# (bench/ncu_probe.py), to see why they sit below copy bandwidth. carry [".carry/pyd"].
#   TARGETS="attn gemv" (default)   NCU_S per target (default 240)
# Writes $OUT/ncu_<target>.txt (ncu's details page per launch) and prints the key lines last.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/pyd/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "no ncu on this machine"; exit 5; }
SECTIONS=()
for s in SpeedOfLight Occupancy LaunchStats WarpStateStats SchedulerStats MemoryWorkloadAnalysis InstructionStats \
  ComputeWorkloadAnalysis SourceCounters; do SECTIONS+=(--section "$s"); done
for t in ${TARGETS:-attn gemv}; do
  case $t in attn) k='regex:_decode_split_kernel' ;; gemv) k='regex:_gemv_int4_kernel' ;; *) echo "unknown target $t"; exit 2 ;; esac
  echo "=== $t"
  timeout "${NCU_S:-240}" "$NCU" --clock-control none -k "$k" "${SECTIONS[@]}" \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    python3 bench/ncu_probe.py "$t" > "$OUT/ncu_$t.txt" 2>&1
  echo "$t rc=$?"
  grep -E "^  [a-z_]+.*\(|attn |gemv int4|Duration  |DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occ|Warp Cycles Per Issued|Issue Slots Busy|Block Limit Reg" "$OUT/ncu_$t.txt" | head -120
done
