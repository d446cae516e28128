#!/usr/bin/env bash
# Which output maps go to which kernel block, chosen by L1 (one-shot rule), the particle filter and random
# best-of-N: two blocks per conv of the dense paper-cifar10 (half its kernels), 8 particles x 3 generations
# (random: the same 24 candidates' budget) scored on 1,000 validation images, checked on 1,000 others.
#   default:    one layer at a time, no retraining (the assignment alone); runs/search-blocks-LAYER-METHOD
#   RETRAIN=1:  every layer in turn, 1 epoch on 10,000 training images after each (lr 0.01); runs/search-blocks-retrain-METHOD
# Prints val and test MCR of every run.
# Usage: [RETRAIN=1] benchmarks/search_blocks_cifar10.sh [DENSE_RUN] [LAYER ...]    (default: runs/cifar10-dense; features.3 features.10 features.17)
set -euo pipefail
cd "$(dirname "$0")/.."
DENSE=${1:-runs/cifar10-dense}
shift || true
LAYERS=${*:-features.3 features.10 features.17}
COMMON=(--granularity kernel --schedule --ratio 0.5 --kernel-structure blocks --kernel-groups 2 --particles 8
        --generations 3 --score-images 1000 --check-images 1000 --final-epochs 0 --seed 0)

row() {  # run folder, layer, method -> one table row
  .venv/bin/python -c "import json, sys; m = json.load(open(sys.argv[1] + '/metrics.json')); \
print(f\"| {sys.argv[2]} | {sys.argv[3]} | {100 * m['val_mcr']:.2f}% | {100 * m['test_mcr']:.1f}% | {m['search_seconds']:.0f} |\")" "$@"
}

for m in l1 pf random-best; do
  if [ "${RETRAIN:-0}" = 1 ]; then
    out="runs/search-blocks-retrain-$m"
    .venv/bin/python -m structprune prune "$DENSE" --method "$m" "${COMMON[@]}" --retrain-epochs 1 \
      --retrain-images 10000 --lr 0.01 --out "$out" > /dev/null
    row "$out" all "$m"
    continue
  fi
  for layer in $LAYERS; do
    out="runs/search-blocks-$layer-$m"
    .venv/bin/python -m structprune prune "$DENSE" --method "$m" "${COMMON[@]}" --layers "$layer" \
      --retrain-epochs 0 --out "$out" > /dev/null
    row "$out" "$layer" "$m"
  done
done
