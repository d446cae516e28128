#!/usr/bin/env bash
# Issue 3's network targets, measured in N independent processes instead of one: each run is
# bench_network.py (ONNX Runtime, 2 threads, steady allocator, dense and compact interleaved), written to
# OUT/run-K.json; repeat_summary.py then puts every run's efficiency (latency ratio / MAC ratio) side by side.
# One run reads the machine in one phase; the spread across runs is the figure's real uncertainty.
# Usage: benchmarks/repeat_network.sh OUT [RUNS] [PAUSE_SECONDS] [CONFIGS]      (about 1 min per run)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benchmarks/repeat_network.sh OUT [RUNS] [PAUSE_SECONDS] [CONFIGS]}
RUNS=${2:-6}
PAUSE=${3:-60}
CONFIGS=${4:-channel-25+kernel-50b2+intra-6of9+linear-50,channel-25+kernel-50b2+intra-6of9}
mkdir -p "$OUT"
for k in $(seq 1 "$RUNS"); do
  if [ -f "$OUT/run-$k.json" ]; then echo "run $k: kept $OUT/run-$k.json"; continue; fi  # resume
  [ "$k" -gt 1 ] && sleep "$PAUSE"
  echo "run $k of $RUNS ($(date -u +%H:%M:%S) UTC)"
  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 .venv/bin/python benchmarks/bench_network.py --threads 2 \
    --clock wall --round-to 16 --runtime onnxruntime --configs "$CONFIGS" --csr-configs '' --batch 64,1 \
    --rounds 15 --sample-seconds 0.1 --json "$OUT/run-$k.tmp" 2>/dev/null
  mv "$OUT/run-$k.tmp" "$OUT/run-$k.json"
done
.venv/bin/python benchmarks/repeat_summary.py "$OUT"/run-*.json
