"""The prune and compact stages: choose masks, write the masked run; compact a masked run into a smaller network.

  prune_run(src, out, ...)      src run + masks -> out run: same arch, pruned weights zero, masks.json
  select_run(src, out, ...)     prune_run with one-shot selection (L1, random), recorded as config.json's "prune"
  compact_run(src, out)         masked run -> compact run: smaller layers, its own params/MACs/MCR
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from structprune.compact.compaction import compact
from structprune.compact.speedup import predict_speedup
from structprune.data import Dataset
from structprune.errors import StructpruneError
from structprune.metrics import evaluation_metrics, size_metrics
from structprune.output import Output
from structprune.runcheck import check_data_fits, load_checked_run
from structprune.runfolder import Run, as_output, recorded_dataset, save_run
from structprune.search.scoring import reestimate_norms
from structprune.sparsity.channel_groups import ChannelGroups
from structprune.sparsity.dead_units import dead_unit_summary, log_dead_units, never_active_on
from structprune.sparsity.granularity import Granularity
from structprune.sparsity.masking import MaskApplier
from structprune.sparsity.masks import MASKS_FILE, NetworkMask
from structprune.sparsity.selection import SelectionConfig, channel_groups_of, select

if TYPE_CHECKING:
    from structprune.stages.measure import BenchConfig

log = logging.getLogger(__name__)

DEFAULT_BN_BATCHES = 16  # batch-norm re-estimation after one-shot pruning: batches of BN_BATCH training images
BN_BATCH = 64

# A mask chooser for `prune_run`: (model, groups, dataset or None, base mask or None) -> NetworkMask.
# `base` is the mask the run already carries (prune a pruned run further): the result must nest inside it.
# The particle-filter search plugs in here (cli/prune.py builds one chooser per --method).
MaskChooser = Callable[[nn.Module, ChannelGroups, Dataset | None, NetworkMask | None], NetworkMask]


def run_dataset(run: Run, data_dir: str | Path | None = None) -> Dataset | None:
    """The dataset recorded in the run's config.json (None when it records none)."""
    data = recorded_dataset(run.config, data_dir)
    if data is not None:
        check_data_fits(run.model, data, str(run.path))
    return data


def load_masks(run: Run) -> NetworkMask | None:
    data = run.read_extra(MASKS_FILE)
    return None if data is None else NetworkMask.from_json(data)


def mask_summary(model: nn.Module, mask: NetworkMask, groups: ChannelGroups | None) -> dict[str, Any]:
    """Weights kept and the size of the compact network the mask describes."""
    factors = MaskApplier(model, groups).factors(mask)
    params = dict(model.named_parameters())
    zeroed = sum(int((f == 0).sum()) for f in factors.values())
    total = sum(p.numel() for p in params.values())
    summary: dict[str, Any] = {"nonzero_params": total - zeroed}
    compact_model = compact(model, mask, groups=groups)
    compact_sizes = size_metrics(compact_model)
    summary.update({f"compact_{k}": v for k, v in compact_sizes.items()})
    return summary


def prune_run(
    src: str | Path,
    out: Output | str | Path,
    choose: MaskChooser,
    config: dict[str, Any],
    data_dir: str | Path | None = None,
    bn_batches: int = DEFAULT_BN_BATCHES,
) -> tuple[Path, dict[str, Any]]:
    """Masks from `choose`, applied to the run in `src`, saved as a pruned run folder `out` (a path is claimed as a
    new folder; see structprune.output). A network with batch norm has its statistics re-estimated under the
    masks on `bn_batches` training batches of 64 (0: kept as trained): the trained statistics describe maps the
    masks removed, and one-shot pruning without re-estimation reads far worse than the network is."""
    output = as_output(out, "prune", inputs=(src,))
    run = load_checked_run(src)
    groups = channel_groups_of(run.model)
    data = run_dataset(run, data_dir)
    base = load_masks(run)
    if base is not None:
        log.info("%s already carries masks; the new masks nest inside them", src)
    dead = None if data is None else never_active_on(run.model, data.val.x)
    mask = choose(run.model, groups, data, base)
    mask.validate(run.model)
    MaskApplier(run.model, groups).apply_(mask)
    reestimated = reestimate_batch_norms(run.model, data, bn_batches)
    metrics = {**size_metrics(run.model), **mask_summary(run.model, mask, groups), **evaluation_metrics(run.model, data)}
    metrics["source_metrics"] = {k: run.metrics[k] for k in ("val_mcr", "test_mcr", "params", "macs") if k in run.metrics}
    if reestimated:
        metrics["bn_reestimated_images"] = reestimated
    if data is not None:
        metrics["dead_units"] = dead_unit_summary(run.model, dead, mask)
        log_dead_units(metrics["dead_units"])
    run_config = {**run.config, **config, "source_run": str(Path(src))}
    return save_run(output, run.model, run.arch, metrics, run_config, extra_json={MASKS_FILE: mask.to_json()}), metrics




