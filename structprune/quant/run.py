"""The quantize step on a run folder: fixed-point weights, optional quantization-aware retraining, storage
accounting and a packed artifact, written as a new run folder (`structprune quantize`, `structprune reproduce`
and the demo all call `quantize_run`)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from structprune.arch import describe
from structprune.compact.compaction import compact
from structprune.errors import StructpruneError
from structprune.jsonio import read_json
from structprune.metrics import count_macs, count_params
from structprune.output import Output, fingerprint_files
from structprune.quant.apply import QuantPlan, plan_formats, plan_to_json, quantize_model_
from structprune.quant.fixed_point import MIN_BITS, check_bits
from structprune.quant.packing import load_packed, save_packed
from structprune.quant.qat import retrain_quantized
from structprune.quant.sensitivity import choose_bits, sweep
from structprune.quant.storage import storage_report
from structprune.quant.targets import quantized_weights
from structprune.runcheck import check_config, check_data_fits, load_checked_run
from structprune.runfiles import PACKED_FILE, QUANT_FILE, SENSITIVITY_FILE, STORAGE_FILE
from structprune.runfolder import as_output, recorded_dataset, source_chain, write_run_files
from structprune.sparsity.masks import MASKS_FILE, NetworkMask
from structprune.train import TrainConfig, evaluate

log = logging.getLogger(__name__)

VERB = "quantize"


@dataclass(frozen=True)
class QuantizeConfig:
    """Settings of the quantize step. `bits` is the word length (the longest allowed with `per_layer="auto"`,
    which picks per-layer word lengths from a sensitivity sweep allowing `tolerance` more validation MCR per
    layer); `epochs` > 0 retrains with quantized forward passes. `data`/`data_dir` default to the source run's;
    `masks` to the run's masks.json, else that of the run it was compacted from."""

    bits: int
    per_layer: str | None = None
    tolerance: float = 0.002
    epochs: int = 0
    lr: float = 0.005
    batch_size: int = 64
    seed: int = 0
    data: str | None = None
    data_dir: str | None = None
    masks: Path | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits, where="bits")
        if self.epochs < 0:
            raise StructpruneError(f"epochs must be >= 0 (got {self.epochs})")
        if self.per_layer not in (None, "auto"):
            raise StructpruneError(f"per_layer must be 'auto' or None (got {self.per_layer!r})")
        if self.batch_size < 1:
            raise StructpruneError(f"batch_size must be >= 1 (got {self.batch_size})")

    def retrain(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed, weight_decay=0.0)


