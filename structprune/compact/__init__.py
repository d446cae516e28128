"""Compact layers and compaction: masked networks turned into smaller dense computations."""
