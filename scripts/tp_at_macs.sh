#!/usr/bin/env bash
# Torch-Pruning's group L2, uniform and global (round_to 8), at the counted MAC reduction of COMPACT_RUN (ours, compact,
# made from DENSE_RUN): for each scope, its ratio bisected on MACs (benchmarks/tp_equal_latency.py --mac-reduction,
# no timing; tune-NAME.json in TUNE_DIR), then
# prune, compact and retrain (1 epoch on TRAIN images, default 5,000; seeds SEEDS, default 0-2).
# Runs, with NAME = PREFIX<scope>SUFFIX (scope: layer or global): NAME-pruned, NAME-compact, NAME<RETRAINED><seed>
# (RETRAINED default -ce-s). The compact runs' paths are printed, one per line. Every step is skipped when its
# output exists. Used by tp_equal_macs_cifar10.sh and schedule_compare_cifar10.sh.
# Usage: scripts/tp_at_macs.sh DENSE_RUN COMPACT_RUN RUNS_DIR TUNE_DIR PREFIX [SUFFIX]
set -euo pipefail
DENSE=${1:?usage: tp_at_macs.sh DENSE_RUN COMPACT_RUN RUNS_DIR TUNE_DIR PREFIX [SUFFIX]}
OURS=${2:?usage: tp_at_macs.sh DENSE_RUN COMPACT_RUN RUNS_DIR TUNE_DIR PREFIX [SUFFIX]}
R=${3:?usage: tp_at_macs.sh DENSE_RUN COMPACT_RUN RUNS_DIR TUNE_DIR PREFIX [SUFFIX]}
TUNE=${4:?usage: tp_at_macs.sh DENSE_RUN COMPACT_RUN RUNS_DIR TUNE_DIR PREFIX [SUFFIX]}
PREFIX=${5:?usage: tp_at_macs.sh DENSE_RUN COMPACT_RUN RUNS_DIR TUNE_DIR PREFIX [SUFFIX]}
SUFFIX=${6:-}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
PY="${PYTHON:-.venv/bin/python}"
SEEDS=${SEEDS:-"0 1 2"}
MACS=$("$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['source_metrics']['macs'] / m['macs'])" \
  "$OURS/metrics.json")
for scope in layer global; do
  tp="$PREFIX$scope$SUFFIX"
  [ -f "$TUNE/tune-$tp.json" ] || "$PY" benchmarks/tp_equal_latency.py "$DENSE" --mac-reduction "$MACS" --scope "$scope" \
    --json "$TUNE/tune-$tp.json" >&2
  ratio=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen']['ratio'])" "$TUNE/tune-$tp.json")
  [ -d "$R/$tp-pruned" ] || "$SP" prune "$DENSE" --method tp-l2 --scope "$scope" --round-to 8 --ratio "$ratio" \
    --out "$R/$tp-pruned" >&2
  [ -d "$R/$tp-compact" ] || "$SP" compact "$R/$tp-pruned" --out "$R/$tp-compact" >&2
  for seed in $SEEDS; do
    [ -d "$R/$tp${RETRAINED:--ce-s}$seed" ] || "$SP" retrain "$R/$tp-compact" --epochs 1 --train-images "${TRAIN:-5000}" \
      --seed "$seed" --no-progress --out "$R/$tp${RETRAINED:--ce-s}$seed" >&2
  done
  echo "$R/$tp-compact"
done
