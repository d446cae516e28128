#!/usr/bin/env bash
# Torch-Pruning's group L2, uniform and global (round_to ROUND_TO, default 8), at the counted MAC reduction of
# COMPACT_RUN (ours, compact, made from DENSE_RUN): for each scope, its ratio bisected on MACs
# (benchmarks/tp_equal_latency.py --mac-reduction, no timing; tune-NAME.json in TUNE_DIR), then prune, compact and
# retrain (1 epoch on TRAIN images, default 5,000; seeds SEEDS, default 0-2).
# Runs, with NAME = PREFIX<scope>SUFFIX (scope: layer or global): NAME-pruned, NAME-compact, NAME<RETRAINED><seed>
# (RETRAINED default -ce-s). The compact runs' paths are printed, one per line. Every step is skipped when its
# output exists. BRACKET=1 adds, per scope, the nearest probe on the other side of the target (NAME-other).
# Used by tp_equal_macs_cifar10.sh and schedule_compare_cifar10.sh.
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
tp_arm() {  # NAME SCOPE RATIO: prune, compact and retrain one Torch-Pruning arm
  [ -d "$R/$1-pruned" ] || "$SP" prune "$DENSE" --method tp-l2 --scope "$2" --round-to "${ROUND_TO:-8}" --ratio "$3" \
    --out "$R/$1-pruned" >&2
  [ -d "$R/$1-compact" ] || "$SP" compact "$R/$1-pruned" --out "$R/$1-compact" >&2
  for seed in $SEEDS; do
    [ -d "$R/$1${RETRAINED:--ce-s}$seed" ] || "$SP" retrain "$R/$1-compact" --epochs 1 --train-images "${TRAIN:-5000}" \
      --seed "$seed" --no-progress --out "$R/$1${RETRAINED:--ce-s}$seed" >&2
  done
  echo "$R/$1-compact"
}
for scope in layer global; do
  tp="$PREFIX$scope$SUFFIX"
  [ -f "$TUNE/tune-$tp.json" ] || "$PY" benchmarks/tp_equal_latency.py "$DENSE" --mac-reduction "$MACS" --scope "$scope" \
    --round-to "${ROUND_TO:-8}" --json "$TUNE/tune-$tp.json" >&2
  ratio=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen']['ratio'])" "$TUNE/tune-$tp.json")
  tp_arm "$tp" "$scope" "$ratio"
  # BRACKET=1: also the nearest probe on the other side of the target (NAME-other), when round_to's steps leave the
  # chosen one far from it, so that the two arms bracket our MAC reduction
  other=$("$PY" - "$TUNE/tune-$tp.json" "$MACS" <<'PY'
import json, sys
tune, goal = json.load(open(sys.argv[1])), float(sys.argv[2])
side = tune["chosen"]["mac_reduction"] >= goal
far = [p for p in tune["probes"] if (p["mac_reduction"] >= goal) != side]
print(min(far, key=lambda p: abs(p["mac_reduction"] - goal))["ratio"] if far else "")
PY
)
  [ -z "${BRACKET:-}" ] || [ -z "$other" ] || tp_arm "$PREFIX$scope-other$SUFFIX" "$scope" "$other"
done
