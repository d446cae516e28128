#!/usr/bin/env bash
# Mask search on a residual network: resnet20 on CIFAR-10 at about 2x fewer conv MACs (every channel group keeps
# 70% of its maps, --schedule --ratio 0.30), PF, EPF, L1 through the same schedule, random best-of-N and
# Torch-Pruning's group L2 (tp-l2), the same particle budget and the same final retraining, several seeds.
# Reduced protocol sized for 2 CPU cores: 8 particles x 3 generations per channel group, scored on 500 validation
# images and checked on 1,000, batch-norm statistics re-estimated for every candidate on BN_BATCHES (default 4)
# training batches of 64 (BN_BATCHES=0: scored with the trained statistics, runs named search-r20-nobn-*), no
# retraining between groups, then 1 epoch on 10,000 training images.
# The dense run is scripts/recovery_cifar10.sh's resnet20-dense (WITH_RESNET20=1).
# Usage: benchmarks/search_resnet20_cifar10.sh RUNS_DIR   (each run is skipped when its folder exists; an
# interrupted one resumes). Results: scripts/collect_results.py, then the table in docs/results.md.
set -euo pipefail
R=${1:?usage: search_resnet20_cifar10.sh RUNS_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
DENSE=${DENSE:-$R/resnet20-dense}
METHODS=${METHODS:-"l1 tp-l2 pf epf random-best"}
SEEDS=${SEEDS:-"0 1 2"}
BN_BATCHES=${BN_BATCHES:-4}
TAG=$([ "$BN_BATCHES" = 0 ] && echo "nobn-" || true)
OPTS=(--bn-recalibrate "$BN_BATCHES" --granularity channel --schedule --ratio "${RATIO:-0.30}" --round-to 1 --particles 8 --generations 3
      --score-images 500 --check-images 1000 --retrain-epochs 0 --final-epochs 1 --final-images 10000 --lr 0.01)
for s in $SEEDS; do
  for m in $METHODS; do
    out="$R/search-r20-$TAG$m-s$s"
    [ -d "$out" ] || "$SP" prune "$DENSE" --method "$m" "${OPTS[@]}" --seed "$s" --out "$out"
  done
done
