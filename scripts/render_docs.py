"""Regenerate the tables of README.md and docs/*.md from committed result files.

A generated block in a Markdown file looks like

    <!-- table: NAME -->
    ...
    <!-- end table -->

and is filled by the renderer NAME below, which reads named committed files (benchmarks/results/*.json,
docs/reproduce/*.md). `python scripts/render_docs.py` rewrites every block in place;
`python scripts/render_docs.py --check` rewrites nothing and exits 1, naming each stale block, if a block
differs from what the files give.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "README.md", ROOT / "docs" / "results.md", ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "guide.md"]
REPRODUCE_REPORT = ROOT / "docs" / "reproduce" / "mnist-quick-run5.md"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)
TARGETS = {64: 0.9, 1: 0.75}  # latency ratio ÷ MAC ratio the project aims at, per batch size
CSR_TARGET = 5.0  # compact at least this many times faster than the same nonzeros as unstructured sparse

# run folders of the committed `structprune bench` files, as the tables name them
RUN_LABELS = {
    "runs/cifar10-dense": "dense `paper-cifar10`",
    "runs/s4-c40k25i6-compact": "channel-40+kernel-25+intra-6of9, compacted, not retrained",
    "runs/s4-c40k25i6-retrained": "channel-40+kernel-25+intra-6of9, retrained 2 epochs",
    "runs/s4-c40k25i6-retrained8": "channel-40+kernel-25+intra-6of9, retrained 2 + 6 epochs",
    "runs/s4-c25b2i6-compact": "channel-25+kernel-50b2+intra-6of9, compacted, not retrained",
    "runs/s4-c25b2i6-retrained": "channel-25+kernel-50b2+intra-6of9, retrained 8 epochs",
    "runs/s5-c25b2i6l50-compact": "channel-25+kernel-50b2+intra-6of9+linear-50, compacted, not retrained",
    "runs/s5-c25b2i6l50-retrained": "channel-25+kernel-50b2+intra-6of9+linear-50, retrained 8 epochs",
    "runs/s6-c20b2i6l50-compact": "channel-20+kernel-50b2+intra-6of9+linear-50, compacted, not retrained",
    "runs/s6-c20b2i6l50-retrained": "channel-20+kernel-50b2+intra-6of9+linear-50, retrained 8 epochs",
    "runs/repro-mnist-quick/train": "dense `paper-mnist` (`reproduce mnist --quick`)",
    "runs/repro-mnist-quick/compact": "`reproduce mnist --quick` final network (searched, intra-kernel checkerboard)",
    "runs/s3-mnist-pf-fast-compact": "search restricted to fast forms, retrained, compacted",
    "runs/mnist-dense": "dense `paper-mnist`",
    "runs/latency-mnist/lambda-0.1-compact": "latency-aware search, λ = 0.1",
    "runs/latency-mnist/lambda-0.02-compact": "latency-aware search, λ = 0.02",
    "runs/latency-mnist/lambda-0-compact": "the same search without the latency term (λ = 0)",
}


# ---------------------------------------------------------------------------------------------------- helpers

def load(name: str) -> object:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def f2(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def ms(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def times(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}×"


def pct(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}%"


def eff(x: float | None, batch: int) -> str:
    """An efficiency (latency ratio ÷ MAC ratio), bold where it meets the target for its batch size."""
    if x is None:
        return ""
    target = TARGETS.get(batch)
    return f"**{x:.2f}**" if target is not None and round(x, 2) >= target else f"{x:.2f}"


def label(run: str) -> str:
    return RUN_LABELS.get(run, f"`{run}`")


# ---------------------------------------------------------------- bench_network.py and repeat_summary.py files

def network(name: str, configs: list[str] | None = None, csr: bool = True) -> str:
    """bench_network.py: per configuration and batch, compact ms, latency ratio, efficiency (and × CSR)."""
    data = load(name)
    summary = data["summary"]
    batches = sorted({int(k[5:]) for info in summary.values() for k in info if k.startswith("batch")}, reverse=True)
    headers = ["configuration", "MAC ratio"]
    for b in batches:
        headers += [f"batch {b}: ms", "× dense", "efficiency"] + (["× CSR"] if csr else [])
    first = next(iter(summary.values()))
    dense_row = ["dense", "1.00"]
    for b in batches:
        dense_row += [ms(first[f"batch{b}"]["dense_ms"]), "1.00", ""] + ([""] if csr else [])
    rows = [dense_row]
    for config in configs or list(summary):
        info = summary[config]
        row = [config, f2(info["mac_ratio"])]
        for b in batches:
            cell = info.get(f"batch{b}")
            if cell is None:
                row += [""] * (4 if csr else 3)
                continue
            row += [ms(cell["compact_ms"]), f2(cell["latency_ratio"]), eff(cell["latency_over_mac_ratio"], b)]
            if csr:
                row.append(times(cell.get("compact_speedup_over_csr"), 1))
        rows.append(row)
    return table(headers, rows)


def repeat_summary(name: str) -> str:
    """repeat_summary.py: every run's efficiency, median, range and runs meeting the target."""
    data = load(name)
    rows = []
    for r in data["rows"]:
        each = ", ".join(f"{e:.3f}" for e in r["efficiency"])
        meeting = f"{r['runs_meeting']} of {len(r['efficiency'])} (≥ {r['target']})"
        if r["runs_meeting"] == len(r["efficiency"]):
            meeting = f"**{meeting}**"
        rows.append([r["configuration"], f2(r["mac_ratio"]), r["batch"], each, f"{r['median']:.3f}",
                     f"{r['min']:.3f}–{r['max']:.3f}", f"{min(r['dense_ms']):.2f}–{max(r['dense_ms']):.2f}", meeting])
    return table(["configuration", "MAC ratio", "batch", "efficiency of each run", "median", "range", "dense ms",
                  "runs ≥ target"], rows)


def round_per_block() -> str:
    before = load("network-round-per-block-before-s6.json")["summary"]
    after = load("network-round-per-block-after-s6.json")["summary"]
    rows = []
    for config in after:
        for how, data in (("per layer (before)", before), ("per kernel block (now)", after)):
            info = data[config]
            rows.append([config, how, f2(info["mac_ratio"]), f2(info["batch64"]["latency_ratio"]),
                         eff(info["batch64"]["latency_over_mac_ratio"], 64), f2(info["batch1"]["latency_ratio"]),
                         eff(info["batch1"]["latency_over_mac_ratio"], 1)])
    return table(["configuration", "`--round-to 16` rounds", "MAC ratio", "batch 64: × dense", "efficiency",
                  "batch 1: × dense", "efficiency"], rows)


def spin_gap() -> str:
    data = load("onnx-spin-gap-s4.json")
    rows = [[f"{1000 * r['gap_s']:.0f} ms", ms(r["dense_ms"]), ms(r["compact_ms"]), f2(r["latency_ratio"]),
             f2(r["latency_over_mac_ratio"])] for r in data["rows"]]
    return table(["idle gap between turns", "dense ms", "compact ms", "× dense", "efficiency"], rows)


# --------------------------------------------------------------------------- `structprune bench --json` files

def _macs_by_run(records: list[dict] | None = None) -> dict[str, int]:
    """MACs per run folder: from the given records, else from any committed bench file (older eager files do
    not record them)."""
    found: dict[str, int] = {}
    sources = [records] if records else []
    sources += [json.loads(p.read_text(encoding="utf-8")) for p in sorted(RESULTS.glob("cli-trained*.json"))]
    for source in sources:
        for r in source:
            if isinstance(r.get("macs"), int) and "reference" not in r:
                found.setdefault(r["run"], r["macs"])
    return found


