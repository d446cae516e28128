#!/usr/bin/env bash
# Pruning to a measured speed-up on CIFAR-10, and Torch-Pruning at equal measured latency.
#
# 1. Targets: `prune --target-speedup S --runtime onnxruntime --batch B --threads 2 --target-forms FORMS` on
#    resnet20 (S = 2, 3) and paper-cifar10 (S = 2, 3, 5), B = 1 and 64 (FORMS default channel,blocks,intra;
#    16 particles x 6 generations scored on 500 validation images), one latency model per network and batch
#    (measured by the first run, reused by the others), each result compacted and timed against dense by
#    `structprune bench` (both in one run, median of rounds) at its batch: bench-<net>-ts<S>-b<B>.json.
# 2. At equal latency (COMPARE, default "resnet20:3:64"): Torch-Pruning's group L2, uniform and global, its ratio
#    bisected until its compact network measures at least our result's speed-up (benchmarks/tp_equal_latency.py),
#    then ours and both of its arms compacted and retrained alike (1 epoch on 5,000 images, seeds 0-2), and every
#    retrained network timed beside dense (pareto-<name>.json: the report's latency-against-MCR plot).
# FINALISTS=K (default 0): our search chooses among its K best structures by a short fine-tune (prune --finalists;
# results named ...-fK). RUNTIME=eager (default onnxruntime): targets timed in eager PyTorch (named ...-eager).
# Dense runs: scripts/recovery_cifar10.sh's paper-dense and resnet20-dense (WITH_RESNET20=1).
# Steps 1 and the bisection time networks: run them with nothing else running. Every step is skipped when its
# output exists, so an interrupted run resumes. Results: scripts/collect_results.py, tables in docs/results.md.
# Usage: scripts/target_compare_cifar10.sh RUNS_DIR OUT_DIR
set -euo pipefail
R=${1:?usage: target_compare_cifar10.sh RUNS_DIR OUT_DIR}
OUT=${2:?usage: target_compare_cifar10.sh RUNS_DIR OUT_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
PY="${PYTHON:-.venv/bin/python}"
FORMS=${FORMS:-channel,blocks,intra}
FINALISTS=${FINALISTS:-0}
RUNTIME=${RUNTIME:-onnxruntime}
SEARCH=(--method pf --bn-recalibrate 4 --score-images 500 --particles 16 --generations 6 --seed 0 --target-forms "$FORMS"
        --min-keep "${MIN_KEEP:-0.25}" --finalists "$FINALISTS")
SUFFIX=$([ "$RUNTIME" = onnxruntime ] || echo "-$RUNTIME")$([ "$FINALISTS" = 0 ] || echo "-f$FINALISTS")
TARGETS=${TARGETS:-"resnet20:2 resnet20:3 paper:2 paper:3 paper:5"}
BATCHES=${BATCHES:-"1 64"}
COMPARE=${COMPARE:-"resnet20:3:64"}
SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$OUT"

dense() { [ "$1" = paper ] && echo "$R/paper-dense" || echo "$R/$1-dense"; }

for t in $TARGETS; do
  net=${t%%:*}; s=${t##*:}
  for b in $BATCHES; do
    name="$net-ts$s-b$b$SUFFIX"
    lm="$R/latency-model-$net-b$b$([ "$RUNTIME" = onnxruntime ] || echo "-$RUNTIME").json"  # the first run's, reused
    reuse=(); [ -f "$lm" ] && reuse=(--latency-model "$lm")
    if [ ! -d "$R/$name-pruned" ] && ! "$SP" prune "$(dense "$net")" --target-speedup "$s" --runtime "$RUNTIME" \
        --batch "$b" --threads 2 "${SEARCH[@]}" "${reuse[@]}" --out "$R/$name-pruned"; then
      echo "$name: no result (see the error above; e.g. out of reach at this batch)" >&2; continue
    fi
    [ -f "$lm" ] || cp "$R/$name-pruned/latency-model.json" "$lm"
    [ -d "$R/$name-compact" ] || "$SP" compact "$R/$name-pruned" --out "$R/$name-compact"
    [ -f "$OUT/bench-$name.json" ] || "$SP" bench "$(dense "$net")" "$R/$name-compact" --runtime "$RUNTIME" \
      --batch "$b" --threads 2 --rounds "${ROUNDS:-7}" --json "$OUT/bench-$name.json" --no-progress
  done
done

measured() {  # the compact network's measured speed-up in a bench JSON
  "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(max(x['speedup_vs_first'] for x in r))" "$1"
}
ratio_of() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen']['ratio'])" "$1"; }

for c in $COMPARE; do
  IFS=: read -r net s b <<< "$c"
  name="$net-ts$s-b$b$SUFFIX"
  speed=$(measured "$OUT/bench-$name.json")
  arms=("$name"); compacts=("$R/$name-compact")
  for scope in layer global; do
    tp="$net-tp-$scope-s$s-b$b"
    [ -f "$OUT/tune-$tp.json" ] || "$PY" benchmarks/tp_equal_latency.py "$(dense "$net")" --speedup "$speed" \
      --scope "$scope" --batch "$b" --threads 2 --json "$OUT/tune-$tp.json"
    [ -d "$R/$tp-pruned" ] || "$SP" prune "$(dense "$net")" --method tp-l2 --scope "$scope" --round-to 8 \
      --ratio "$(ratio_of "$OUT/tune-$tp.json")" --out "$R/$tp-pruned"
    [ -d "$R/$tp-compact" ] || "$SP" compact "$R/$tp-pruned" --out "$R/$tp-compact"
    arms+=("$tp"); compacts+=("$R/$tp-compact")
  done
  [ -f "$OUT/bench-compare-$name.json" ] || "$SP" bench "$(dense "$net")" "${compacts[@]}" \
    --runtime onnxruntime --batch "$b" --threads 2 --rounds "${ROUNDS:-7}" --json "$OUT/bench-compare-$name.json" \
    --no-progress
  retrained=()
  for arm in "${arms[@]}"; do
    for seed in $SEEDS; do
      [ -d "$R/$arm-ce-s$seed" ] || "$SP" retrain "$R/$arm-compact" --epochs 1 --train-images 5000 --seed "$seed" \
        --no-progress --out "$R/$arm-ce-s$seed"
      retrained+=("$R/$arm-ce-s$seed")
    done
  done
  # the report's latency-against-MCR plot: every retrained network timed beside dense (same runtime and batch)
  [ ${#retrained[@]} = 0 ] || [ -f "$OUT/pareto-$name.json" ] || "$SP" bench "$(dense "$net")" "${retrained[@]}" \
    --runtime onnxruntime --batch "$b" --threads 2 --rounds "${ROUNDS:-7}" --json "$OUT/pareto-$name.json" --no-progress
done
