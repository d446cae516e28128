#!/usr/bin/env bash
# Do kernel blocks and intra-kernel shapes buy accuracy at equal measured latency? paper-cifar10, 3x at batch 64,
# ONNX Runtime, 2 threads, against channel-only pruning (ours and Torch-Pruning's) of the same dense run.
#
# 1. Our target search offered every fast form: `prune --target-speedup 3 --runtime onnxruntime --batch 64
#    --threads 2 --target-forms channel,blocks,intra` (16 particles x 6 generations, 500 scoring images, maps in
#    the CPU's default step), compacted: paper-ts3-b64-forms.
# 2. The forms forced, one shot: `prune --granularity channel,kernel,intra --method l1 --ratio C,0.5,0.3333`
#    (2 kernel blocks, one shared 2x3 intra pattern per layer) for C in CHANNEL_RATIOS (default "0.125 0.25"),
#    compacted: paper-f-c<C digits>-b2-i23.
# 3. Every arm retrained alike (1 epoch on 5,000 training images, seeds 0-2; the schedule comparison's retraining).
# 4. Timing: the dense network, these compact networks and the channel-only compact networks of
#    scripts/schedule_compare_cifar10.sh run with ROUND_TO=16 ARMS=tpl2 BRACKET=1 (folder R16: ours and
#    Torch-Pruning's group L2, uniform and global, both of its steps around our MACs) in REPEATS (default 3)
#    separate `structprune bench` runs (bench-k.json; the table takes each network's median speed-up over them),
#    then every retrained network beside dense in one more (pareto.json, the report's latency-against-MCR plot).
# The docs' report and plot, from the committed results (F=benchmarks/results/forms-compare-cifar10/runs,
# S=benchmarks/results/schedule-compare-cifar10-r16/runs): structprune report $F/paper-dense $F/*-s? \
#   $S/paper-m3-{oneshot-tpl2,tp-layer,tp-layer-other,tp-global,tp-global-other}-s? \
#   --bench benchmarks/results/forms-compare-cifar10/pareto.json --out docs/forms-compare-cifar10/report.md
# Time steps 1 and 4 with nothing else running. Every step is skipped when its output exists, so an interrupted
# run resumes. Results: scripts/collect_results.py; table in docs/results.md (scripts/render_docs.py).
# Usage: scripts/forms_compare_cifar10.sh RUNS_DIR R16_RUNS_DIR OUT_DIR   (RUNS_DIR/paper-dense: the dense run)
set -euo pipefail
R=${1:?usage: forms_compare_cifar10.sh RUNS_DIR R16_RUNS_DIR OUT_DIR}
R16=${2:?usage: forms_compare_cifar10.sh RUNS_DIR R16_RUNS_DIR OUT_DIR}
OUT=${3:?usage: forms_compare_cifar10.sh RUNS_DIR R16_RUNS_DIR OUT_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
CHANNEL_RATIOS=${CHANNEL_RATIOS:-"0.125 0.25"}
SEEDS=${SEEDS:-"0 1 2"}
REPEATS=${REPEATS:-3}
mkdir -p "$OUT"
DENSE="$R/paper-dense"

arms=(paper-ts3-b64-forms)
[ -d "$R/paper-ts3-b64-forms-pruned" ] || "$SP" prune "$DENSE" --target-speedup 3 --runtime onnxruntime --batch 64 \
  --threads 2 --method pf --bn-recalibrate 4 --score-images 500 --particles 16 --generations 6 --seed 0 \
  --target-forms channel,blocks,intra --min-keep 0.25 --out "$R/paper-ts3-b64-forms-pruned"
for c in $CHANNEL_RATIOS; do
  name="paper-f-c${c#0.}-b2-i23"
  [ -d "$R/$name-pruned" ] || "$SP" prune "$DENSE" --granularity channel,kernel,intra --method l1 \
    --ratio "$c,0.5,0.3333" --out "$R/$name-pruned"
  arms+=("$name")
done
compacts=()
retrained=()
for arm in "${arms[@]}"; do
  [ -d "$R/$arm-compact" ] || "$SP" compact "$R/$arm-pruned" --out "$R/$arm-compact"
  compacts+=("$R/$arm-compact")
  for seed in $SEEDS; do
    [ -d "$R/$arm-s$seed" ] || "$SP" retrain "$R/$arm-compact" --epochs 1 --train-images 5000 --seed "$seed" \
      --no-progress --out "$R/$arm-s$seed"
    retrained+=("$R/$arm-s$seed")
  done
done

channel_arms=(paper-m3-oneshot-tpl2 paper-m3-tp-layer paper-m3-tp-layer-other paper-m3-tp-global paper-m3-tp-global-other)
for arm in "${channel_arms[@]}"; do
  compacts+=("$R16/$arm-compact")
  for seed in $SEEDS; do retrained+=("$R16/$arm-s$seed"); done
done
for k in $(seq 1 "$REPEATS"); do
  [ -f "$OUT/bench-$k.json" ] || "$SP" bench "$DENSE" "${compacts[@]}" --runtime onnxruntime --batch 64 --threads 2 \
    --rounds "${ROUNDS:-7}" --json "$OUT/bench-$k.json" --no-progress
done
[ -f "$OUT/pareto.json" ] || "$SP" bench "$DENSE" "${retrained[@]}" --runtime onnxruntime --batch 64 --threads 2 \
  --rounds "${ROUNDS:-7}" --json "$OUT/pareto.json" --no-progress
