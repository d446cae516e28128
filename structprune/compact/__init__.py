"""Compact layers and compaction: masked networks turned into smaller dense computations.

Importing this package registers the compact layer types with `structprune.arch`, so run folders
holding them can be rebuilt. Called, `structprune.compact(model, masks)` is structprune.api.compact.
"""

from structprune.callmodule import make_callable
from structprune.compact.csr_conv import CsrConv2d
from structprune.compact.intra_conv import IntraKernelConv2d
from structprune.compact.kernel_conv import KernelSparseConv2d, structured_kernel_mask

__all__ = ["CsrConv2d", "IntraKernelConv2d", "KernelSparseConv2d", "structured_kernel_mask"]

make_callable(__name__)