def _unstructured_of(run: str, by_run: dict[str, dict]) -> dict | None:
    """The unstructured reference row of a run; a retrained run has its compact source's architecture and
    nonzero count, so it is compared with that run's reference."""
    ref = by_run.get(f"{run}#unstructured")
    if ref is None:
        stem = re.sub(r"-retrained\d*$", "-compact", run)
        ref = by_run.get(f"{stem}#unstructured") if stem != run else None
    return ref


def cli_bench(names: list[str], mcr: bool = True) -> str:
    """structprune bench --json: each run against the first run of its batch, and against its unstructured
    (CSR) reference where the file has one."""
    rows = []
    for name in names:
        records = load(name)
        macs = _macs_by_run(records)
        for batch in sorted({r["batch"] for r in records}, reverse=True):
            group = [r for r in records if r["batch"] == batch]
            dense = group[0]
            by_run = {r["run"]: r for r in group}
            for r in group:
                if "reference" in r:
                    continue
                ratio = dense["median_ms"] / r["median_ms"]
                mac_ratio = (macs[dense["run"]] / macs[r["run"]]) if r["run"] in macs and dense["run"] in macs else None
                unstructured = _unstructured_of(r["run"], by_run)
                row = [f"`{name}`", label(r["run"]), batch, ms(r["median_ms"]), f2(ratio), f2(mac_ratio),
                       eff(ratio / mac_ratio, batch) if mac_ratio and r is not dense else "",
                       times(unstructured["median_ms"] / r["median_ms"], 1) if unstructured else ""]
                if mcr:
                    row.append(pct(r.get("test_mcr")))
                rows.append(row)
    headers = ["file", "run", "batch", "median ms", "× dense", "MAC ratio", "efficiency",
               "× unstructured (CSR, eager)"] + (["test MCR"] if mcr else [])
    if len(names) == 1:
        headers, rows = headers[1:], [row[1:] for row in rows]
    return table(headers, rows)


def accuracy(names: list[str]) -> str:
    """Test MCR, MACs and parameters of every trained run in the given `structprune bench --json` files."""
    seen: dict[str, dict] = {}
    for name in names:
        for r in load(name):
            if "reference" not in r and r["run"] not in seen:
                seen[r["run"]] = r
    dense_macs = next(iter(seen.values()))["macs"]
    rows = [[label(run), f"{r['macs']:,}", times(dense_macs / r["macs"]), f"{r['params']:,}", pct(r.get("test_mcr"))]
            for run, r in seen.items()]
    return table(["run", "MACs / image", "fewer MACs", "params", "test MCR (1,000 images)"], rows)


def cli_repeats(names: list[str]) -> str:
    """Several `structprune bench` runs of one command: the efficiency of each run in each."""
    rows = []
    for name in names:
        records = load(name)
        macs = _macs_by_run(records)
        for batch in sorted({r["batch"] for r in records}, reverse=True):
            group = [r for r in records if r["batch"] == batch and "reference" not in r]
            dense = group[0]
            for r in group[1:]:
                ratio = dense["median_ms"] / r["median_ms"]
                mac_ratio = macs[dense["run"]] / macs[r["run"]]
                rows.append([f"`{name}`", label(r["run"]), batch, ms(dense["median_ms"]), ms(r["median_ms"]),
                             f2(ratio), eff(ratio / mac_ratio, batch)])
    return table(["file", "run", "batch", "dense ms", "run ms", "× dense", "efficiency"], rows)


# ------------------------------------------------------------------------- layers, profiles, other scripts

def layers(names: list[str], csr: bool = True) -> str:
    """bench_layers.py: each compact case against dense channels_last, NCHW and im2col (and CSR)."""
    rows = []
    for name in names:
        records = load(name)["records"]
        med = {r["variant"]: r["median_ms"] for r in records}
        dense_macs = next(r["macs"] for r in records if r["kind"] == "dense-cl")
        for r in records:
            if r["kind"] != "compact":
                continue
            c = r["case"]
            row = [c, f2(dense_macs / r["macs"]), ms(r["median_ms"]), f2(med["dense-cl"] / r["median_ms"]),
                   f2(med["dense-nchw"] / r["median_ms"]), f2(med["im2col"] / r["median_ms"])]
            if csr:
                c_ms = med.get(f"{c} | csr")
                row += [ms(c_ms), f2(c_ms / r["median_ms"]) if c_ms else ""]
            rows.append(row)
    first = load(names[0])["records"]
    base = {r["kind"]: r["median_ms"] for r in first if r["kind"] in ("dense-cl", "dense-nchw", "im2col")}
    rows.insert(0, ["dense (channels_last; NCHW; im2col + GEMM)", "1.00",
                    f"{ms(base['dense-cl'])}; {ms(base['dense-nchw'])}; {ms(base['im2col'])}", "1.00", "", "", ]
                + (["", ""] if csr else []))
    headers = ["case", "MAC ratio", "compact ms", "× dense channels_last", "× dense NCHW", "× im2col"]
    return table(headers + (["CSR ms", "× CSR"] if csr else []), rows)


def profile_ops(name: str) -> str:
    """profile_network.py: time per operator kind, ms per forward pass and share of the total."""
    data = load(name)
    kinds = [k for k in ("conv", "pool", "relu", "linear", "other")
             if any(row["ms"].get(k) for row in data["rows"].values())]
    rows = []
    for config, row in data["rows"].items():
        total = row["total_ms"]
        shares = [f"{ms(row['ms'].get(k, 0.0))} ({100 * row['ms'].get(k, 0.0) / total:.0f}%)" for k in kinds]
        rows.append([config, f2(row["mac_ratio"]), *shares, ms(total)])
    return table(["network", "MAC ratio", *kinds, "total ms"], rows)


def profile_layers(name: str, config: str) -> str:
    """profile_network.py --per-layer: each ONNX Runtime node beside the dense network's same node."""
    data = load(name)
    row = data["rows"][config]
    rows = [[p["op"], p.get("layer") or "", ms(p["dense_ms"]), ms(p["ms"]), f2(p["speedup"]),
             f2(p.get("mac_ratio")), f2(p.get("efficiency"))] for p in row["per_layer"]]
    dense_total = data["rows"]["dense"]["total_ms"]
    rows.append(["all nodes", "", ms(dense_total), ms(row["total_ms"]), f2(dense_total / row["total_ms"]),
                 f2(row["mac_ratio"]), f2(dense_total / row["total_ms"] / row["mac_ratio"])])
    return table(["node", "layer", "dense ms", "compact ms", "× dense", "MAC ratio", "efficiency"], rows)


def layer_efficiency(name: str) -> str:
    """layer_efficiency.py: each layer of the dense network beside its compact counterpart."""
    data = load(name)
    rows = []
    for config, records in data["results"].items():
        for r in records:
            if r["type"] not in ("Conv2d", "Linear") and not r["type"].endswith("Conv2d"):
                continue
            rows.append([config, r["layer"], r["batch"], r["other_type"], f2(r["mac_ratio"]), f2(r["latency_ratio"]),
                         f2(r["efficiency"]), r.get("other_kernels", "")])
    return table(["network", "layer", "batch", "compact layer", "MAC ratio", "× dense", "efficiency", "kernel"], rows)


