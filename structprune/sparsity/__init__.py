"""Sparsity: the three scales (granularity), masks and masks.json (masks), applying a mask to a model without
copying it (masking), coupled channels found by Torch-Pruning's dependency graph (channel_groups), kernel blocks
(kernel_blocks), and L1 / random selection (selection). Nothing here trains, searches or writes run folders."""
