#!/usr/bin/env bash
# The mask search on a network of any shape, method against method: NET on CIFAR-10 pruned at channel scale,
# every channel group losing RATIO of its maps (--schedule --ratio), by PF, EPF, L1 through the same schedule,
# random best-of-N and Torch-Pruning's group L2 (tp-l2), the same particle budget and the same final retraining,
# several seeds.
#   NET=resnet20     (default) RATIO 0.30: about 2x fewer conv MACs; runs search-r20-METHOD-sSEED
#   NET=mobilenetv2  RATIO 0.20: about 1.5x fewer conv MACs; runs search-mnv2-METHOD-sSEED
# Reduced protocol sized for 2 CPU cores: 8 particles x 3 generations per channel group, scored on 500 validation
# images and checked on 1,000, batch-norm statistics re-estimated for every candidate on BN_BATCHES (default 4)
# training batches of 64 (BN_BATCHES=0: scored with the trained statistics, runs named search-TAG-nobn-*), no
# retraining between groups, then 1 epoch on 10,000 training images.
# The dense run is DENSE (default RUNS_DIR/NET-dense); when missing it is trained first (EPOCHS, default 8;
# resnet20's is scripts/recovery_cifar10.sh's resnet20-dense with WITH_RESNET20=1, the same command).
# THREADS (default 2): PyTorch threads per run.
# Usage: benchmarks/search_methods_cifar10.sh RUNS_DIR   (each run is skipped when its folder exists; an
# interrupted one resumes). Results: scripts/collect_results.py, then the tables in docs/results.md.
set -euo pipefail
R=${1:?usage: search_methods_cifar10.sh RUNS_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
NET=${NET:-resnet20}
case "$NET" in
  resnet20) TAG=r20; DEFAULT_RATIO=0.30 ;;
  mobilenetv2) TAG=mnv2; DEFAULT_RATIO=0.20 ;;
  *) echo "search_methods_cifar10.sh: NET must be resnet20 or mobilenetv2, not $NET" >&2; exit 2 ;;
esac
DENSE=${DENSE:-$R/$NET-dense}
METHODS=${METHODS:-"l1 tp-l2 pf epf random-best"}
SEEDS=${SEEDS:-"0 1 2"}
BN_BATCHES=${BN_BATCHES:-4}
TAG=$TAG-$([ "$BN_BATCHES" = 0 ] && echo "nobn-" || true)
DATA=(--data-dir "${DATA_DIR:-../shared/data}")
[ -d "$DENSE" ] || "$SP" train --model "$NET" --data cifar10 "${DATA[@]}" --epochs "${EPOCHS:-8}" --lr 0.05 \
  --warmup-epochs 0.5 --threads 2 --no-progress --out "$DENSE"
OPTS=(--bn-recalibrate "$BN_BATCHES" --granularity channel --schedule --ratio "${RATIO:-$DEFAULT_RATIO}" --round-to 1
      --particles 8 --generations 3 --score-images 500 --check-images 1000 --retrain-epochs 0 --final-epochs 1
      --final-images 10000 --lr 0.01 --threads "${THREADS:-2}")
for s in $SEEDS; do
  for m in $METHODS; do
    out="$R/search-$TAG$m-s$s"
    [ -d "$out" ] || "$SP" prune "$DENSE" --method "$m" "${OPTS[@]}" --seed "$s" --out "$out"
  done
done