def onnx_models() -> str:
    data = load("onnx.json")
    rows = [[r["model"], r["variant"], r["threads"], r["batch"], f"{r['macs'] / 1e6:.1f} M", f2(r["mac_ratio"]),
             ms(r["median_ms"]), f"{r['speedup_vs_dense']:.2f} ({r['speedup_min']:.2f}–{r['speedup_max']:.2f})"]
            for r in data["results"]]
    return table(["model", "variant", "threads", "batch", "MACs", "MAC ratio", "ms (median)",
                  "× dense (range over rounds)"], rows)


def throughput() -> str:
    data = load("throughput-2threads.json")
    rows = [[r["model"], f"{r['params']:,}", f"{r['macs'] / 1e6:.1f} M",
             f"{r['infer_images_per_s']:.0f} ({r['infer_min']:.0f}–{r['infer_max']:.0f})",
             f"{r['train_images_per_s']:.0f} ({r['train_min']:.0f}–{r['train_max']:.0f})"] for r in data["rows"]]
    return table(["model", "params", "MACs / image", "inference images/s (range)", "training images/s (range)"], rows)


def cuda_check() -> str:
    data = load("cuda-check-h200.json")
    rows = [[key, "passed" if v["ok"] else "FAILED", v["detail"]] for key, v in data.items()
            if isinstance(v, dict) and "ok" in v]
    t = data["timing"]
    rows.append(["timing, batch 256 (dense; compact)", "", f"{ms(t['dense_b256_ms'])} ms; {ms(t['compact_b256_ms'])} ms"])
    rows.append(["timing, batch 1 (dense; compact)", "", f"{ms(t['dense_b1_ms'])} ms; {ms(t['compact_b1_ms'])} ms"])
    return table(["check", "result", "detail"], rows)


# ------------------------------------------------------------------------- the committed reproduction report

