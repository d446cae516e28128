"""Training-time augmentation as batched tensor ops: random crop with zero padding, horizontal flip.

Every random draw comes from the generator passed in, so an epoch's augmentation is a pure function of
its seed (a resumed run sees exactly the images an uninterrupted one would).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad each image by `padding` pixels (zeros, i.e. the mean after normalisation) and cut a random
    window of the original size. x: [B, C, H, W] -> [B, C, H, W]."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # [B, C, H+2p, W+2p]
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = dy[:, None] + torch.arange(h)  # [B, H]
    cols = dx[:, None] + torch.arange(w)  # [B, W]
    batch = torch.arange(b)[:, None, None]  # [B, 1, 1]
    # advanced indexing on dims 0, 2, 3 puts the channel dim last: [B, H, W, C]
    crops = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p. x: [B, C, H, W]."""
    flip = torch.rand(x.shape[0], generator=generator) < p  # [B]
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def crop_and_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation: random 4-px-padded crop, then a random horizontal flip."""
    return random_flip(random_crop(x, padding, generator), generator)
