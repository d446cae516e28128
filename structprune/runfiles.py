"""The run-folder schema: the name of every file structprune writes, and the schema version.

A run folder holds MODEL_FILE (safetensors weights), ARCH_FILE (layer specs, structprune.arch), METRICS_FILE
(val_mcr/test_mcr as fractions, params, macs, weight_bytes, ...) and CONFIG_FILE (how it was made: its
`verb`, `schema`, source run, settings). The stages add the others. Readers and writers live in
structprune.runfolder; where a command may write, in structprune.output.
"""

from __future__ import annotations

SCHEMA_VERSION = 2  # config.json "schema": 2 adds the output policy's verbs and staging; 1 (absent) is read alike

MODEL_FILE = "model.safetensors"
ARCH_FILE = "arch.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
MASKS_FILE = "masks.json"  # prune: the masks (structprune.sparsity.masks)
SEARCH_FILE = "search.json"  # search: every step and generation
TARGET_FILE = "target.json"  # prune to a target: the chosen structure, budget, predicted and measured cost per try
LATENCY_MODEL_FILE = "latency-model.json"  # the per-layer latency model a target run or a latency-aware search used
SENSITIVITY_FILE = "sensitivity.json"  # sensitivity sweep (pruning) or word-length sweep (quantize)
QUANT_FILE = "quant.json"  # quantize: each layer's fixed-point format
STORAGE_FILE = "storage.json"  # quantize: bytes of weights and indices
PACKED_FILE = "model.packed.safetensors"  # quantize: the compact network, weights packed at their word lengths
ONNX_FILE = "model.onnx"  # export folders
INT8_ONNX_FILE = "model.int8.onnx"
EXPORT_FILE = "export.json"  # export folders: the check against PyTorch
BENCH_FILE = "bench.json"  # bench records inside a folder of runs
STATUS_FILE = "reproduce.json"  # reproduce: stage times and input digests
REPORT_MD, REPORT_HTML = "report.md", "report.html"
CHECKPOINT_FILE = "checkpoint.safetensors"  # inside the staging folder's checkpoints/
CHECKPOINT_JSON = "checkpoint.json"  # beside it: epoch, optimizer state digest, settings
STAGE_RECORD = "stage.json"  # inside a staging folder: the verb and inputs that claimed it
SEARCH_STATE_FILE = "driver.json"  # the search's state/ (with MODEL_FILE), the particle filter inside
TARGET_STATE_FILE = "target-state.json"  # the target search's state/: finished tries and the current filter

ALL_FILES = frozenset({
    MODEL_FILE, ARCH_FILE, METRICS_FILE, CONFIG_FILE, MASKS_FILE, SEARCH_FILE, TARGET_FILE,
    LATENCY_MODEL_FILE, SENSITIVITY_FILE,
    QUANT_FILE, STORAGE_FILE, PACKED_FILE, ONNX_FILE, INT8_ONNX_FILE, EXPORT_FILE, BENCH_FILE, STATUS_FILE,
    REPORT_MD, REPORT_HTML, "history.json",
})
STATE_DIR, FIGURES_DIR = "state", "figures"
ALL_FOLDERS = frozenset({STATE_DIR, FIGURES_DIR, "checkpoints"})