def _report_table(heading: str) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table under `## heading` of the committed `structprune report` output."""
    text = REPRODUCE_REPORT.read_text(encoding="utf-8")
    section = text[text.index(f"\n## {heading}\n") + 1:]
    block = []
    for ln in section.splitlines()[1:]:
        if ln.startswith("## "):
            break
        if ln.startswith("|"):
            block.append(ln)
        elif block:
            break
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in block]
    return split[0], split[2:]


def reproduce_runs(stages: tuple[str, ...] = ("train", "search", "retrain", "quantize", "compact")) -> str:
    headers, rows = _report_table("Runs")
    keep = ["run", "val MCR", "test MCR", "MACs", "weight bytes", "MACs removed", "MAC ratio", "size ratio",
            "Δ test MCR"]
    idx = [headers.index(h) for h in keep]
    return table(keep, [[row[i] for i in idx] for row in rows if row[0] in stages])


def reproduce_ladder() -> str:
    headers, rows = _report_table("Runs")
    by = {row[0]: row for row in rows}
    out = []
    for method in ("l1", "random"):
        for scale in ("channel", "kernel", "intra"):
            cells = [by.get(f"ladder-{method}-{scale}-{p}") for p in (25, 50, 75)]
            out.append([method, scale] + [f"{c[headers.index('test MCR')]} ({c[headers.index('MAC ratio')]})"
                                          if c else "" for c in cells])
    return table(["method", "scale", "25% pruned: test MCR (MAC ratio)", "50%", "75%"], out)


def reproduce_latency() -> str:
    headers, rows = _report_table("Measured latency")
    return table(headers, rows)


def reproduce_storage() -> str:
    headers, rows = _report_table("Storage")
    return table(headers, rows)


# ------------------------------------------------------------------------------------- summaries for readers

def network_targets() -> str:
    """Each three-scale network against the targets, from the repeated runs and the trained runs."""
    rows = []
    for summary, retrained_file, config in (
            ("repeat-c20-s6/summary.json", "cli-trained-c20-onnxruntime-s6.json",
             "channel-20+kernel-50b2+intra-6of9+linear-50"),
            ("repeat-s6/summary.json", "cli-trained-linear-onnxruntime-s5.json",
             "channel-25+kernel-50b2+intra-6of9+linear-50")):
        reps = {r["batch"]: r for r in load(summary)["rows"] if r["configuration"] == config}
        records = load(retrained_file)
        trained = [r for r in records if r["run"].endswith("l50-retrained")]
        cells = []
        for batch in (64, 1):
            r = reps[batch]
            verdict = "met" if r["runs_meeting"] == len(r["efficiency"]) else (
                "not met" if r["runs_meeting"] == 0 else "at the threshold")
            cells.append(f"{verdict}: median {r['median']:.3f}, {r['min']:.3f}–{r['max']:.3f}, "
                         f"{r['runs_meeting']} of {len(r['efficiency'])} runs ≥ {r['target']}")
        by = {(r["run"], r["batch"]): r for r in records}
        speed = []
        for batch in (64, 1):
            run = next(r for r in trained if r["batch"] == batch)
            ref = by.get((re.sub(r"-retrained$", "-compact", run["run"]) + "#unstructured", batch))
            speed.append(ref["median_ms"] / run["median_ms"])
        csr = f"{'met' if min(speed) >= CSR_TARGET else 'not met'}: {speed[0]:.1f}× / {speed[1]:.1f}×"
        mcr = pct(trained[0].get("test_mcr"))
        rows.append([config, f2(reps[64]["mac_ratio"]), mcr, *cells, csr])
    return table(["network (random weights for the repeated runs)", "MAC ratio", "test MCR, trained",
                  "batch 64 (≥ 0.9)", "batch 1 (≥ 0.75)", f"× unstructured, batch 64 / 1 (≥ {CSR_TARGET:.0f}×)"], rows)


def readme_summary() -> str:
    """A few headline rows for the README."""
    rows = []
    headers, report = _report_table("Runs")
    by = {row[0]: row for row in report}
    _, latency = _report_table("Measured latency")
    lat = {(r[0], r[1], r[2]): r for r in latency}
    q = by["quantize"]
    rows.append(["MNIST, `reproduce mnist --quick` (searched channel + kernel + intra, 6-bit weights)",
                 by["train"][headers.index("test MCR")], q[headers.index("test MCR")], q[headers.index("MAC ratio")],
                 q[headers.index("size ratio")], lat[("compact", "as run", "64")][6], lat[("compact", "as run", "1")][6],
                 "PyTorch eager"])
    for name, run in (("cli-trained-c20-onnxruntime-s6.json", "runs/s6-c20b2i6l50-retrained"),
                      ("cli-trained-linear-onnxruntime-s5.json", "runs/s5-c25b2i6l50-retrained")):
        records = load(name)
        get = {(r["run"], r["batch"]): r for r in records}
        dense64, dense1 = get[("runs/cifar10-dense", 64)], get[("runs/cifar10-dense", 1)]
        r64, r1 = get[(run, 64)], get[(run, 1)]
        cfg = RUN_LABELS[run].split(",")[0]
        rows.append([f"CIFAR-10, {cfg}, retrained", pct(dense64["test_mcr"]), pct(r64["test_mcr"]),
                     times(dense64["macs"] / r64["macs"]), "– (float32)",
                     times(dense64["median_ms"] / r64["median_ms"]), times(dense1["median_ms"] / r1["median_ms"]),
                     "ONNX Runtime"])
    return table(["network", "dense test MCR", "test MCR", "fewer MACs", "smaller weights", "faster, batch 64",
                  "faster, batch 1", "runtime (2 threads)"], rows)


# result folders written by one script (by path prefix, first match), for files that record no command
FOLDER_WRITERS = (("layers-", "benchmarks/bench_layers.py"), ("recovery-cifar10", "scripts/recovery_cifar10.sh"),
                  ("int8-cifar10", "scripts/int8_cifar10.sh"), ("plain-flags-cifar10", "scripts/plain_flags_cifar10.sh"),
                  ("reproduce-mnist-quick", "structprune reproduce mnist --quick"),
                  ("latency-model-check/", "benchmarks/latency_model_check.py"),
                  ("readme-search-mnist", "scripts/readme_search_mnist.sh"),
                  ("search-resnet20-cifar10", "benchmarks/search_methods_cifar10.sh"),
                  ("search-mobilenetv2-cifar10", "benchmarks/search_methods_cifar10.sh"),
                  ("target-compare-", "scripts/target_compare_cifar10.sh"),
                  ("schedule-compare-cifar10", "scripts/schedule_compare_cifar10.sh"),
                  ("forms-compare-cifar10", "scripts/forms_compare_cifar10.sh"),
                  ("timing-noise/", "benchmarks/timing_noise.py"),
                  ("channel-step/", "benchmarks/channel_step.py"),
                  ("target-cifar10", "scripts/target_cifar10.sh"))


def channel_step() -> str:
    """benchmarks/channel_step.py: each width's median ms per runtime and batch, and the 16k + 8 : 16k + 16 ratios."""
    rows, width_list = [], ""
    for path in sorted((RESULTS / "channel-step").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        widths = sorted(data["median_ms"], key=int)
        steps = ", ".join(f"{k} {v:.2f}" for k, v in data["odd_step_ratio"].items())
        rows.append([f"`{path.name}`", data["runtime"], data["batch"], data["cpu_capability"],
                     " / ".join(ms(data["median_ms"][w]) for w in widths), steps])
        width_list = " / ".join(widths)
    return table(["file", "runtime", "batch", "CPU", f"ms at width {width_list}",
                  "16k + 8 : 16k + 16 (time ratio)"], rows)


def result_files() -> str:
    """Every committed result file, with the command that wrote it where the file records one."""
    rows = []
    for path in sorted(RESULTS.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        command = None
        if isinstance(data, dict):
            command = data.get("command") or (data.get("meta") or {}).get("command")
        rel = str(path.relative_to(RESULTS))
        by_folder = next((w for prefix, w in FOLDER_WRITERS if rel.startswith(prefix)), None)
        if command:
            script = command.split()[0]
        elif by_folder is not None:
            script = by_folder
        else:
            script = WRITERS.get(rel, "structprune bench --json" if isinstance(data, list) else "?")
        rows.append([f"`{rel}`", f"`{script}`"])
    return table(["file (in benchmarks/results/)", "written by"], rows)



# ----------------------------------------------------------- scripts/recovery_cifar10.sh and int8_cifar10.sh

RECOVERY = "recovery-cifar10"
RECOVERY_CONFIGS = (("paper-3x", "paper-dense", "`paper-cifar10`, channel-20+kernel-50b2+intra-6of9+linear-50"),
                    ("paper-5x", "paper-dense", "`paper-cifar10`, channel-25+kernel-50b2+intra-6of9+linear-50"),
                    ("resnet20-2x", "resnet20-dense", "`resnet20`, channel-30"))


def _metrics(run: str) -> dict | None:
    path = RESULTS / RECOVERY / run / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _mean_sd(values: list[float]) -> str:
    """Percent mean ± sample standard deviation (n noted when under 3)."""
    if not values:
        return ""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}% (n=1)"
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    note = "" if len(values) >= 3 else f" (n={len(values)})"
    return f"{100 * mean:.2f} ± {100 * sd:.2f}%{note}"


def recovery() -> str:
    """Retraining with and without distillation: val/test MCR, mean ± sd over seeds, per pruned network."""
    rows = []
    for config, dense_run, name in RECOVERY_CONFIGS:
        dense, compact = _metrics(dense_run), _metrics(f"{config}-compact")
        if dense is None or compact is None:
            continue
        rows.append([name, "dense", "", pct(dense["val_mcr"]), pct(dense["test_mcr"]), "1.00×"])
        ratio = times(dense["macs"] / compact["macs"])
        rows.append([name, "compacted, not retrained", "", pct(compact["val_mcr"]), pct(compact["test_mcr"]), ratio])
        for arm, what in (("ce", "retrained, cross-entropy"), ("kd", "retrained, distilled from dense")):
            runs = [m for m in (_metrics(f"{config}-{arm}-s{s}") for s in range(10)) if m is not None]
            if runs:
                rows.append([name, what, str(len(runs)), _mean_sd([m["val_mcr"] for m in runs]),
                             _mean_sd([m["test_mcr"] for m in runs]), ratio])
    return table(["network", "stage", "seeds", "val MCR (5,000 images)", "test MCR (1,000 images)", "fewer MACs"],
                 rows)



INT8 = "int8-cifar10"


def int8_deployment() -> str:
    """Float and int8 ONNX Runtime latency of each network beside the dense float one, and their MCRs."""
    rows = []
    for bench_file, dense_run in (("bench-paper-cifar10.json", "paper-dense"), ("bench-resnet20.json", "resnet20-dense")):
        path = RESULTS / INT8 / bench_file
        if not path.exists():
            continue
        records = json.loads(path.read_text(encoding="utf-8"))
        by = {(Path(r["run"].split("#")[0]).name + ("#int8" if r["run"].endswith("#int8") else ""), r["batch"]): r
              for r in records}
        runs = list(dict.fromkeys(Path(r["run"].split("#")[0]).name for r in records))
        for run in runs:
            check_path = RESULTS / INT8 / f"{run}-int8.onnx.json"
            splits = json.loads(check_path.read_text(encoding="utf-8"))["splits"] if check_path.exists() else {}
            for kind in ("float32", "int8"):
                key = run if kind == "float32" else f"{run}#int8"
                cells = []
                for batch in (64, 1):
                    r, dense = by.get((key, batch)), by.get((dense_run, batch))
                    cells += [ms(r and r["median_ms"]),
                              times(dense["median_ms"] / r["median_ms"]) if r and dense else ""]
                mcr = [pct(splits.get(split, {}).get(f"{'float' if kind == 'float32' else 'int8'}_mcr"))
                       for split in ("val", "test")]
                agree = pct(splits.get("test", {}).get("top1_agreement")) if kind == "int8" else ""
                rows.append([f"`{run}`", kind, *mcr, agree, *cells])
    return table(["run", "weights", "val MCR", "test MCR", "test agreement with float", "batch 64 ms",
                  "× dense float32", "batch 1 ms", "× dense float32"], rows)



PLAIN_RUNS = ("plain-flags-cifar10", "plain-flags-cifar10-rerun")  # the second: the same command on a quieter host


def plain_flags() -> str:
    """The plain-flag prune of paper-cifar10, compacted, against dense: speed-up and the share of the MAC
    reduction it keeps, per bench run, runtime and batch."""
    rows = []
    for folder in PLAIN_RUNS:
        for runtime in ("eager", "onnxruntime"):
            path = RESULTS / folder / f"bench-{runtime}.json"
            if not path.exists():
                continue
            records = json.loads(path.read_text(encoding="utf-8"))
            for batch in (64, 1):
                at = [r for r in records if r["batch"] == batch and "#" not in r["run"]]
                dense = next(r for r in at if r["run"].endswith("paper-dense"))
                for r in at:
                    if r is dense:
                        continue
                    speed, macs = dense["median_ms"] / r["median_ms"], dense["macs"] / r["macs"]
                    rows.append([f"`{folder}`", runtime, batch, ms(dense["median_ms"]), ms(r["median_ms"]),
                                 times(macs), times(speed), f2(speed / macs)])
    return table(["results", "runtime", "batch", "dense ms", "compact ms", "fewer MACs", "faster",
                  "share of the MAC reduction"], rows)


WRITERS = {  # files that do not record their command
    "cuda-check-h200.json": "scripts/check_cuda.py",
    "throughput-2threads.json": "benchmarks/bench_throughput.py",
    "per-layer-repro-mnist-quick-s3.json": "structprune bench --per-layer --json",
}

# ----------------------------------------------------------------------- benchmarks/search_methods_cifar10.sh

SEARCH_RESNET20 = "search-resnet20-cifar10"
SEARCH_METHOD_NAMES = (  # (run name part, method, what it is); nobn-: scored without batch-norm re-estimation
    ("pf", "pf", "particle filter"), ("nobn-pf", "pf", "particle filter, no batch-norm re-estimation"),
    ("epf", "epf", "evolutionary particle filter"), ("l1", "l1", "L1, same schedule"),
    ("random-best", "random-best", "random, best of the same budget"), ("tp-l2", "tp-l2", "Torch-Pruning group L2"))


def search_methods(folder: str, tag: str) -> str:
    """Each search method of one network's comparison: val/test MCR mean ± sd over seeds."""
    root = RESULTS / folder
    rows = []
    for part, method, name in SEARCH_METHOD_NAMES:
        folders = sorted(p.parent for p in root.glob(f"search-{tag}-{part}-s*/metrics.json"))
        if not folders:
            continue
        runs = [json.loads((f / "metrics.json").read_text(encoding="utf-8")) for f in folders]
        before = [json.loads((f / "search.json").read_text(encoding="utf-8"))["steps"][-1]["check_mcr"]
                  for f in folders if (f / "search.json").is_file()]
        ratio = sum(m["conv_macs_dense"] / max(m["conv_macs"], 1) for m in runs) / len(runs)
        dead = sum(m.get("dead_units", {}).get("removed_dead_maps", 0) for m in runs) / len(runs)
        removed = sum(m.get("dead_units", {}).get("removed_maps", 0) for m in runs) / len(runs)
        rows.append([f"`{method}` ({name})", str(len(runs)), times(ratio), _mean_sd([m["val_mcr"] for m in runs]),
                     _mean_sd([m["test_mcr"] for m in runs]), _mean_sd(before),
                     f"{sum(m.get('search_seconds', 0.0) for m in runs) / len(runs) / 60:.1f}",
                     f"{dead:g} of {removed:g}"])
    return table(["method", "seeds", "fewer conv MACs", "val MCR (5,000 images)", "test MCR (1,000 images)",
                  "before retraining: check MCR (1,000 images)", "search minutes (mean)",
                  "removed maps never active (mean)"], rows)


def search_resnet20() -> str:
    """Each search method on resnet20 at about 2x fewer conv MACs."""
    return search_methods(SEARCH_RESNET20, "r20")


def search_mobilenetv2() -> str:
    """Each search method on mobilenetv2 at about 1.5x fewer conv MACs."""
    return search_methods("search-mobilenetv2-cifar10", "mnv2")


# ------------------------------------------------------------------------------- scripts/schedule_compare_cifar10.sh

SCHEDULE = "schedule-compare-cifar10"
SCHEDULE_RUN = re.compile(r"^paper-m(?P<target>[0-9.]+)-(?:oneshot(?:-f(?P<finalists>[0-9]+))?(?P<tpl2>-tpl2)?"
                          r"-s(?P<one>[0-9]+)"
                          r"|gradual(?P<steps>[0-9]+)-s(?P<seed>[0-9]+)-step(?P<step>[0-9]+)"
                          r"|tp-(?P<scope>layer|global)(?P<other>-other)?-s(?P<tpseed>[0-9]+))$")


def _schedule_arm(match: re.Match) -> tuple[int, str, str] | None:
    """(table order, arm, seed) of a retrained run of the schedule comparison; None for a gradual run's earlier
    steps."""
    if match["one"] is not None and match["finalists"] is not None:
        return 1, f"ours (`--target-macs --importance l1 --finalists {match['finalists']}`): one shot, then retrain", \
            match["one"]
    if match["one"] is not None and match["tpl2"] is not None:
        return 2, "ours (`--target-macs --importance tp-l2`): one shot, then retrain", match["one"]
    if match["one"] is not None:
        return 0, "ours (`--target-macs --importance l1`): one shot, then retrain", match["one"]
    if match["scope"] is not None:
        order, scope = (4, "uniform") if match["scope"] == "layer" else (6, "global")
        if match["other"]:  # scripts/tp_at_macs.sh BRACKET=1: the round_to step on the other side of our MACs
            return order + 1, f"Torch-Pruning group L2, {scope}, its next step past our MACs: one shot, then retrain", \
                match["tpseed"]
        return order, f"Torch-Pruning group L2, {scope}: one shot, then retrain", match["tpseed"]
    steps = int(match["steps"])
    if int(match["step"]) != steps:
        return None
    return 3, f"ours (`--target-macs --importance l1`): gradual, {steps} steps with retraining after each", match["seed"]


def schedule_compare(folder: str = SCHEDULE, steps: int = 8) -> str:
    """One-shot pruning then retraining against gradual steps with retraining between, same images in total,
    and Torch-Pruning one shot at the same MACs; kept maps in multiples of `steps` (ROUND_TO) for every arm."""
    root = RESULTS / folder / "runs"
    dense_path = root / "paper-dense" / "metrics.json"
    if not dense_path.exists():
        return table(["schedule"], [])
    dense = json.loads(dense_path.read_text(encoding="utf-8"))
    arms: dict[tuple[str, int, str], dict[str, dict]] = {}
    for path in sorted(root.glob("paper-m*/metrics.json")):
        match = SCHEDULE_RUN.match(path.parent.name)
        arm = None if match is None else _schedule_arm(match)
        if arm is not None:
            order, name, seed = arm
            arms.setdefault((match["target"], order, name), {})[seed] = json.loads(path.read_text(encoding="utf-8"))
    rows = [["`paper-cifar10`", "dense", "", "1.00×", pct(dense["val_mcr"]), pct(dense["test_mcr"])]]
    for (target, _, name), runs in sorted(arms.items()):
        ratios = [dense["macs"] / m["macs"] for m in runs.values()]
        rows.append([f"`paper-cifar10`, {target}× fewer MACs, maps in steps of {steps}", name, str(len(runs)),
                     f"{min(ratios):.2f}–{max(ratios):.2f}×" if max(ratios) - min(ratios) >= 0.01 else times(ratios[0]),
                     _mean_sd([m["val_mcr"] for m in runs.values()]), _mean_sd([m["test_mcr"] for m in runs.values()])])
    return table(["network", "method and schedule", "seeds", "fewer MACs", "val MCR (5,000 images)",
                  "test MCR (1,000 images)"], rows)


# ------------------------------------------------------------------------------- scripts/forms_compare_cifar10.sh

FORMS_COMPARE = "forms-compare-cifar10"
FORMS_ARMS = (  # (results folder, run name, what it is)
    (FORMS_COMPARE, "paper-ts3-b64-forms", "ours: `--target-speedup 3 --target-forms channel,blocks,intra`"),
    (FORMS_COMPARE, "paper-f-c125-b2-i23", "forms forced: 12.5% of maps, 2 kernel blocks, 2×3 intra (one shot, L1)"),
    (FORMS_COMPARE, "paper-f-c25-b2-i23", "forms forced: 25% of maps, 2 kernel blocks, 2×3 intra (one shot, L1)"),
    ("schedule-compare-cifar10-r16", "paper-m3-oneshot-tpl2", "ours: `--target-macs 3` (channel)"),
    ("schedule-compare-cifar10-r16", "paper-m3-tp-layer", "Torch-Pruning group L2, uniform"),
    ("schedule-compare-cifar10-r16", "paper-m3-tp-layer-other", "Torch-Pruning group L2, uniform, next step"),
    ("schedule-compare-cifar10-r16", "paper-m3-tp-global", "Torch-Pruning group L2, global"),
    ("schedule-compare-cifar10-r16", "paper-m3-tp-global-other", "Torch-Pruning group L2, global, next step"),
)


def forms_compare() -> str:
    """Every fast form against channel-only pruning at 3× and batch 64 in ONNX Runtime: each network's median
    measured speed-up over separate bench runs (its range), MACs, MCR before and after retraining over seeds."""
    benches = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((RESULTS / FORMS_COMPARE).glob("bench-*.json"))]
    if not benches:
        return table(["forms"], [])
    rows = []
    for folder, run, what in FORMS_ARMS:
        records = [r for b in benches for r in b if Path(r["run"]).name == f"{run}-compact"]
        seeds = [m for m in (_tc_metrics(folder, f"{run}-s{k}") for k in range(10)) if m is not None]
        before = _tc_metrics(folder, f"{run}-compact")
        if not records or not seeds or before is None:
            continue
        speeds = [r["speedup_vs_first"] for r in records]
        rows.append([what, times(statistics.median(speeds)), f"{min(speeds):.2f}–{max(speeds):.2f}×",
                     times(records[0]["mac_ratio_vs_first"]), pct(before["val_mcr"]), str(len(seeds)),
                     _mean_sd([m["val_mcr"] for m in seeds]), _mean_sd([m["test_mcr"] for m in seeds])])
    rows.sort(key=lambda row: float(row[1].rstrip("×")))
    return table(["network", f"measured speed-up (median of {len(benches)} bench runs)", "range", "fewer MACs",
                  "val MCR before retraining", "seeds", "val MCR (5,000 images)", "test MCR (1,000 images)"], rows)


