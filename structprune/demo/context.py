"""What the demo's stages share: the context they read and write, its folder names, and the thread setting."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from structprune.data import Dataset

DEMO_MODEL = "paper-mnist"
DEMO_DATA = "digits"
DEMO_VAL = 200  # validation images carved from the 1,497 training digits
DENSE_RUN = "dense"  # sub-folder of the demo output holding the trained dense run


@dataclass
class DemoContext:
    """What the stages share. `results` maps stage name -> its headline numbers (for report and tests)."""

    work: Path  # the (temporary) output folder the stages write into
    out: Path  # where it ends up: what the demo's records name
    epochs: int = 30
    seed: int = 0
    progress: bool = False
    data: Dataset | None = None
    model: torch.nn.Module | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


Stage = Callable[[DemoContext], None]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads. The demo's 8×8 networks train ~6× faster on one thread
    than on two on a busy 2-core machine (tiny GEMMs: threading costs more than it gains)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
