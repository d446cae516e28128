"""Memory layout for inference on the CPU: batches of images in channels_last, oneDNN's fast layout for
convolutions (faster evaluation on the CPU), with the same values."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """A CPU batch [B, C, H, W] of several channels in channels_last; anything else unchanged. One channel stays as
    it is: its channels_last strides are degenerate, and PyTorch 2.13's oneDNN convolution mis-handles some."""
    return x.contiguous(memory_format=torch.channels_last) if _helps(x) else x


def as_is(x: torch.Tensor) -> torch.Tensor:
    """The batch unchanged: the layout of a network that refuses channels_last."""
    return x


def _helps(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.device.type == "cpu"


class FastLayout:
    """Calls fn(batch) in the fast layout while the network accepts it. A network that reshapes its activations
    with .view() fails on channels_last ones; from then on its batches go in as they come."""

    def __init__(self) -> None:
        self.enabled = True

    def __call__(self, fn: Callable[[torch.Tensor], T], x: torch.Tensor) -> T:
        fast = fast_layout(x) if self.enabled else x
        if fast is x:
            return fn(x)
        try:
            return fn(fast)
        except RuntimeError as exc:
            self.enabled = False
            log.debug("channels_last batches refused (%s); running them as they come", str(exc).splitlines()[0])
            return fn(x)


def accepts_channels_last(*models: torch.nn.Module, sample: torch.Tensor) -> bool:
    """True when every model (run in eval mode, without gradients, on `sample`) accepts a channels_last batch
    (False for a batch fast_layout leaves as it is): one decision for a whole search or retraining."""
    if not _helps(sample):
        return False
    for model in models:
        probe = FastLayout()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                probe(model, sample)
        finally:
            model.train(was_training)
        if not probe.enabled:
            return False
    return True