# ------------------------------------------------------------------------------- scripts/target_compare_cifar10.sh

TARGET_COMPARE = ("target-compare-cifar10", "target-compare-cifar10-2026-12",  # one folder per machine and dense run
                  "target-compare-cifar10-2026-12-tpl2",  # the same dense run, maps by Torch-Pruning's group L2
                  "target-compare-cifar10-2026-12-r16")  # again, with the defaults of now (steps of 16, 3 calibration runs)
TARGET_NETS = {"resnet20": "`resnet20`", "paper": "`paper-cifar10`"}
RUN_NAME = re.compile(r"^(?P<net>[a-z0-9]+)-ts(?P<s>[0-9.]+)-b(?P<batch>[0-9]+)(?P<eager>-eager)?(?:-f(?P<finalists>[0-9]+))?$")


def _tc_metrics(folder: str, run: str) -> dict | None:
    path = RESULTS / folder / "runs" / run / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _bench_of(records: list[dict], run: str) -> dict | None:
    return next((r for r in records if Path(r["run"]).name == run), None)


def _target_runs(folder: str, prefix: str) -> list[tuple[str, re.Match, Path]]:
    """(run name, its parsed name, the bench file) of every `prefix`RUN.json in `folder`, by network, batch, target."""
    found = []
    for path in (RESULTS / folder).glob(f"{prefix}*.json"):
        match = RUN_NAME.match(path.stem.removeprefix(prefix))
        if match is not None:
            found.append((path.stem.removeprefix(prefix), match, path))
    return sorted(found, key=lambda f: (f[1]["net"] != "resnet20", bool(f[1]["eager"]), int(f[1]["batch"]),
                                        float(f[1]["s"]), f[1]["finalists"] or ""))