def reestimate_batch_norms(model: nn.Module, data: Dataset | None, batches: int) -> int:
    """Re-estimate every batch norm's running statistics on the first `batches` × 64 training images (a fixed
    choice, so the result is deterministic); the number of images used (0: nothing done)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if data is None or batches < 1 or not norms:
        return 0
    images = data.train.x[: batches * BN_BATCH]
    was_training = model.training
    model.eval()
    reestimate_norms(norms, (lambda start=start: model(images[start : start + BN_BATCH])
                             for start in range(0, len(images), BN_BATCH)))
    model.train(was_training)
    log.info("batch-norm statistics re-estimated under the masks on %d training images", len(images))
    return len(images)


def selection_record(granularities: list[Granularity], ratios: list[float], cfg: SelectionConfig) -> dict[str, Any]:
    """config.json's "prune" section for a one-shot selection (the spellings of the command line)."""
    record = {"granularity": [g.value for g in granularities], "method": cfg.method.value, "ratio": list(ratios),
              "scope": cfg.scope, "seed": cfg.seed, "round_to": cfg.round_to, "kernel": str(cfg.kernel),
              "intra_shared": cfg.intra_shared, "linear_ratio": cfg.linear_ratio,
              "intra_patterns": None if cfg.intra_patterns is None else [[p.start, p.stride] for p in cfg.intra_patterns]}
    if cfg.intra_fast:
        record["intra_fast"] = True
    return record


def shared_patterns(mask: NetworkMask) -> dict[str, str | None]:
    """Per layer with intra patterns, its one shared pattern as START:STRIDE (None where input maps differ)."""
    out: dict[str, str | None] = {}
    for name, lm in mask:
        kinds = {p for p in lm.intra or () if p is not None}
        if kinds:
            out[name] = f"{next(iter(kinds)).start}:{next(iter(kinds)).stride}" if len(kinds) == 1 else None
    return out


def select_run(src: str | Path, out: Output | str | Path, granularities: list[Granularity], ratios: list[float],
               cfg: SelectionConfig, extra_config: dict[str, Any] | None = None,
               data_dir: str | Path | None = None,
               bn_batches: int = DEFAULT_BN_BATCHES) -> tuple[Path, dict[str, Any]]:
    """`prune_run` with masks chosen one-shot by `cfg` (L1 or random) at `ratios` (one, or one per granularity)."""

    record = {**selection_record(granularities, ratios, cfg), "bn_batches": bn_batches}

    def choose(model: nn.Module, groups: ChannelGroups, data: Dataset | None, base: NetworkMask | None) -> NetworkMask:
        mask = select(model, granularities, ratios, cfg, groups=groups, base=base)
        if cfg.intra_shared and Granularity.INTRA in granularities:
            record["intra_chosen"] = shared_patterns(mask)  # the resolved choice, read by prune_run after `choose`
        return mask

    config = {**(extra_config or {}), "prune": record}
    return prune_run(src, out, choose, config, data_dir=data_dir, bn_batches=bn_batches)


def compact_run(src: str | Path, out: Output | str | Path, data_dir: str | Path | None = None,
                config: dict[str, Any] | None = None, measure: BenchConfig | None = None) -> tuple[Path, dict[str, Any]]:
    """The masked run in `src` compacted into a smaller network, saved (arch.json with compact layers) in `out`.

    metrics.json records the predicted speed-up over the masked (dense) network and each layer's prediction
    (structprune.compact.speedup; a warning per layer predicted slower than its dense original). With `measure`,
    both networks are also timed as it says (structprune.bench) and `measured_speedup` records each batch."""
    output = as_output(out, "compact", inputs=(src,))
    run = load_checked_run(src)
    mask = load_masks(run)
    if mask is None:
        raise StructpruneError(f"{src}: no {MASKS_FILE}; prune the run first (structprune prune)")
    model = compact(run.model, mask)
    data = run_dataset(run, data_dir)
    metrics = {**size_metrics(model), **evaluation_metrics(model, data)}
    if data is not None and "test_mcr" in run.metrics:
        metrics["masked_test_mcr"] = run.metrics["test_mcr"]
    metrics["source_metrics"] = {k: run.metrics[k] for k in ("params", "macs", "weight_bytes") if k in run.metrics}
    prediction = predict_speedup(run.model, model)
    log.debug("predicted speed-up over the dense network: %.2fx (MACs / form efficiency, no timing)",
              prediction.speedup)
    for layer in prediction.slower:
        log.warning("%s", layer.warning())
    metrics.update(prediction.to_json())
    if measure is not None:
        from structprune.stages.measure import measure_speedup

        metrics["measured_speedup"] = measure_speedup(run.model, model, measure)
    run_config = {**run.config, **(config or {}), "source_run": str(Path(src)), "compacted": True}
    return save_run(output, model, None, metrics, run_config), metrics


@torch.no_grad()
def max_relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale if scale > 0 else float((a - b).abs().max())
