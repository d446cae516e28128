#!/usr/bin/env bash
# Mask search on CIFAR-10 (paper-cifar10, batch norm): PF, EPF, L1, random best-of-N and Torch-Pruning's group
# L2 importance at equal conv MACs (every layer keeps the same number of maps: ratio 0.30 -> 2.02x fewer conv
# MACs, 0.43 -> 3.05x) and equal retraining (l1 runs through the same schedule with --schedule). Table: python benchmarks/search_table.py runs/search-cifar10-*
#
# REDUCED protocol (default; what docs/results.md reports, sized for 2 CPU cores, about 25 min): the dense
# model of docs/results.md (10 epochs); 8 particles x 3 generations per layer scored on 500 validation images,
# no retraining between layers, 1 final epoch on 10,000 training images. FULL=1 runs the full protocol: 16 x 6, 2,000 images, 1 epoch between layers,
# 10 final epochs on all training images (and train the dense model with DENSE_EPOCHS=30).
# Usage: benchmarks/search_cifar10.sh [DENSE_RUN] [METHOD ...]    (under the shared lock on shared machines)
set -euo pipefail
cd "$(dirname "$0")/.."
DENSE=${1:-runs/cifar10-dense}
shift || true
METHODS=${*:-pf l1 random-best epf}
case " $METHODS " in *" tp-l2 "*) ;; *) METHODS="$METHODS tp-l2" ;; esac  # Torch-Pruning's criterion, cheap
if [ ! -f "$DENSE/model.safetensors" ]; then
  .venv/bin/python -m structprune train --model paper-cifar10 --data cifar10 --data-dir ../shared/data --epochs "${DENSE_EPOCHS:-10}" \
    --lr 0.02 --warmup-epochs 0.5 --model-arg bn=true --threads 2 --out "$DENSE"
fi
if [ "${FULL:-0}" = 1 ]; then
  OPTS="--particles 16 --generations 6 --score-images 2000 --check-images 2000 --retrain-epochs 1 --final-epochs 10"
  TAG=full
else
  OPTS="--particles 8 --generations 3 --score-images 500 --check-images 1000 --retrain-epochs 0 --final-epochs 1 --final-images 10000"
  TAG=reduced
fi
for ratio in 0.43 0.30; do
  for m in $METHODS; do
    # shellcheck disable=SC2086
    .venv/bin/python -m structprune prune "$DENSE" --data-dir ../shared/data --granularity channel --method "$m" --schedule \
      --ratio "$ratio" $OPTS --lr 0.01 --seed 0 --out "runs/search-cifar10-$TAG-r$ratio-$m"
  done
done
