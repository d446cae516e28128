"""Fixed-point quantization (Section "fixed-point optimisation" of the paper), storage and packing.

  fixed_point  signed b-bit codes × an L2-optimal step, 2 ≤ b ≤ 16
  targets      which tensors are quantized (Conv2d, Linear and compact-layer weights)
  apply        a format per weight (a plan), applied to a network in place
  qat          retraining with quantized forward passes and float shadow weights (straight-through)
  sensitivity  per-layer word-length sweep and per-layer choice
  storage      bits of kept weights plus sparsity indices, against the dense 32-bit network
  packing      the packed artifact: codes packed at their word lengths in safetensors + JSON spec
"""

from structprune.quant.apply import QuantPlan, plan_formats, quantize_model_
from structprune.quant.fixed_point import FixedPoint, check_bits, optimal_format
from structprune.quant.packing import load_packed, save_packed
from structprune.quant.storage import StorageReport, storage_report

__all__ = [
    "FixedPoint",
    "QuantPlan",
    "StorageReport",
    "check_bits",
    "load_packed",
    "optimal_format",
    "plan_formats",
    "quantize_model_",
    "save_packed",
    "storage_report",
]
