#!/usr/bin/env bash
# Which output maps go to which kernel block, chosen by L1 (one-shot rule), the particle filter and random
# best-of-N, one layer at a time: each run blocks one conv of the dense paper-cifar10 (two blocks, half its
# kernels), 8 particles x 3 generations (random: the same 24 candidates' budget) scored on 1,000 validation
# images, checked on 1,000 others, no retraining. Prints val and test MCR of every run.
# Usage: benchmarks/search_blocks_cifar10.sh [DENSE_RUN] [LAYER ...]    (default: runs/cifar10-dense; features.3 features.10 features.17)
set -euo pipefail
cd "$(dirname "$0")/.."
DENSE=${1:-runs/cifar10-dense}
shift || true
LAYERS=${*:-features.3 features.10 features.17}
for layer in $LAYERS; do
  for m in l1 pf random-best; do
    out="runs/search-blocks-$layer-$m"
    .venv/bin/python -m structprune prune "$DENSE" --granularity kernel --method "$m" --schedule --ratio 0.5 \
      --kernel-structure blocks --kernel-groups 2 --layers "$layer" --particles 8 --generations 3 \
      --score-images 1000 --check-images 1000 --retrain-epochs 0 --final-epochs 0 --seed 0 --out "$out" > /dev/null
    .venv/bin/python -c "import json, sys; m = json.load(open(sys.argv[1] + '/metrics.json')); \
print(f\"| {sys.argv[2]} | {sys.argv[3]} | {100 * m['val_mcr']:.2f}% | {100 * m['test_mcr']:.1f}% | {m['search_seconds']:.0f} |\")" "$out" "$layer" "$m"
  done
done
