"""Per-layer pruning sensitivity: the MCR as each layer alone is pruned harder, the rest left intact.

For every conv layer and every ratio r, a mask that prunes a fraction r of that layer's groups at one
scale (feature maps, kernels or intra-kernel taps) is chosen by L1 magnitude or at random
(`structprune.sparsity.selection`, layer scope), applied in place to that layer alone (`MaskApplier`, no model
copy), and the validation MCR measured. The result, sensitivity.json in the run folder:

    {"format": "structprune-sensitivity/1", "granularity": "channel", "method": "l1", "split": "val",
     "images": 2000, "baseline_mcr": 0.011, "ratios": [0.1, ..., 0.9],
     "layers": {"features.0": [mcr at 0.1, ...], ...}, "complete": true}

Layers whose MCR stays flat tolerate pruning; steep ones are where a search should prune least. The file
is rewritten after each layer, so an interrupted sweep resumes at the next layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from structprune.data import Dataset, Split
from structprune.errors import StructpruneError
from structprune.jsonio import read_json, write_json_atomic
from structprune.runcheck import check_data_fits, load_checked_run
from structprune.runfiles import CONFIG_FILE, SENSITIVITY_FILE
from structprune.runfolder import recorded_dataset, source_chain
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import NetworkMask
from structprune.sparsity.method import ONE_SHOT_METHODS, Method, require_method
from structprune.sparsity.selection import SelectionConfig, select
from structprune.train import evaluate

log = logging.getLogger(__name__)

SENSITIVITY_FORMAT = "structprune-sensitivity/1"
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SensitivityConfig:
    granularity: Granularity = Granularity.CHANNEL
    method: Method = Method.L1  # L1 or RANDOM
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    split: str = "val"  # val | test
    images: int | None = 2000  # evaluate on the first N images of the split (None: all)
    seed: int = 0

    def __post_init__(self) -> None:
        require_method(self.method, ONE_SHOT_METHODS, "selection method")
        if not self.ratios or any(not 0.0 < r < 1.0 for r in self.ratios):
            raise StructpruneError("sensitivity ratios must lie strictly between 0 and 1")
        if self.split not in ("val", "test"):
            raise StructpruneError(f"unknown split {self.split!r}; choose val or test")


def sweep_layers(model: nn.Module, applier: MaskApplier, granularity: Granularity) -> list[str]:
    """Conv layers that can be pruned alone at this scale, in module order."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if granularity is Granularity.CHANNEL:
            if applier.groups.root_of(name) != name:
                continue
        elif granularity is Granularity.INTRA and module.kernel_size[0] * module.kernel_size[1] < 2:
            continue
        names.append(name)
    return names


def _split(data: Dataset, cfg: SensitivityConfig) -> Split:
    split = data.val if cfg.split == "val" else data.test
    if len(split) == 0:
        raise StructpruneError(f"the {cfg.split} split is empty")
    return split.subset(cfg.images) if cfg.images else split


def _header(cfg: SensitivityConfig, images: int, baseline: float) -> dict[str, Any]:
    return {"format": SENSITIVITY_FORMAT, "granularity": cfg.granularity.value, "method": cfg.method,
            "split": cfg.split, "images": images, "seed": cfg.seed, "baseline_mcr": baseline,
            "ratios": list(cfg.ratios)}


def _resumable(previous: Any, header: dict[str, Any]) -> dict[str, list[float]]:
    """Layers already measured by an earlier run of the same sweep."""
    if not isinstance(previous, dict):
        return {}
    same = all(previous.get(k) == v for k, v in header.items() if k != "baseline_mcr")
    return dict(previous.get("layers", {})) if same else {}


def sweep(
    model: nn.Module,
    data: Dataset,
    cfg: SensitivityConfig,
    out_file: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the sweep; with `out_file`, save after every layer and resume from what it already holds."""
    model.eval()
    split = _split(data, cfg)
    applier = MaskApplier(model, sample=split.x[:1])
    baseline = evaluate(model, split).mcr
    result = _header(cfg, len(split), baseline)
    done: dict[str, list[float]] = {}
    if out_file is not None and Path(out_file).is_file():
        previous = read_json(out_file)
        if not isinstance(previous, dict) or previous.get("format") != SENSITIVITY_FORMAT:
            raise StructpruneError(f"{out_file} holds another kind of sweep (e.g. the word-length sweep of "
                                   "`structprune quantize --per-layer auto`); not overwriting it")
        done = _resumable(previous, result)
    layers = sweep_layers(model, applier, cfg.granularity)
    if not layers:
        raise StructpruneError(f"the model has no conv layer that can be pruned at {cfg.granularity.value} scale")
    # one layer-scope selection per ratio gives every layer's mask at that ratio (B2's selection)
    per_ratio = [select(model, [cfg.granularity], [ratio], SelectionConfig(method=cfg.method, seed=cfg.seed + j),
                        groups=applier.groups) for j, ratio in enumerate(cfg.ratios)]
    layers = [name for name in layers if name in per_ratio[0].layers]  # e.g. depthwise convs have no kernel masks
    result["layers"] = {}
    for name in layers:
        if name in done and len(done[name]) == len(cfg.ratios):
            result["layers"][name] = done[name]
            continue
        mcrs = []
        for full in per_ratio:
            with applier.applied(NetworkMask({name: full.layers[name]})):
                mcrs.append(evaluate(model, split).mcr)
        result["layers"][name] = mcrs
        log.info("%s: MCR %s", name, " ".join(f"{100 * m:.2f}" for m in mcrs))
        if progress is not None:
            progress(name)
        if out_file is not None:
            write_json_atomic(out_file, {**result, "complete": False})
    result["complete"] = True
    if out_file is not None:
        write_json_atomic(out_file, result)
    return result


def dataset_of_run(path: Path, config: dict[str, Any] | None = None, data_dir: str | Path | None = None) -> Dataset:
    """The dataset (and validation split) a run was trained on, following its sources back to the trained run
    (`config`: the run's config.json, when already read)."""
    config = next((found for _, found in source_chain(path, config, strict=False) if "dataset" in found), {})
    data = recorded_dataset(config, data_dir)
    if data is None:
        raise StructpruneError(f"{path}: {CONFIG_FILE} does not say which dataset the run used")
    return data


def sweep_complete(run_dir: str | Path) -> bool:
    """Whether the run folder holds a finished sweep (an interrupted one resumes)."""
    path = Path(run_dir) / SENSITIVITY_FILE
    return path.is_file() and bool(read_json(path).get("complete"))


def run_sensitivity(run_dir: str | Path, cfg: SensitivityConfig, data_dir: str | Path | None = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Sweep a run folder's network and write (or resume) its sensitivity.json."""
    run = load_checked_run(run_dir)
    data = dataset_of_run(run.path, run.config, data_dir)
    check_data_fits(run.model, data, str(run.path))
    return sweep(run.model, data, cfg, out_file=run.path / SENSITIVITY_FILE, progress=progress)
