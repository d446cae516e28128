"""Markdown table of pruned run folders written by `structprune prune` with the search (metrics.json, search.json).

  .venv/bin/python benchmarks/search_table.py runs/search-mnist-*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(folder: Path) -> str:
    m = json.loads((folder / "metrics.json").read_text())
    cfg = json.loads((folder / "config.json").read_text())["search"]
    search = json.loads((folder / "search.json").read_text())
    steps = search["steps"]
    kept = ", ".join(f"{k.split('.')[-1]}: {v:.3f}" for k, v in m["kept_fraction"].items())
    dense_test = m["source_metrics"].get("test_mcr")
    delta = "" if dense_test is None else f"{(m['test_mcr'] - dense_test) * 100:+.2f}"
    ok = sum(s["accepted"] for s in steps)
    # MCR on the check subset once the last layer is pruned, before the final retraining: the masks' own quality
    # when no retraining ran between layers
    accepted = [s for s in steps if s["accepted"]]
    before = f"{accepted[-1]['check_mcr'] * 100:.2f}%" if accepted else ""
    argv = json.loads((folder / "config.json").read_text()).get("command", "").split()
    method = argv[argv.index("--method") + 1] if "--method" in argv[:-1] else cfg["method"]
    return (f"| {method} | {m['conv_macs_removed'] * 100:.1f}% ({m['conv_macs_dense'] / max(m['conv_macs'], 1):.2f}×) | "
            f"{kept} | {ok}/{len(steps)} | {before} | {m['val_mcr'] * 100:.2f}% | {m['test_mcr'] * 100:.2f}% | {delta} | "
            f"{m.get('search_seconds', float('nan')):.0f} |")


def main(folders: list[str]) -> int:
    print("| method | conv MACs removed | kept weight fraction per conv | steps kept "
          "| check MCR after the last step (before its retraining) | val MCR | test MCR | Δ test (points) | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in folders:
        path = Path(f)
        if (path / "metrics.json").exists() and (path / "search.json").exists():
            print(row(path))
        else:
            print(f"{path}: not a finished search run", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
