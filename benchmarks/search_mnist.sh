#!/usr/bin/env bash
# Mask search on MNIST (paper-mnist), tolerance 0.2 points: PF, EPF, L1 and random best-of-N through the same
# schedule (channel then intra-kernel, layer by layer, 10 particles x 4 generations per rung scored on 1,000
# validation images, tolerance checked on 4,000 others, retrain 1 epoch on 10,000 training images when a step
# exceeds the tolerance, 1 epoch on all training images at the end). Table: python benchmarks/search_table.py runs/search-mnist-*
# Usage: benchmarks/search_mnist.sh [DENSE_RUN] [METHOD ...]    (run it under the shared lock on shared machines)
set -euo pipefail
cd "$(dirname "$0")/.."
DENSE=${1:-runs/mnist-dense}
shift || true
METHODS=${*:-pf l1 random-best epf}
if [ ! -f "$DENSE/model.safetensors" ]; then
  .venv/bin/python -m structprune train --model paper-mnist --data mnist --data-dir ../shared/data --epochs 3 --out "$DENSE"
fi
for m in $METHODS; do
  .venv/bin/python -m structprune prune "$DENSE" --data-dir ../shared/data --granularity channel,intra --method "$m" \
    --max --tolerance 0.2 --particles 10 --generations 4 --score-images 1000 --check-images 4000 \
    --retrain-epochs 1 --retrain-images 10000 --final-epochs 1 --lr 0.01 --seed 0 --out "runs/search-mnist-$m"
done
