#!/usr/bin/env bash
# Pruning + fixed-point quantization of paper-mnist and paper-cifar10 (docs/results.md, "Fixed-point
# quantization"). prune (L1, channel scale) -> compact -> retrain the compact network -> quantize. Each network's chain runs under the shared heavy-job lock (taken once per chain) and each
# step is skipped when its run folder exists, so the script can be stopped and rerun. Needs the dense runs runs/mnist-dense and runs/cifar10-dense
# (runs/train-baselines.sh; override with MNIST_DENSE=... CIFAR10_DENSE=...) and waits for them.
#   usage: scripts/quant_experiments.sh [mnist] [mnist_pf] [cifar10]
#   QUANT_NICE=1 runs the chains at nice 19 outside the lock (when long searches hold it).
set -euo pipefail
cd "$(dirname "$0")/.."
SP=(.venv/bin/python -m structprune)
DATA=(--data-dir "${DATA_DIR:-../shared/data}")
LOCK=/tmp/structprune-heavy.lock

step() {  # step OUT_DIR command...: run unless OUT_DIR/metrics.json exists
  local out=$1; shift
  if [[ -f $out/metrics.json ]]; then echo "skip $out (done)"; return; fi
  echo "== $(date -u +%H:%M:%S) $*"
  "$@"
}

wait_for() {
  until [[ -f $1/metrics.json ]]; do sleep 30; done
}

mnist_source_ready() { wait_for "${MNIST_DENSE:-runs/mnist-dense}"; }
cifar10_source_ready() { wait_for "${CIFAR10_DENSE:-runs/cifar10-dense}"; }

mnist() {
  local d=${MNIST_DENSE:-runs/mnist-dense} p=runs/q5-mnist
  step $p-pruned "${SP[@]}" prune $d --granularity channel --ratio 0.625 --method l1 --round-to 1 --out $p-pruned "${DATA[@]}"
  step $p-compact "${SP[@]}" compact $p-pruned --out $p-compact "${DATA[@]}"
  step $p-retrained "${SP[@]}" retrain $p-compact --epochs 3 --out $p-retrained --no-progress "${DATA[@]}"
  step $p-q4 "${SP[@]}" quantize $p-retrained --bits 4 --epochs 1 --out $p-q4 --no-progress "${DATA[@]}"
  step $p-q4auto "${SP[@]}" quantize $p-retrained --bits 4 --per-layer auto --epochs 1 --out $p-q4auto --no-progress "${DATA[@]}"
  step $p-q3 "${SP[@]}" quantize $p-retrained --bits 3 --epochs 1 --out $p-q3 --no-progress "${DATA[@]}"
}

mnist_pf_source_ready() { wait_for "${MNIST_PF:-runs/search-mnist-pf}"; }

mnist_pf() {  # the particle-filter search result of benchmarks/search_mnist.sh (channel + intra-kernel)
  local s=${MNIST_PF:-runs/search-mnist-pf} p=runs/q5-mnist-pf
  step $p-compact "${SP[@]}" compact $s --out $p-compact "${DATA[@]}"
  step $p-q4 "${SP[@]}" quantize $p-compact --bits 4 --epochs 1 --out $p-q4 --no-progress "${DATA[@]}"
}

cifar10() {
  local d=${CIFAR10_DENSE:-runs/cifar10-dense} p=runs/q5-cifar10
  step $p-pruned "${SP[@]}" prune $d --granularity channel --ratio 0.5 --method l1 --round-to 1 --out $p-pruned "${DATA[@]}"
  step $p-compact "${SP[@]}" compact $p-pruned --out $p-compact "${DATA[@]}"
  step $p-retrained "${SP[@]}" retrain $p-compact --epochs 2 --out $p-retrained --no-progress "${DATA[@]}"
  step $p-q5 "${SP[@]}" quantize $p-retrained --bits 5 --epochs 1 --out $p-q5 --no-progress "${DATA[@]}"
  step $p-q4 "${SP[@]}" quantize $p-retrained --bits 4 --epochs 1 --out $p-q4 --no-progress "${DATA[@]}"
}

if [[ ${1:-} == --locked ]]; then  # internal: the chain itself, run with the lock held
  "$2"
  exit
fi
for target in ${@:-mnist cifar10}; do
  "${target}_source_ready"
  if [[ -n ${QUANT_NICE:-} ]]; then  # spare cycles only, outside the lock (as the lead runs cifar10-dense)
    nice -n 19 "$0" --locked "$target"
  else
    flock "$LOCK" "$0" --locked "$target"
  fi
done