def quantize_run(src: str | Path, out: Output | str | Path, cfg: QuantizeConfig, progress: bool = False, *,
                 restart: bool = False, extra_config: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Quantize the run in `src` and save run `out`: model.safetensors (dequantized weights), PACKED_FILE (the
    compact network, weights packed at their word lengths; a masked run is compacted for it), QUANT_FILE,
    STORAGE_FILE (and SENSITIVITY_FILE with `per_layer="auto"`); metrics weight_bytes is the storage total.
    A retraining checkpoint stays in `out`'s staging folder, so the same call resumes after a kill (`restart`
    discards it). `extra_config` is merged into config.json. Returns the folder and its metrics."""
    src = Path(src)
    output = as_output(out, VERB, inputs=(src,))
    source = load_checked_run(src)
    cfg_src = source.config
    data_dir = cfg.data_dir or cfg_src.get("data_dir")
    data = recorded_dataset(cfg_src, data_dir, name=cfg.data)
    if data is None:
        raise StructpruneError(f"{src}: config.json names no dataset; pass --data")
    check_data_fits(source.model, data, str(src))
    masks_path = find_masks(cfg.masks, src, cfg_src)
    masks_json = read_json(masks_path) if masks_path is not None else None
    masks = NetworkMask.from_json(masks_json) if masks_json is not None else None
    net = source.model
    if not quantized_weights(net):
        raise StructpruneError(f"{src}: the network has no Conv2d, Linear or compact layer to quantize")
    float_val, float_test = evaluate(net, data.val), evaluate(net, data.test)

    bits: int | dict[str, int] = cfg.bits
    sensitivity = None
    if cfg.per_layer == "auto":
        sensitivity = sweep(net, data.val, bits=range(MIN_BITS, cfg.bits + 1), progress=progress)
        bits = choose_bits(sensitivity, cfg.bits, cfg.tolerance)
        log.info("per-layer word lengths: %s", ", ".join(f"{k} {v}" for k, v in bits.items()))
    train_cfg = cfg.retrain()
    identity = {"source": fingerprint_files(src), "data": data.fingerprint(), "bits": bits, "retrain": asdict(train_cfg),
                "masks": masks_json}
    with output.staged(identity, restart=restart):
        if cfg.epochs > 0:
            plan, history = retrain_quantized(net, data, bits, train_cfg, checkpoint_dir=output.checkpoints,
                                              progress=progress)
        else:
            plan, history = plan_formats(net, bits), []
            quantize_model_(net, plan)
    net.eval()
    val, test = evaluate(net, data.val), evaluate(net, data.test)
    pack_net, pack_plan = compact_form(net, plan, masks)
    storage = storage_report(pack_net, {name: fmt.bits for name, fmt in pack_plan.items()}, masks)

    metrics = {"val_mcr": val.mcr, "test_mcr": test.mcr, "val_loss": val.loss, "test_loss": test.loss,
               "float_val_mcr": float_val.mcr, "float_test_mcr": float_test.mcr,
               "params": count_params(net), "macs": count_macs(net), "weight_bytes": storage.total_bytes,
               "compact_params": count_params(pack_net), "compact_macs": count_macs(pack_net),
               "dense_weight_bytes": storage.to_json()["dense_bytes"], "compression": storage.compression,
               "test_images": len(data.test), "history": history}
    config = {**(extra_config or {}), "verb": VERB, "source": str(src), "dataset": data.name, "data_dir": data_dir,
              "val_size": len(data.val), "bits": cfg.bits, "per_layer": cfg.per_layer, "tolerance": cfg.tolerance,
              "retrain": asdict(train_cfg), "train": cfg_src.get("train", {}), "torch": torch.__version__}
    extra = {QUANT_FILE: plan_to_json(plan, quantized_weights(net)), STORAGE_FILE: storage.to_json()}
    if masks_json is not None:
        extra[MASKS_FILE] = masks_json
    if sensitivity is not None:
        extra[SENSITIVITY_FILE] = {**sensitivity.to_json(), "chosen_bits": bits, "tolerance": cfg.tolerance}
    with output.publish() as tmp:
        packed_bytes = save_packed(tmp / PACKED_FILE, pack_net, pack_plan)
        reloaded, _ = load_packed(tmp / PACKED_FILE)
        x = data.val.x[:256]
        with torch.no_grad():
            diff = float((reloaded(x) - pack_net(x)).abs().max())
        if diff != 0.0:
            raise StructpruneError(f"packed artifact does not reproduce the quantized network (max diff {diff:.3g})")
        metrics["packed_file_bytes"] = packed_bytes
        write_run_files(tmp, net, describe(net), metrics, config, extra)
    log.debug("%s: %s, val MCR %.4f -> %.4f, test MCR %.4f -> %.4f; weight_bytes %d, packed file %d bytes", output.path,
             describe_bits(bits), float_val.mcr, val.mcr, float_test.mcr, test.mcr, storage.total_bytes, packed_bytes)
    return output.path, metrics


def find_masks(explicit: Path | None, run_dir: Path, config: dict) -> Path | None:
    """The masks.json that describes the run's sparsity: given, in the run, or in its source run."""
    if explicit is not None:
        if not explicit.is_file():
            raise StructpruneError(f"{explicit}: file not found")
        return explicit
    for folder, found in source_chain(run_dir, config, strict=False):  # retrained <- compact <- pruned (masks)
        check_config(found, folder)
        if (folder / MASKS_FILE).is_file():
            if folder != run_dir:
                log.info("index cost from %s (a source of %s)", folder / MASKS_FILE, run_dir)
            return folder / MASKS_FILE
    return None


def compact_form(net: torch.nn.Module, plan: QuantPlan, masks: NetworkMask | None) -> tuple[torch.nn.Module, QuantPlan]:
    """The compact network of a masked (not yet compacted) quantized net, with each compact weight in its
    layer's format; the net itself when it has no masks or is compact already."""
    if masks is None:
        return net, plan
    try:
        masks.validate(net)  # passes only while the layers still have their original, masked shapes
    except StructpruneError:
        return net, plan
    small = compact(net, masks).eval()
    layer_format = {quantized_weights(net)[name]: fmt for name, fmt in plan.items()}
    small_plan = {name: layer_format[layer] for name, layer in quantized_weights(small).items()}
    params = dict(small.named_parameters())
    for name, fmt in small_plan.items():  # compaction copies values, so they stay on the fixed-point grid
        if not torch.equal(fmt.round_trip(params[name]), params[name].detach()):
            raise StructpruneError(f"{name}: compaction moved weights off the fixed-point grid")
    return small, small_plan


def describe_bits(bits: int | dict[str, int]) -> str:
    """'4-bit weights', or 'per-layer 6/5/4 bits'."""
    if isinstance(bits, int):
        return f"{bits}-bit weights"
    return "per-layer " + "/".join(str(b) for b in bits.values()) + " bits"
