#!/usr/bin/env bash
# Torch-Pruning at equal MACs beside a --target-speedup result of scripts/target_compare_cifar10.sh: its group L2,
# uniform and global (round_to 8), the ratio bisected on counted MACs (benchmarks/tp_equal_latency.py
# --mac-reduction) to the MAC reduction of our compact network, then compacted, timed beside dense and ours in one
# bench run (bench-eqmacs-NAME.json) and retrained as ours was (1 epoch on 5,000 images, seeds 0-2; scripts/tp_at_macs.sh).
# For when timing noise is larger than what the equal-latency bisection must tell apart. The bench times networks:
# run it with nothing else running (NO_BENCH=1 skips it, e.g. while retraining beside another job; run again later).
# Usage: scripts/tp_equal_macs_cifar10.sh RUNS_DIR OUT_DIR NAME   (NAME e.g. paper-ts3-b64; its net is before -ts)
set -euo pipefail
R=${1:?usage: tp_equal_macs_cifar10.sh RUNS_DIR OUT_DIR NAME}
OUT=${2:?usage: tp_equal_macs_cifar10.sh RUNS_DIR OUT_DIR NAME}
NAME=${3:?usage: tp_equal_macs_cifar10.sh RUNS_DIR OUT_DIR NAME}
SP="${STRUCTPRUNE:-.venv/bin/structprune}"
net=${NAME%%-ts*}; rest=${NAME#*-ts}; s=${rest%%-b*}; b=${rest#*-b}; b=${b%%-*}
dense="$R/$net-dense"
compacts=("$R/$NAME-compact")
tps=$(scripts/tp_at_macs.sh "$dense" "$R/$NAME-compact" "$R" "$OUT" "$net-tp-" "-m$s-b$b")
mapfile -t tp_compacts <<< "$tps"
compacts+=("${tp_compacts[@]}")
[ -n "${NO_BENCH:-}" ] || [ -f "$OUT/bench-eqmacs-$NAME.json" ] || "$SP" bench "$dense" "${compacts[@]}" --runtime onnxruntime --batch "$b" \
  --threads 2 --rounds "${ROUNDS:-7}" --json "$OUT/bench-eqmacs-$NAME.json" --no-progress
