"""One library call per stage of the method. Each takes run folders and typed configs, writes a new run folder
under the output policy (structprune.output: a new folder, staged, resumable) and returns it with its metrics.

  train_run      a registered model trained on a dataset (adopt_run: an already trained one)  (stages.train)
  prune_run      masks chosen by a MaskChooser and applied               (structprune.stages.prune)
  select_run     prune_run with one-shot selection (L1, random)          (structprune.stages.prune)
  target_run     masks meeting a MAC, speed-up or latency target          (structprune.stages.target)
  search_run     masks chosen by the particle filter, layer by layer     (structprune.search.driver)
  retrain_run    retraining with the masks held, optionally distilled    (structprune.stages.retrain)
  compact_run    the masked network as smaller dense layers              (structprune.stages.prune)
  quantize_run   fixed-point weights and the packed artifact             (structprune.quant.run)
  export_run     ONNX, checked with ONNX Runtime                          (structprune.stages.export)
  bench_runs     latency of runs against the first one                   (structprune.stages.measure)
  report_runs    tables and plots of runs                                (structprune.stages.measure)

The CLI verbs, `reproduce` and the demo are sequences of these calls.
"""

from structprune.quant.run import QuantizeConfig, quantize_run
from structprune.search.driver import SearchConfig, search_run
from structprune.stages.export import export_run
from structprune.stages.measure import BenchConfig, bench_runs, report_runs
from structprune.stages.prune import compact_run, prune_run, select_run
from structprune.stages.retrain import Teacher, retrain_run
from structprune.stages.target import Target, TargetConfig, TargetSearchConfig, target_run
from structprune.stages.train import TrainRunConfig, adopt_run, check_adoptable, train_run

__all__ = [
           "BenchConfig",
           "QuantizeConfig",
           "SearchConfig",
           "Target",
           "TargetConfig",
           "TargetSearchConfig",
           "Teacher",
           "TrainRunConfig",
           "adopt_run",
           "bench_runs",
           "check_adoptable",
           "compact_run",
           "export_run",
           "prune_run",
           "quantize_run",
           "report_runs",
           "retrain_run",
           "search_run",
           "select_run",
           "target_run",
           "train_run",
]