def _ours(match: re.Match) -> str:
    finalists = match["finalists"]
    return "ours: `--target-speedup`" + (f" `--finalists {finalists}`" if finalists else "")


def target_speedups() -> str:
    """Each --target-speedup run: its measured speed-up in structprune bench against the target."""
    rows = []
    for folder in TARGET_COMPARE:
        for run, match, bench_file in _target_runs(folder, "bench-"):
            if run.startswith("compare-"):
                continue
            records = json.loads(bench_file.read_text(encoding="utf-8"))
            compact = _bench_of(records, f"{run}-compact")
            pruned = _tc_metrics(folder, f"{run}-pruned")
            if compact is None or pruned is None:
                continue
            s = float(match["s"])
            speed = compact["speedup_vs_first"]
            rows.append([f"`{folder}`", TARGET_NETS.get(match["net"], match["net"]),
                         "eager" if match["eager"] else "onnxruntime", f"{s:g}×", match["batch"],
                         match["finalists"] or "0", ms(records[0]["median_ms"]), ms(compact["median_ms"]), times(speed),
                         "yes" if speed >= 0.95 * s else "**no**", times(compact["mac_ratio_vs_first"]),
                         str(pruned.get("target", {}).get("tries")), pct(pruned.get("val_mcr"))])
    return table(["results", "network", "runtime", "target", "batch", "finalists", "dense ms", "compact ms",
                  "measured speed-up", "≥ 0.95 × target", "fewer MACs", "search tries", "val MCR before retraining"],
                 rows)


def equal_latency() -> str:
    """Ours against Torch-Pruning tuned to the same measured speed-up: speed, MACs, MCR over seeds."""
    rows = []
    tuned = {"bench-compare-": ("s", "equal measured speed-up"), "bench-eqmacs-": ("m", "equal MACs")}
    for folder in TARGET_COMPARE:
        for prefix, (tag, how) in tuned.items():
            for base, match, bench_file in _target_runs(folder, prefix):
                rows += _equal_rows(folder, base, match, bench_file, tag, how)
    return table(["results", "network", "target", "Torch-Pruning tuned to", "method", "measured speed-up",
                  "fewer MACs", "seeds", "val MCR (5,000 images)", "test MCR (1,000 images)"], rows)


def _equal_rows(folder: str, base: str, match: re.Match, bench_file: Path, tag: str, how: str) -> list[list[str]]:
    """One comparison's rows: ours, then (beside our plain search) Torch-Pruning's arms tuned the `tag` way."""
    records = json.loads(bench_file.read_text(encoding="utf-8"))
    net, s, batch = match["net"], match["s"], match["batch"]
    arms = [(base, _ours(match))]
    if not match["finalists"]:
        arms += [(f"{net}-tp-layer-{tag}{s}-b{batch}", "Torch-Pruning group L2, uniform"),
                 (f"{net}-tp-global-{tag}{s}-b{batch}", "Torch-Pruning group L2, global")]
    rows = []
    for run, what in arms:
        record = _bench_of(records, f"{run}-compact")
        seeds = [m for m in (_tc_metrics(folder, f"{run}-ce-s{k}") for k in range(10)) if m is not None]
        if record is None or not seeds:
            continue
        rows.append([f"`{folder}`", TARGET_NETS.get(net, net), f"{s}× at batch {batch}", how, what,
                     times(record["speedup_vs_first"]), times(record["mac_ratio_vs_first"]), str(len(seeds)),
                     _mean_sd([m["val_mcr"] for m in seeds]), _mean_sd([m["test_mcr"] for m in seeds])])
    return rows


