#!/usr/bin/env bash
# The default path's speed: `prune --granularity channel,kernel,intra --method l1 --ratio 0.5` with no other
# option on the dense paper-cifar10 run of scripts/recovery_cifar10.sh, compacted, then timed against dense in
# eager PyTorch and in ONNX Runtime (2 threads, batch 64 and 1, one bench run per runtime). Time it with nothing
# else running. Usage: scripts/plain_flags_cifar10.sh RUNS_DIR OUT_DIR
set -euo pipefail
R=${1:?usage: plain_flags_cifar10.sh RUNS_DIR OUT_DIR}
OUT=${2:?usage: plain_flags_cifar10.sh RUNS_DIR OUT_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
mkdir -p "$OUT"
[ -d "$R/plain-pruned" ] || "$SP" prune "$R/paper-dense" --granularity channel,kernel,intra --method l1 --ratio 0.5 \
  --out "$R/plain-pruned"
[ -d "$R/plain-compact" ] || "$SP" compact "$R/plain-pruned" --out "$R/plain-compact"
for runtime in eager onnxruntime; do
  [ -f "$OUT/bench-$runtime.json" ] || "$SP" bench "$R/paper-dense" "$R/plain-compact" --runtime "$runtime" \
    --batch 64,1 --threads 2 --rounds "${ROUNDS:-7}" --json "$OUT/bench-$runtime.json" --no-progress
done
