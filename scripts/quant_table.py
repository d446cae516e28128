"""Markdown table of quantized runs against their dense and pruned-float sources (docs/results.md).

    .venv/bin/python scripts/quant_table.py DENSE PRUNED_FLOAT QUANT [QUANT ...]
    .venv/bin/python scripts/quant_table.py --sensitivity QUANT_RUN   (a run made with --per-layer auto)

Each row: weight_bytes (kept weights at their word lengths + sparsity indices + float biases), the ratio
to the dense 32-bit network, and test MCR with its change from the dense and from the pruned float run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def metrics(run: str) -> dict:
    return json.loads((Path(run) / "metrics.json").read_text())


def bits_of(run: str) -> str:
    quant = Path(run) / "quant.json"
    if not quant.exists():
        return "32 (float)"
    by_layer: dict[str, int] = {}
    for w in json.loads(quant.read_text())["weights"].values():
        by_layer[w["layer"]] = w["bits"]
    values = list(by_layer.values())
    return str(values[0]) if len(set(values)) == 1 else "/".join(map(str, values))


def sensitivity_table(run: str) -> None:
    data = json.loads((Path(run) / "sensitivity.json").read_text())
    bits = sorted({int(b) for row in data["layers"].values() for b in row})
    print(f"Validation MCR with one layer quantized (float: {100 * data['base_mcr']:.2f}%), tolerance "
          f"{100 * data['tolerance']:.2f} pt:\n")
    print("| layer | " + " | ".join(f"{b} bits" for b in bits) + " | chosen |")
    print("|---|" + "---|" * (len(bits) + 1))
    for layer, row in data["layers"].items():
        cells = " | ".join(f"{100 * row[str(b)]:.2f}%" for b in bits)
        print(f"| {layer} | {cells} | {data['chosen_bits'][layer]} |")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--sensitivity":
        sensitivity_table(argv[1])
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    dense, pruned, *quantized = argv
    d, p = metrics(dense), metrics(pruned)
    print("| run | weight bits (per layer) | weight_bytes | smaller than dense 32-bit | test MCR | vs dense | vs pruned float |")
    print("|---|---|---|---|---|---|---|")
    for run in (dense, pruned, *quantized):
        m = metrics(run)
        print(f"| `{run}` | {bits_of(run)} | {m['weight_bytes']:,} | {d['weight_bytes'] / m['weight_bytes']:.1f}× | "
              f"{100 * m['test_mcr']:.2f}% | {100 * (m['test_mcr'] - d['test_mcr']):+.2f} pt | "
              f"{100 * (m['test_mcr'] - p['test_mcr']):+.2f} pt |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
