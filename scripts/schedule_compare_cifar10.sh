#!/usr/bin/env bash
# Retraining schedule for a pruning target: one shot, then retrain, against gradual steps with retraining between.
# paper-cifar10 (scripts/recovery_cifar10.sh's paper-dense) pruned to TARGET (default 3) times fewer MACs by the
# target search (`prune --target-macs`, 16 particles x 6 generations, channel groups, min keep MIN_KEEP), two arms
# with the same retraining images in total (TRAIN images, default 5,000, one pass; seeds 0-2):
#   one-shot: prune to TARGET, compact, retrain on TRAIN images;
#   one-shot with finalists: the same search with --finalists FINALISTS (default 4; its best structures and its
#             uniform and global-importance starts each fine-tuned on TRAIN images, the best kept), then as one-shot;
#   one-shot by Torch-Pruning's importance: the same search with --importance tp-l2 (maps ranked by Torch-Pruning's
#             group L2 instead of the filters' L1), then as one-shot;
#   gradual:  STEPS steps (default 2) of TARGET^(1/STEPS) each: prune, compact, retrain on TRAIN/STEPS images;
#   and, at the one-shot result's counted MACs, Torch-Pruning's group L2, uniform and global (its ratio bisected on
#   MACs by scripts/tp_at_macs.sh), one shot, retrained alike.
# ROUND_TO (default 8) is the step of kept-map counts for our search and for Torch-Pruning's round_to alike (16 suits
# an AVX-512 CPU). ARMS (default "oneshot finalists tpl2 gradual") picks our arms; Torch-Pruning's always run, at the
# MACs of the one-shot arm (or of the tpl2 arm when "oneshot" is left out); BRACKET=1 adds their round_to step on
# the other side of those MACs (scripts/tp_at_macs.sh).
# MAC targets are exact, so nothing here is timed and it may run beside other work.
# Usage: scripts/schedule_compare_cifar10.sh RUNS_DIR   (every step is skipped when its output exists)
# Results: scripts/collect_results.py RUNS_DIR DEST/runs, then the table in docs/results.md.
set -euo pipefail
R=${1:?usage: schedule_compare_cifar10.sh RUNS_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
PY="${PYTHON:-.venv/bin/python}"
DENSE=${DENSE:-$R/paper-dense}
TARGET=${TARGET:-3}
STEPS=${STEPS:-2}
TRAIN=${TRAIN:-5000}
SEEDS=${SEEDS:-"0 1 2"}
ROUND_TO=${ROUND_TO:-8}
ARMS=${ARMS:-"oneshot finalists tpl2 gradual"}
SEARCH=(--method pf --bn-recalibrate 4 --score-images 500 --particles 16 --generations 6 --seed 0
        --target-forms channel --min-keep "${MIN_KEEP:-0.25}" --importance l1 --round-to "$ROUND_TO")
STEP_TARGET=$("$PY" -c "print(round($TARGET ** (1 / $STEPS), 4))")
STEP_IMAGES=$((TRAIN / STEPS))

pruned_compact() {  # SRC MAC_TARGET NAME [SEARCH OPTIONS]: NAME-pruned (the target search on SRC), then NAME-compact
  [ -d "$R/$3-pruned" ] || "$SP" prune "$1" --target-macs "$2" "${SEARCH[@]}" "${@:4}" --out "$R/$3-pruned"
  [ -d "$R/$3-compact" ] || "$SP" compact "$R/$3-pruned" --out "$R/$3-compact"
}

one="paper-m$TARGET-oneshot"
finalists="paper-m$TARGET-oneshot-f${FINALISTS:-4}"
tpl2="paper-m$TARGET-oneshot-tpl2"
has() { [[ " $ARMS " == *" $1 "* ]]; }
oneshots=()
has oneshot && pruned_compact "$DENSE" "$TARGET" "$one" && oneshots+=("$one")
has finalists && pruned_compact "$DENSE" "$TARGET" "$finalists" --finalists "${FINALISTS:-4}" --finalist-images "$TRAIN" \
  && oneshots+=("$finalists")
has tpl2 && pruned_compact "$DENSE" "$TARGET" "$tpl2" --importance tp-l2 && oneshots+=("$tpl2")
for name in "${oneshots[@]}"; do
  for seed in $SEEDS; do
    [ -d "$R/$name-s$seed" ] || "$SP" retrain "$R/$name-compact" --epochs 1 --train-images "$TRAIN" --seed "$seed" \
      --no-progress --out "$R/$name-s$seed"
  done
done

first="paper-m$TARGET-gradual$STEPS-step1"  # the first step starts from the dense run: one search for every seed
has gradual && pruned_compact "$DENSE" "$STEP_TARGET" "$first"
has gradual && for seed in $SEEDS; do
  src=$R/$first-compact
  for step in $(seq 1 "$STEPS"); do
    name="paper-m$TARGET-gradual$STEPS-s$seed-step$step"
    if [ "$step" -gt 1 ]; then
      pruned_compact "$src" "$STEP_TARGET" "$name"
      src=$R/$name-compact
    fi
    [ -d "$R/$name" ] || "$SP" retrain "$src" --epochs 1 --train-images "$STEP_IMAGES" --seed "$seed" \
      --no-progress --out "$R/$name"
    src=$R/$name
  done
done

RETRAINED=-s TRAIN=$TRAIN SEEDS=$SEEDS ROUND_TO=$ROUND_TO scripts/tp_at_macs.sh "$DENSE" "$R/${oneshots[0]}-compact" \
  "$R" "$R" "paper-m$TARGET-tp-" > /dev/null
