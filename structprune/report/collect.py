"""Read run folders (and bench JSON files) into typed records for the report.

Nothing here loads weights: a report is built from the JSON files each stage writes
(metrics.json, config.json, masks.json, search.json, sensitivity.json, storage, bench records).
Missing optional files simply leave their field empty.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structprune.errors import StructpruneError
from structprune.jsonio import read_json
from structprune.runfiles import (
    ARCH_FILE,
    BENCH_FILE,
    CONFIG_FILE,
    MASKS_FILE,
    METRICS_FILE,
    SEARCH_FILE,
    SENSITIVITY_FILE,
    STORAGE_FILE,
)
from structprune.sparsity.method import Method

log = logging.getLogger(__name__)

# metrics.json fields shown in the summary table, in order
TABLE_FIELDS = ("val_mcr", "test_mcr", "params", "macs", "weight_bytes")


@dataclass
class LayerStorage:
    """Stored bits of one layer: the kept weights at their word length plus the sparsity index."""

    name: str
    weight_bits: int
    index_bits: int
    word_length: int | None = None


@dataclass
class SearchHistory:
    """Per generation best and mean MCR of a mask search, and the kept fraction per layer at the end."""

    generations: list[int]
    best_mcr: list[float]
    mean_mcr: list[float]
    kept_fraction: dict[str, float] = field(default_factory=dict)
    label: str = ""  # e.g. the layer or step a sub-search belonged to


@dataclass
class Sensitivity:
    """MCR as each layer alone is pruned harder (structprune.sensitivity), or quantized to fewer bits
    (the word-length sweep of `structprune quantize --per-layer auto`): `axis` says which."""

    axis: str  # "ratio" | "bits"
    granularity: str
    method: str
    split: str
    baseline_mcr: float
    ratios: list[float]  # x values: pruning ratios, or word lengths
    layers: dict[str, list[float]]


@dataclass
class BenchRecord:
    """One latency measurement (structprune bench JSON record)."""

    run: str
    batch: int
    threads: int
    median_ms: float
    macs: int | None = None
    params: int | None = None
    test_mcr: float | None = None
    spread_ms: float | None = None
    label: str = ""  # reference rows: "masked-dense", "unstructured", ... ; "" for the run itself


@dataclass
class RunRecord:
    """Everything the report shows about one run folder."""

    path: Path
    name: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    kept_fraction: dict[str, float] = field(default_factory=dict)  # per conv layer, weights kept
    searches: list[SearchHistory] = field(default_factory=list)
    sensitivity: Sensitivity | None = None
    storage: list[LayerStorage] = field(default_factory=list)
    bench: list[BenchRecord] = field(default_factory=list)

    arch_model: str = ""  # the registry name in arch.json
    masks_digest: str = ""  # identifies masks.json: runs with equal digests carry the same masks

    @property
    def model(self) -> str:
        return str(self.config.get("model") or self.arch_model or "?")

    @property
    def stage(self) -> str:
        """What made the run. Stages merge their source's config into theirs, so the newest marker wins."""
        c = self.config
        if c.get("stage"):
            return str(c["stage"])
        if c.get("compacted"):
            return "compact"
        if c.get("verb") == "quantize":
            return "quantize"
        for key in ("retrain", "search", "prune"):
            if key in c:
                return key
        return str(c.get("verb") or "")

    def _pruning_config(self) -> dict[str, Any]:
        for key in ("prune", "search"):
            if isinstance(self.config.get(key), dict):
                return self.config[key]
        return {}

    @property
    def granularity(self) -> str:
        g = self.config.get("granularity") or self._pruning_config().get("granularity") \
            or self._pruning_config().get("granularities")
        if isinstance(g, list | tuple):
            return ",".join(str(x) for x in g)
        return str(g) if g else ""

    @property
    def method(self) -> str:
        """As spelt on the command line (a search config written before random-best had one spelling says random)."""
        text = self.config.get("method") or self._pruning_config().get("method")
        if not text:
            return ""
        try:
            return Method.from_stored(text, search=not isinstance(self.config.get("prune"), dict)).value
        except StructpruneError:
            return str(text)  # another tool's method: shown as written

    @property
    def is_pruned(self) -> bool:
        return bool(self.kept_fraction) or bool(self.granularity)

    @property
    def is_reference(self) -> bool:
        """A dense run made from no other run (a trained network): what pruned runs are compared with."""
        return not self.is_pruned and _source_of(self) is None

    def number(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _is_run(path: Path) -> bool:
    return (path / METRICS_FILE).is_file()


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders named directly, or found below the given folders (depth-first, sorted), without repeats."""
    found: list[Path] = []
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            raise StructpruneError(f"{root}: no such folder")
        if _is_run(root):
            candidates = [root]
        else:
            found_here = [p for p in root.rglob(METRICS_FILE)
                          if not any(part.startswith(".") for part in p.relative_to(root).parts)]
            # in the order they were made (a pipeline's stages in order), then by name
            candidates = [p.parent for p in sorted(found_here, key=lambda p: (p.stat().st_mtime_ns, str(p)))]
        for run in candidates:
            if run.resolve() not in {f.resolve() for f in found}:
                found.append(run)
        if not candidates:
            raise StructpruneError(f"{root}: no run folders (no {METRICS_FILE}) found here")
    return found


def kept_fraction_from_masks(masks: dict[str, Any]) -> dict[str, float]:
    """Fraction of each masked conv layer's weights that its own masks keep (all three scales combined;
    input maps removed by the previous layer's channel mask are not subtracted)."""
    from structprune.sparsity.masks import NetworkMask

    network = NetworkMask.from_json(masks)
    out: dict[str, float] = {}
    for name, layer in network:
        mask = layer.weight_mask()  # [O, I, kh, kw] of 0/1
        out[name] = float(mask.mean())
    return out


def _search(data: Any, source: Path) -> list[SearchHistory]:
    """search.json: "history" holds one record per generation ("best"/"mean" scores, or "best_mcr"/"mean_mcr"),
    tagged with the step, layer, granularity and ratio it belonged to; each tag becomes one SearchHistory."""
    if not isinstance(data, dict) or not isinstance(data.get("history", []), list):
        raise StructpruneError(f"{source}: not a search history")
    out: list[SearchHistory] = []
    key = None
    for row in data.get("history", []):
        try:
            tag = (row.get("step"), row.get("layer"), row.get("granularity"), row.get("ratio"))
            best = float(row["best_mcr"] if "best_mcr" in row else row["best"])
            mean = float(row["mean_mcr"] if "mean_mcr" in row else row["mean"])
            generation = int(row.get("generation", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StructpruneError(f"{source}: history row without best/mean ({exc})") from None
        if not out or tag != key:
            label = " ".join(str(t) for t in tag[1:3] if t) + (f" {float(tag[3]):.3f}" if tag[3] is not None else "")
            out.append(SearchHistory([], [], [], {}, label.strip()))
            key = tag
        out[-1].generations.append(generation)
        out[-1].best_mcr.append(best)
        out[-1].mean_mcr.append(mean)
        out[-1].kept_fraction = {str(k): float(v) for k, v in dict(row.get("kept_fraction") or {}).items()}
    return out


def read_sensitivity(data: Any, source: Path) -> Sensitivity:
    try:
        if isinstance(data, dict) and "base_mcr" in data:  # word-length sweep: {"layers": {name: {bits: mcr}}}
            bits = sorted({int(b) for row in data["layers"].values() for b in row})
            return Sensitivity(
                axis="bits", granularity="", method="fixed-point", split="val", baseline_mcr=float(data["base_mcr"]),
                ratios=[float(b) for b in bits],
                layers={str(k): [float(row[str(b)]) for b in bits] for k, row in data["layers"].items()},
            )
        return Sensitivity(
            axis="ratio",
            granularity=str(data["granularity"]),
            method=str(data["method"]),
            split=str(data.get("split", "val")),
            baseline_mcr=float(data["baseline_mcr"]),
            ratios=[float(r) for r in data["ratios"]],
            layers={str(k): [float(v) for v in vals] for k, vals in data["layers"].items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StructpruneError(f"{source}: malformed sensitivity file ({exc})") from None


def _storage(data: Any, source: Path) -> list[LayerStorage]:
    """storage.json of `structprune quantize`: {"layers": [{"layer", "weight_bits", "index_bits", "word_bits",
    "float_bits"}, ...], "other_float_bits": n}. Float tensors (biases, batch norm) count as weights."""
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        return []
    out = []
    for row in layers:
        try:
            out.append(LayerStorage(str(row["layer"]), int(row["weight_bits"]) + int(row.get("float_bits", 0)),
                                    int(row["index_bits"]), int(row["word_bits"]) if row.get("word_bits") else None))
        except (KeyError, TypeError, ValueError) as exc:
            raise StructpruneError(f"{source}: malformed storage row ({exc})") from None
    if data.get("other_float_bits"):
        out.append(LayerStorage("other (float32)", int(data["other_float_bits"]), 0, 32))
    return out


def read_bench(data: Any, source: Path) -> list[BenchRecord]:
    """A bench JSON file: a list of records, or {"records": [...]}."""
    rows = data.get("records", data.get("results")) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise StructpruneError(f"{source}: not a bench file (a list of records expected)")
    out = []
    for row in rows:
        try:
            spread = row.get("spread_ms")
            if spread is None and row.get("min_ms") is not None and row.get("max_ms") is not None:
                spread = float(row["max_ms"]) - float(row["min_ms"])  # range over the timing rounds
            out.append(BenchRecord(
                run=str(row["run"]), batch=int(row["batch"]), threads=int(row["threads"]),
                median_ms=float(row["median_ms"]),
                macs=int(row["macs"]) if row.get("macs") is not None else None,
                params=int(row["params"]) if row.get("params") is not None else None,
                test_mcr=float(row["test_mcr"]) if row.get("test_mcr") is not None else None,
                spread_ms=float(spread) if spread is not None else None,
                label=str(row.get("reference", row.get("label", row.get("variant", ""))) or ""),
            ))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StructpruneError(f"{source}: malformed bench record ({exc})") from None
    return out


def read_run(path: str | Path) -> RunRecord:
    """One run folder as a record; optional files that are absent leave their fields empty."""
    path = Path(path)
    if not _is_run(path):
        raise StructpruneError(f"{path}: not a run folder ({METRICS_FILE} missing)")
    metrics = read_json(path / METRICS_FILE)
    if not isinstance(metrics, dict):
        raise StructpruneError(f"{path / METRICS_FILE}: expected a JSON object")
    config = read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else {}
    record = RunRecord(path=path, name=path.name, metrics=metrics, config=config if isinstance(config, dict) else {})
    if (path / ARCH_FILE).is_file():
        arch = read_json(path / ARCH_FILE)
        record.arch_model = str(arch.get("model", "")) if isinstance(arch, dict) else ""
    if (path / MASKS_FILE).is_file():
        record.masks_digest = hashlib.sha256((path / MASKS_FILE).read_bytes()).hexdigest()[:16]
    if isinstance(metrics.get("kept_fraction"), dict):  # the search counts input maps removed upstream too
        record.kept_fraction = {str(k): float(v) for k, v in metrics["kept_fraction"].items()}
    elif (path / MASKS_FILE).is_file():
        record.kept_fraction = kept_fraction_from_masks(read_json(path / MASKS_FILE))
    if (path / SEARCH_FILE).is_file():
        record.searches = _search(read_json(path / SEARCH_FILE), path / SEARCH_FILE)
    if (path / SENSITIVITY_FILE).is_file():
        record.sensitivity = read_sensitivity(read_json(path / SENSITIVITY_FILE), path / SENSITIVITY_FILE)
    storage = metrics.get("storage")
    if (path / STORAGE_FILE).is_file():
        storage = read_json(path / STORAGE_FILE)
    if storage is not None:
        record.storage = _storage(storage, path / STORAGE_FILE)
    if (path / BENCH_FILE).is_file():
        record.bench = read_bench(read_json(path / BENCH_FILE), path / BENCH_FILE)
    return record


def collect(paths: list[str | Path], bench_files: list[str | Path] = ()) -> list[RunRecord]:
    """Records of every run under `paths`; bench records from `bench_files` (and from a bench.json directly
    inside a given folder of runs) attached to their runs."""
    records = [read_run(p) for p in find_runs(paths)]
    bench_files = list(bench_files)
    for given in paths:  # a folder of runs may hold their bench.json beside them (structprune reproduce does)
        if not _is_run(Path(given)) and (Path(given) / BENCH_FILE).is_file() and Path(given) / BENCH_FILE not in bench_files:
            bench_files.append(Path(given) / BENCH_FILE)
    for source in bench_files:
        source = Path(source)
        for row in read_bench(read_json(source), source):
            target = _match_run(records, row.run)
            if target is None:
                log.warning("%s: bench record for %s matches no run in the report", source, row.run)
                continue
            target.bench.append(row)
    return records


def _match_run(records: list[RunRecord], run: str) -> RunRecord | None:
    wanted = Path(run.split("#")[0])  # "DIR#variant": a reference row built from DIR's network
    for record in records:
        if record.path.resolve() == wanted.resolve() or record.name == wanted.name:
            return record
    return None


def _source_of(record: RunRecord) -> str | None:
    """The run folder this run was made from (prune/compact write source_run, quantize writes source)."""
    return record.config.get("source_run") or record.config.get("source")


def reference_run(records: list[RunRecord], record: RunRecord) -> RunRecord | None:
    """The trained run a run came from (following source_run/source back), if in the report; else the
    reference run of the same model with the most MACs."""
    source = _source_of(record)
    seen: set[str] = set()
    while source and str(source) not in seen:
        seen.add(str(source))
        parent = _match_run(records, str(source))
        if parent is None:
            break
        if parent.is_reference:
            return parent
        source = _source_of(parent)
    dense = [r for r in records if r.is_reference and r.model == record.model and r.number("macs")]
    return max(dense, key=lambda r: r.number("macs") or 0) if dense else None


def effective_macs(record: RunRecord, reference: RunRecord | None = None,
                   records: list[RunRecord] | None = None) -> float | None:
    """MACs the network really needs. A masked run's dense tensors count every MAC, so: its compact network's
    MACs (compact_macs), its own or those of any run in `records` with the same masks.json; else, from a search
    run, the reference's MACs less the conv MACs its masks remove (an estimate that misses the first linear
    layer's inputs); else its metrics' MACs."""
    if record.number("compact_macs") is not None:
        return record.number("compact_macs")
    for other in records or []:
        if record.masks_digest and other.masks_digest == record.masks_digest and other.number("compact_macs") is not None:
            return other.number("compact_macs")
    if record.number("conv_macs") is not None and record.number("conv_macs_dense") is not None \
            and reference is not None and reference.number("macs") is not None:
        return reference.number("macs") - (record.number("conv_macs_dense") - record.number("conv_macs"))
    return record.number("macs")


def pruning_ratio(records: list[RunRecord], record: RunRecord) -> float | None:
    """Fraction of MACs removed relative to the dense reference run (None without one)."""
    ref = reference_run(records, record)
    macs, ref_macs = effective_macs(record, ref, records), ref.number("macs") if ref else None
    if ref is None or macs is None or not ref_macs:
        return None
    return 1.0 - macs / ref_macs
