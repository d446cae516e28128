"""Compact layers and compaction: masked networks turned into smaller dense computations.

Importing this package registers the compact layer types with `structprune.arch`, so run folders
holding them can be rebuilt.
"""

from structprune.compact.csr_conv import CsrConv2d
from structprune.compact.intra_conv import IntraKernelConv2d
from structprune.compact.kernel_conv import KernelSparseConv2d, structured_kernel_mask

__all__ = ["CsrConv2d", "IntraKernelConv2d", "KernelSparseConv2d", "structured_kernel_mask"]
