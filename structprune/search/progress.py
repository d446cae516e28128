"""Progress of a running search, as log lines: one per generation, with the best MCR so far and an estimate
of the time left in the rung and in the search (the CLI shows library logs on stderr)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("structprune.search")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Times the generations of this invocation; `rungs_left` is an upper bound on the rungs after this one
    (the ladder may stop early), and retraining between steps is not counted."""

    def __init__(self) -> None:
        self.generations = 0
        self.seconds = 0.0
        self._last = time.perf_counter()

    def start_rung(self) -> None:
        self._last = time.perf_counter()

    def generation(self, label: str, done: int, total: int, best_mcr: float | None, best_score: float,
                   rungs_left: int) -> None:
        now = time.perf_counter()
        self.seconds += now - self._last
        self.generations += 1
        self._last = now
        per = self.seconds / self.generations
        mcr = f"best MCR {best_mcr:.4f}" if best_mcr is not None else f"best score {best_score:.4f}"
        log.info("%s: generation %d/%d, %s; about %s left in this rung, at most about %s in the search",
                 label, done, total, mcr, _duration(per * (total - done)),
                 _duration(per * (total - done + rungs_left * total)))
