"""The paired check of a search step: candidate and base networks compared image by image on the same check images.

Both networks are right or wrong on each check image (0/1 errors b_i, c_i). The MCR difference is the mean of
d_i = c_i - b_i, and its paired standard error is sd(d) / sqrt(n) (sample sd): images both get right or both
get wrong add nothing, so the SE reflects only the images that flipped, far less than the spread of two MCRs
measured on independent images.

How many check images a tolerance needs (`check_images_needed`): one image must be at most the tolerance
(1/n <= tolerance), and the standard error of a difference at the base MCR p must be at most the tolerance,
taking the conservative case of a candidate whose errors are independent of the base's, sqrt(2 p (1 - p) / n).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from structprune.data import Split, batches
from structprune.errors import StructpruneError
from structprune.layout import FastLayout


@dataclass(frozen=True)
class PairedCheck:
    """Candidate against base on the same n check images."""

    diff: float  # candidate MCR - base MCR
    se: float  # sd of the per-image error difference / sqrt(n)
    to_wrong: int  # images the base gets right and the candidate wrong
    to_right: int  # images the base gets wrong and the candidate right
    images: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def paired_check(base_wrong: np.ndarray | torch.Tensor, cand_wrong: np.ndarray | torch.Tensor) -> PairedCheck:
    """Paired MCR difference of two per-image error vectors (bool or 0/1, same images in the same order)."""
    b = np.asarray(base_wrong, dtype=np.float64).ravel()
    c = np.asarray(cand_wrong, dtype=np.float64).ravel()
    if len(b) != len(c) or len(b) == 0:
        raise StructpruneError(f"a paired check needs the same non-empty image set, not {len(b)} and {len(c)} images")
    d = c - b
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return PairedCheck(diff=int(d.sum()) / n, se=se, to_wrong=int((d > 0).sum()), to_right=int((d < 0).sum()), images=n)


@torch.no_grad()
def per_image_wrong(model: nn.Module, split: Split, batch_size: int = 500) -> np.ndarray:
    """bool [N]: which images of `split` `model` misclassifies (eval mode; the mode is restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    layout = FastLayout()
    try:
        for x, y in batches(split, batch_size):
            out.append((layout(model, x.to(device)).argmax(1) != y.to(device)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=bool)


def wrong_at(indices: list[int], images: int) -> np.ndarray:
    """bool [images]: True at `indices` (per-image errors kept as the indices of the wrong images)."""
    wrong = np.zeros(images, dtype=bool)
    wrong[np.asarray(indices, dtype=np.int64)] = True
    return wrong


def expected_diff_se(base_mcr: float, images: int) -> float:
    """The standard error of an MCR difference at `base_mcr` on `images` images, for a candidate whose errors are
    independent of the base's (an upper bound for a paired check: agreeing images lower it)."""
    p = min(max(base_mcr, 0.0), 1.0)
    return math.sqrt(2 * p * (1 - p) / max(images, 1))


def check_images_needed(tolerance: float, base_mcr: float) -> int:
    """The fewest check images on which one image is at most `tolerance` (an MCR fraction) and the expected
    standard error of a difference at `base_mcr` (expected_diff_se) is at most `tolerance`."""
    if not 0.0 < tolerance < 1.0:
        raise StructpruneError(f"a tolerance of {tolerance * 100:g} points cannot size a check set (needs 0 to 100, "
                               "exclusive)")
    p = min(max(base_mcr, 0.0), 1.0)
    one_image = math.ceil(1 / tolerance - 1e-9)
    noise = math.ceil(2 * p * (1 - p) / tolerance**2 - 1e-9)
    return max(one_image, noise, 1)


def resolution_warning(tolerance: float, base_mcr: float, images: int) -> str | None:
    """One line when `images` check images cannot resolve `tolerance` at `base_mcr`, else None (a tolerance of 0,
    no rise at all, needs no resolution)."""
    if tolerance <= 0:
        return None
    one, se = 1 / images, expected_diff_se(base_mcr, images)
    if one <= tolerance + 1e-12 and se <= tolerance:
        return None
    reasons = []
    if one > tolerance + 1e-12:
        reasons.append(f"one image is {one * 100:.3g} points")
    if se > tolerance:
        reasons.append(f"the standard error of a difference at the base MCR {base_mcr * 100:.3g}% is up to "
                       f"{se * 100:.3g} points")
    return (f"the tolerance of {tolerance * 100:.3g} points is below what {images} check images resolve "
            f"({'; '.join(reasons)}): steps are accepted or undone by noise; about "
            f"{check_images_needed(tolerance, base_mcr)} check images would be needed (--check-images)")
