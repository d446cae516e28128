"""Issue 3's network targets across independent bench_network.py runs: each run's efficiency (latency ratio ÷
MAC ratio) per configuration and batch, with the median, range and how many runs meet the target.

    .venv/bin/python benchmarks/repeat_summary.py runs/repeat/run-*.json [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

TARGETS = {64: 0.9, 1: 0.75}  # issue 3: latency ratio at least this fraction of the MAC ratio


def load(paths: list[Path]) -> list[dict]:
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            raise SystemExit(f"{path}: not a bench_network.py JSON file ({err})") from None
        summary = runs[-1].get("summary") if isinstance(runs[-1], dict) else None
        if not isinstance(summary, dict) or not all(_well_formed(info) for info in summary.values()):
            raise SystemExit(f"{path}: not a bench_network.py JSON file (no summary of configurations)")
    return runs


def _well_formed(info: object) -> bool:
    """A configuration's summary: its MAC ratio and, per batch, the dense time and efficiency."""
    if not isinstance(info, dict) or not isinstance(info.get("mac_ratio"), int | float):
        return False
    cells = [v for k, v in info.items() if k.startswith("batch")]
    return all(isinstance(c, dict) and isinstance(c.get("dense_ms"), int | float)
               and isinstance(c.get("latency_over_mac_ratio"), int | float) for c in cells)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per configuration and batch: every run's dense ms and efficiency, their median and range."""
    rows = []
    configs = list(dict.fromkeys(name for run in runs for name in run["summary"]))
    for name in configs:
        found = [run["summary"][name] for run in runs if name in run["summary"]]
        batches = sorted({int(k[5:]) for info in found for k in info if k.startswith("batch")}, reverse=True)
        for batch in batches:
            cells = [info[f"batch{batch}"] for info in found if f"batch{batch}" in info]
            eff = [c["latency_over_mac_ratio"] for c in cells]
            target = TARGETS.get(batch)
            rows.append({"configuration": name, "batch": batch, "mac_ratio": found[0]["mac_ratio"],
                         "dense_ms": [c["dense_ms"] for c in cells], "efficiency": eff,
                         "median": statistics.median(eff), "min": min(eff), "max": max(eff), "target": target,
                         "runs_meeting": None if target is None else sum(e >= target for e in eff)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = summarise(load(args.files))
    print(f"{len(args.files)} runs")
    print("| configuration | MAC ratio | batch | dense ms per run | efficiency per run | median | range | runs ≥ target |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        meeting = "" if r["target"] is None else f"{r['runs_meeting']} of {len(r['efficiency'])} (≥ {r['target']})"
        print(f"| {r['configuration']} | {r['mac_ratio']:.2f} | {r['batch']} | "
              f"{', '.join(f'{d:.2f}' for d in r['dense_ms'])} | {', '.join(f'{e:.3f}' for e in r['efficiency'])} | "
              f"{r['median']:.3f} | {r['min']:.3f}–{r['max']:.3f} | {meeting} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "files": [str(f) for f in args.files],
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