# ------------------------------------------------------------------------------- scripts/readme_search_mnist.sh

README_SEARCHES = (("readme-search-mnist", "`paper-mnist`"), ("readme-search-mnist-bn", "`paper-mnist`, batch norm"))


def readme_search() -> str:
    """The README's MNIST search with its defaults: time, MACs removed, MCR, and how many removed maps were dead."""
    rows = []
    for folder, name in README_SEARCHES:
        root = RESULTS / folder
        if not (root / "pf" / "metrics.json").exists():
            continue
        dense = json.loads((root / "dense" / "metrics.json").read_text(encoding="utf-8"))
        pf = json.loads((root / "pf" / "metrics.json").read_text(encoding="utf-8"))
        seconds = int((root / "prune_seconds.txt").read_text(encoding="utf-8"))
        dead = pf["dead_units"]
        per_layer = ", ".join(f"{layer} {v['dead']} of {v['units']}" for layer, v in dead["layers"].items()
                              if layer.startswith("features"))
        rows.append([name, f"{seconds / 60:.1f} min", pct(pf["conv_macs_removed"], 1), pct(dense["test_mcr"]),
                     pct(pf["test_mcr"]), f"{dead['removed_dead_maps']} of {dead['removed_maps']}", per_layer])
    return table(["dense network", "prune time (wall)", "conv MACs removed", "dense test MCR", "test MCR",
                  "removed maps never active", "maps never active in the dense network"], rows)


# ----------------------------------------------------------------------------------- benchmarks/particle_cost.py

PARTICLE_COST = "particle-cost/cifar-random-100-2t.json"


def particle_cost() -> str:
    """One particle scored from the traced graph's cache against a full forward pass, per model and unit, and what
    the search scores that unit with (a file from before the search fell back to the full forward pass: the cache)."""
    data = load(PARTICLE_COST)
    names = {"cached-fx": "cached (traced graph)", "full forward per candidate": "full forward",
             "cached activations": "cached (chain)"}
    rows = []
    for r in data["rows"]:  # type: ignore[index]
        chosen = r.get("chosen_s", r["full_s"] if r["search_scoring"] == "full forward per candidate" else r["cached_s"])
        share = r.get("tail_conv_share")
        rows.append([f"`{r['model']}`", r["granularity"], f"{r['position']} (`{r['unit']}`)",
                     f"{r['tail_nodes']} of {r['graph_nodes']}", "" if share is None else pct(share, 0),
                     ms(r["forward_s"] * 1e3), ms(r["full_s"] * 1e3), ms(r["cached_s"] * 1e3),
                     times(r["full_over_cached"]), names.get(r["search_scoring"], r["search_scoring"]),
                     times(chosen / r["forward_s"]), ms(r["build_s"] * 1e3)])
    return table(["model", "scale", "channel group", "graph nodes rerun", "conv MACs rerun", "plain forward ms",
                  "particle, full forward ms", "particle, cached ms", "full / cached", "the search scores with",
                  "its particle / plain forward", "building the cache ms (once per step)"], rows)


# ------------------------------------------------------------------------------ benchmarks/latency_model_check.py

LATENCY_CHECKS = ("latency-model-check/latency-check-resnet20-ort-b1.json",
                  "latency-model-check/latency-check-resnet20-ort-b1-calibrated-forms.json",
                  "latency-model-check/latency-check-resnet20-ort-b64-calibrated-forms.json",
                  "latency-model-check/latency-check-resnet20-ort-b1-channel.json",
                  "latency-model-check/latency-check-resnet20-ort-b64-channel.json",
                  "latency-model-check/latency-check-resnet20-ort-b1-forms.json",
                  "latency-model-check/latency-check-resnet20-ort-b64-forms.json",
                  "latency-model-check/latency-check-resnet20-ort-b1-channel-random-calibration.json",
                  "latency-model-check/latency-check-resnet20-ort-b64-channel-random-calibration.json",
                  "latency-model-check/latency-check-paper-ort-b64-channel.json",
                  "latency-model-check/latency-check-paper-ort-b1-channel.json",
                  "latency-model-check/latency-check-paper-ort-b64-channel-long-timing.json",
                  "latency-model-check/latency-check-paper-ort-b64-channel-kernel-time.json",
                  "latency-model-check/latency-check-paper-ort-b1-channel-kernel-time.json",
                  "latency-model-check/latency-check-resnet20-ort-b64-channel-kernel-time.json",
                  "latency-model-check/latency-check-resnet20-ort-b1-channel-kernel-time.json",
                  "latency-model-check/latency-check-paper-ort-b1-channel-kernel-time-points33.json",
                  "latency-model-check/latency-check-paper-ort-b64-channel-round16.json",
                  "latency-model-check/latency-check-paper-ort-b1-channel-round16.json",
                  "latency-model-check/latency-check-paper-ort-b64-channel-round16-repeats3.json",
                  "latency-model-check/latency-check-paper-ort-b1-channel-round16-repeats3.json",
                  "latency-model-check/latency-check-paper-ort-b64-channel-round16-repeats3-cal3.json",
                  "latency-model-check/latency-check-paper-ort-b1-channel-round16-repeats3-cal3.json",
                  "latency-model-check/latency-check-paper-ort-b64-channel-round16-repeats3-cal3-rerun.json",
                  "latency-model-check/latency-check-paper-ort-b64-channel-round16-repeats3-cal3-grid2.json",
                  "latency-model-check/latency-check-paper-ort-b1-channel-round16-repeats3-cal3-grid2.json",
                  "latency-model-check/latency-check-paper-ort-b1-channel-round16-repeats3-cal3-rerun.json")


