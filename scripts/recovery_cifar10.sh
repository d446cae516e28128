#!/usr/bin/env bash
# Distillation and int8 on CIFAR-10: dense paper-cifar10 and resnet20, pruned to about 3x/5x and 2x fewer MACs,
# compacted, then retrained for the same epochs with and without the dense run as teacher, 3 seeds each.
# resnet20 (2x fewer MACs) runs too when WITH_RESNET20=1 is set.
# Usage: scripts/recovery_cifar10.sh RUNS_DIR   (each step is skipped when its folder exists; an interrupted
# step resumes from its staging folder when the script is run again). Results are collected by
# scripts/collect_recovery.py into benchmarks/results/recovery-cifar10/.
set -euo pipefail
R=${1:?usage: recovery_cifar10.sh RUNS_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
DATA=(--data-dir "${DATA_DIR:-../shared/data}")
DENSE_EPOCHS=${DENSE_EPOCHS:-2}
RESNET_EPOCHS=${RESNET_EPOCHS:-8}
RETRAIN_EPOCHS=${RETRAIN_EPOCHS:-1}
RETRAIN_IMAGES=${RETRAIN_IMAGES:-5000}
SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$R"
step() { local out=$1; shift; [ -d "$out" ] || "$SP" "$@" --out "$out"; }

step "$R/paper-dense" train --model paper-cifar10 --model-arg bn=true --data cifar10 "${DATA[@]}" \
  --epochs "$DENSE_EPOCHS" --lr 0.02 --warmup-epochs 0.5 --threads 2 --no-progress
[ -n "${WITH_RESNET20:-}" ] && step "$R/resnet20-dense" train --model resnet20 --data cifar10 "${DATA[@]}" \
  --epochs "$RESNET_EPOCHS" --lr 0.05 --warmup-epochs 0.5 --threads 2 --no-progress

# the fast-form recipe (docs/results.md): 3.1x and 5.2x fewer MACs
FAST=(--granularity channel,kernel,intra --method l1 --round-to 16 --kernel-structure blocks --kernel-groups 2
      --intra-patterns 3:1 --linear-ratio 0.5)
step "$R/paper-3x-pruned" prune "$R/paper-dense" "${FAST[@]}" --ratio 0.2,0.5,0.3333
step "$R/paper-5x-pruned" prune "$R/paper-dense" "${FAST[@]}" --ratio 0.25,0.5,0.3333
[ -n "${WITH_RESNET20:-}" ] && step "$R/resnet20-2x-pruned" prune "$R/resnet20-dense" --granularity channel --method l1 --ratio 0.3 --round-to 1
CONFIGS="paper-3x paper-5x${WITH_RESNET20:+ resnet20-2x}"
for c in $CONFIGS; do step "$R/$c-compact" compact "$R/$c-pruned"; done

for s in $SEEDS; do
  for c in $CONFIGS; do
    step "$R/$c-ce-s$s" retrain "$R/$c-compact" --epochs "$RETRAIN_EPOCHS" --train-images "$RETRAIN_IMAGES" --seed "$s" --no-progress
    step "$R/$c-kd-s$s" retrain "$R/$c-compact" --epochs "$RETRAIN_EPOCHS" --train-images "$RETRAIN_IMAGES" --seed "$s" --teacher source --no-progress
  done
done
