#!/usr/bin/env bash
# Pruning to a target on CIFAR-10: resnet20 (the dense run of scripts/recovery_cifar10.sh) pruned by the structure
# search to 2x fewer MACs (--target-macs 2), compacted and retrained like the uniform L1 arm of the recovery
# script (1 epoch on 5,000 images, seeds 0-2); and to a measured 2x speed-up in ONNX Runtime at batch 1, 2 threads
# (--target-speedup 2; time it with nothing else running).
# Usage: scripts/target_cifar10.sh RUNS_DIR   (each step is skipped when its folder exists)
set -euo pipefail
R=${1:?usage: target_cifar10.sh RUNS_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
COMMON=(--method pf --bn-recalibrate 4 --score-images 500 --seed 0)
[ -d "$R/resnet20-t2x-pruned" ] || "$SP" prune "$R/resnet20-dense" --target-macs 2 "${COMMON[@]}" --out "$R/resnet20-t2x-pruned"
[ -d "$R/resnet20-t2x-compact" ] || "$SP" compact "$R/resnet20-t2x-pruned" --out "$R/resnet20-t2x-compact"
for s in 0 1 2; do
  [ -d "$R/resnet20-t2x-ce-s$s" ] || "$SP" retrain "$R/resnet20-t2x-compact" --epochs 1 --train-images 5000 --seed "$s" \
    --no-progress --out "$R/resnet20-t2x-ce-s$s"
done
[ -d "$R/resnet20-s2x-pruned" ] || "$SP" prune "$R/resnet20-dense" --target-speedup 2 --runtime onnxruntime --batch 1 \
  --threads 2 "${COMMON[@]}" --out "$R/resnet20-s2x-pruned"
