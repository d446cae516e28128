#!/usr/bin/env bash
# int8 deployment on CIFAR-10: the dense and compact networks of scripts/recovery_cifar10.sh (seed 0, retrained
# with the teacher), each exported as an int8 ONNX model (MCR and agreement against float in FILE.json), then
# float and int8 timed in ONNX Runtime, 2 threads, batch 64 and 1, in one `structprune bench` run per network
# family. Time it with nothing else running on the machine.
# Usage: scripts/int8_cifar10.sh RUNS_DIR OUT_DIR
set -euo pipefail
R=${1:?usage: int8_cifar10.sh RUNS_DIR OUT_DIR}
OUT=${2:?usage: int8_cifar10.sh RUNS_DIR OUT_DIR}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
ARM=${ARM:-kd-s0}
mkdir -p "$OUT"
for run in paper-dense "paper-3x-$ARM" "paper-5x-$ARM" resnet20-dense "resnet20-2x-$ARM"; do
  [ -d "$R/$run" ] || continue  # resnet20 runs only with WITH_RESNET20=1 in recovery_cifar10.sh
  [ -f "$OUT/$run-int8.onnx.json" ] || "$SP" export "$R/$run" --onnx "$OUT/$run-int8.onnx" --int8
  rm -f "$OUT/$run-int8.onnx"  # the model itself is not a result file; its comparison JSON is
done
[ -n "${EXPORT_ONLY:-}" ] && exit 0  # EXPORT_ONLY=1: accuracy only (may overlap other work); time later, quietly
bench() { local name=$1; shift; [ -f "$OUT/$name" ] || "$SP" bench "$@" --runtime onnxruntime --int8 \
  --batch 64,1 --threads 2 --rounds "${ROUNDS:-7}" --json "$OUT/$name" --no-progress; }
bench bench-paper-cifar10.json "$R/paper-dense" "$R/paper-3x-$ARM" "$R/paper-5x-$ARM"
if [ -d "$R/resnet20-2x-$ARM" ]; then bench bench-resnet20.json "$R/resnet20-dense" "$R/resnet20-2x-$ARM"; fi
