#!/usr/bin/env bash
# The README's MNIST search, timed: train paper-mnist 3 epochs, then the README's `prune ... --method pf --max
# --tolerance 0.2` with every other option at its default; writes RUNS/prune_seconds.txt.
# BN=1 trains the dense network with batch norm.
# Usage: scripts/readme_search_mnist.sh RUNS_DIR   (then scripts/collect_results.py RUNS_DIR DEST)
set -euo pipefail
R=${1:?usage: readme_search_mnist.sh RUNS_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
mkdir -p "$R"
BN_ARG=()
[ -n "${BN:-}" ] && BN_ARG=(--model-arg bn=true)
[ -d "$R/dense" ] || "$SP" train --model paper-mnist "${BN_ARG[@]}" --data mnist --data-dir ../shared/data --epochs 3 --out "$R/dense"
start=$(date +%s)
"$SP" prune "$R/dense" --granularity channel,intra --method pf --max --tolerance 0.2 --data-dir ../shared/data --out "$R/pf"
echo "$(( $(date +%s) - start ))" > "$R/prune_seconds.txt"