def latency_check() -> str:
    """The latency model's predictions against measured random candidates: one row per check file."""
    rows = []
    for name in LATENCY_CHECKS:
        if not (RESULTS / name).exists():
            continue
        d = load(name)
        space = d.get("search_space")  # type: ignore[union-attr]
        drawn = f"search space: {space}" if space else "uniform channels (uncalibrated model)"
        drawn += f", maps in multiples of {d['round_to']}" if "round_to" in d else ""  # type: ignore[index]
        dense = d["dense"]  # type: ignore[index]
        coeffs = "" if "alpha" not in dense else (f"α {dense['alpha']:.2f}, β {dense['beta_ms']:.3g} ms"
                                                  + "".join(f", γ {k} {1000 * dense[f'gamma_{k}_ms']:.0f} µs"
                                                            for k in ("blocks", "taps") if dense.get(f"gamma_{k}_ms")))
        speeds = sorted(c["measured_speedup"] for c in d["candidates"] if "measured_speedup" in c)  # type: ignore[index]
        points = [p["name"] for p in d["latency_model"].get("calibration", [])]  # type: ignore[index]
        randoms = sum(p.startswith("random-") for p in points)
        networks = f"{len(points)}" + (f" ({randoms} random)" if randoms else "") if points else "dense only"
        timing = (f"{d['min_run_time']:g} s; {d['rounds']} × {d['sample_seconds']:g} s"  # type: ignore[index]
                  if "min_run_time" in d else "")
        if d.get("repeats", 1) > 1:  # type: ignore[union-attr]
            timing += f"; candidates in {d['repeats']} bench runs, medians"  # type: ignore[index]
        if d.get("calibration_repeats", 1) > 1:  # type: ignore[union-attr]
            timing += f"; calibration in {d['calibration_repeats']} bench runs, medians"  # type: ignore[index]
        if d.get("grid_repeats", 1) > 1:  # type: ignore[union-attr]
            timing += f"; layer shapes in {d['grid_repeats']} passes, fastest"  # type: ignore[index]
        layers = {"profiled kernels": "kernel time (profiler)"}.get(d.get("layer_timing"), "session call")  # type: ignore[union-attr]
        if "points" in d:  # recorded since the check took --points
            layers += f", {d['points']} counts per axis"  # type: ignore[index]
        rows.append([f"`{Path(d['source']).name}`", drawn, str(d["batch"]), str(len(d["candidates"])), networks,  # type: ignore[index]
                     ms(dense["predicted_ms"]), ms(dense["measured_ms"]),
                     f"{speeds[0]:.2f}–{speeds[-1]:.2f}×" if speeds else "",
                     pct(d["median_abs_error"], 1), pct(d["max_abs_error"], 1), str(d["within_10_percent"]),  # type: ignore[index]
                     *([pct(d["speedup"]["median_abs_error"], 1), str(d["speedup"]["within_10_percent"])]  # type: ignore[index]
                       if "speedup" in d else ["", ""]), coeffs, layers, timing])
    return table(["network", "candidates", "batch", "count", "calibration networks", "dense predicted ms",
                  "dense measured ms",
                  "measured speed-ups", "ms: median error (abs.)", "ms: max error", "ms: within 10%",
                  "speed-up: median error", "speed-up: within 10%", "calibration", "ONNX Runtime layer timed by",
                  "timing: per layer shape; whole networks (rounds × s)"], rows)


RENDERERS: dict[str, Callable[[], str]] = {
    # README
    "readme-summary": readme_summary,
    "readme-search-mnist": readme_search,
    # docs/results.md
    "cifar10-trained": lambda: accuracy(["cli-trained-c40k25i6-onnxruntime-s4.json",
                                          "cli-trained8-c40k25i6-onnxruntime-s4.json",
                                          "cli-trained-c25b2i6-onnxruntime-s4.json",
                                          "cli-trained-linear-onnxruntime-s5.json",
                                          "cli-trained-c20-onnxruntime-s6.json"]),
    "mnist-fast-forms": lambda: cli_bench(["mnist-fast-forms-s3.json"]),
    "mnist-latency-search": lambda: cli_bench(["latency-tradeoff-mnist.json"]),
    "reproduce-runs": reproduce_runs,
    "reproduce-ladder": reproduce_ladder,
    "reproduce-latency": reproduce_latency,
    "reproduce-storage": reproduce_storage,
    "throughput": throughput,
    "recovery-cifar10": recovery,
    "search-resnet20-cifar10": search_resnet20,
    "search-mobilenetv2-cifar10": search_mobilenetv2,
    "schedule-compare-cifar10": schedule_compare,
    "schedule-compare-cifar10-r16": lambda: schedule_compare("schedule-compare-cifar10-r16", steps=16),
    "forms-compare-cifar10": forms_compare,
    "int8-cifar10": int8_deployment,
    "plain-flags-cifar10": plain_flags,
    "cuda-check": cuda_check,
    # docs/benchmarks.md
    "network-targets": network_targets,
    "particle-cost": particle_cost,
    "latency-model-check": latency_check,
    "target-speedups": target_speedups,
    "equal-latency": equal_latency,
    "layers-2threads": lambda: layers(["layers-2threads-wall-quiet.json"], csr=False),
    "layers-1thread-csr": lambda: layers(["layers-1thread-cpu-csr-intra3.json", "layers-1thread-cpu-csr-intra5.json",
                                          "layers-1thread-cpu-csr-kernel.json",
                                          "layers-1thread-cpu-csr-unstructured.json"]),
    "layers-batch1": lambda: layers(["layers-batch1-1thread-cpu.json"], csr=False),
    "onnx-repeat-c25": lambda: repeat_summary("repeat-s6/summary.json"),
    "onnx-repeat-c20": lambda: repeat_summary("repeat-c20-s6/summary.json"),
    "onnx-sweep": lambda: network("network-sweep-onnxruntime-s4.json", csr=False),
    "onnx-blocks": lambda: network("network-blocks-onnxruntime-s4.json"),
    "onnx-linear": lambda: network("network-linear-onnxruntime-s5.json"),
    "onnx-stop-spinning": lambda: network("network-onnxruntime-stop-spinning-s4.json", csr=False),
    "onnx-spin-gap": spin_gap,
    "onnx-round-per-block": round_per_block,
    "onnx-profile-layers": lambda: profile_layers("profile-onnxruntime-per-layer-b64-s5.json",
                                                  "channel-25+kernel-50b2+intra-6of9+linear-50"),
    "onnx-trained": lambda: cli_bench(["cli-trained-c20-onnxruntime-s6.json",
                                       "cli-trained-linear-onnxruntime-s5.json"], mcr=False),
    "onnx-trained-repeats": lambda: cli_repeats(["cli-trained-c20-onnxruntime-s6.json",
                                                 "cli-trained-c20-onnxruntime-run2-s6.json",
                                                 "cli-trained-linear-onnxruntime-s5.json",
                                                 "cli-trained-linear-onnxruntime-run2-s5.json"]),
    "onnx-bench-onnx": onnx_models,
    "eager-sweep": lambda: network("network-sweep-eager-s4.json"),
    "eager-blocks": lambda: network("network-blocks-eager-s4.json"),
    "eager-trained": lambda: cli_bench(["cli-trained-c25b2i6-eager-s4.json", "cli-trained-c40k25i6-eager-s4.json"],
                                       mcr=False),
    "eager-profile": lambda: profile_ops("profile-eager-b64-s4.json"),
    "eager-layer-efficiency": lambda: layer_efficiency("layer-efficiency-steady-malloc-s3.json"),
    "compile": lambda: network("network-compile-s6.json", csr=False),
    "result-files": result_files,
    "channel-step": channel_step,
}


# ------------------------------------------------------------------------------------------------- the driver

def render_text(text: str, where: str = "") -> tuple[str, list[str]]:
    """The text with every block regenerated, and the names of the blocks that changed."""
    changed: list[str] = []

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise SystemExit(f"render_docs: {where}: no renderer for table {name!r}")
        body = RENDERERS[name]()
        if body != match["body"]:
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(fill, text), changed


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check(paths: list[Path] | None = None) -> list[str]:
    """`path: table` for every stale block (empty when all are current)."""
    stale = []
    for path in paths or DOCS:
        if path.exists():
            _, changed = render_text(path.read_text(encoding="utf-8"), _shown(path))
            stale += [f"{_shown(path)}: {name}" for name in changed]
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each stale table")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        for item in stale:
            print(f"stale table: {item}", file=sys.stderr)
        return 1 if stale else 0
    for path in DOCS:
        if path.exists():
            new, changed = render_text(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
            if changed:
                path.write_text(new, encoding="utf-8")
                print(f"{path.relative_to(ROOT)}: {', '.join(changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

