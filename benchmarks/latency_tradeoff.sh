#!/usr/bin/env bash
# Latency-aware search: the global channel search on paper-mnist at 60% of all maps pruned, with
# the latency term off (λ = 0) and on, then each result compacted and timed against the dense network in one
# process. λ is in MCR per millisecond of predicted conv latency per batch of 16 (structprune/search/latency.py).
# Usage: benchmarks/latency_tradeoff.sh [DENSE_RUN] [LAMBDA ...]      (about 5 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
DENSE=${1:-runs/mnist-dense}
shift || true
LAMBDAS=${*:-0.1 0.02 0}   # a run with λ > 0 first: it measures the table the others reuse
TABLE=runs/latency-mnist/latency-model.json   # measured once, shared by every λ so they see the same table
RUNS=()
for lam in $LAMBDAS; do
  out=runs/latency-mnist/lambda-$lam
  extra=()
  [ -f "$TABLE" ] && extra=(--latency-table "$TABLE")
  .venv/bin/python -m structprune prune "$DENSE" --data-dir ../shared/data --granularity channel --method pf \
    --scope global --ratio 0.6 --particles 12 --generations 4 --score-images 1000 --check-images 2000 \
    --final-epochs 1 --final-images 20000 --lr 0.01 --seed 0 --latency-weight "$lam" "${extra[@]}" --out "$out"
  if [ ! -f "$TABLE" ] && [ -f "$out/latency-model.json" ]; then cp "$out/latency-model.json" "$TABLE"; fi
  .venv/bin/python -m structprune compact "$out" --out "$out-compact"
  RUNS+=("$out-compact")
done
.venv/bin/python -m structprune bench "$DENSE" "${RUNS[@]}" --runtime eager --batch 1,16,64 --threads 2 --rounds 7 \
  --json runs/latency-mnist/bench.json
