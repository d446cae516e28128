"""Kinds of search step (strategies), registered by name: channel, kernel, kernel-blocks, intra, global-channel."""

from structprune.search.steps import channel, global_channel, intra, kernel  # noqa: F401  (register the steps)
from structprune.search.steps.base import STEPS, Rung, Step, make_steps, register_step, step_names

__all__ = ["STEPS", "Rung", "Step", "make_steps", "register_step", "step_names"]
