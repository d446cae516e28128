"""How masks are chosen, as one typed value: the spelling on the command line is the spelling in JSON.

  l1           largest L1 magnitude (one shot: structprune.sparsity.selection; or through the search schedule)
  random       uniform random (one shot)
  pf, epf      particle filter / evolutionary particle filter (structprune.search)
  random-best  best of particles × generations random candidates per rung (search schedule; the PF's budget)
  tp-l2        Torch-Pruning's group L2 magnitude, channel scale: one shot (its own pruner, uniform or global:
               sparsity.tp_selection) or through the search schedule

Text (argv, API arguments, a stored config.json) becomes a Method with `Method.parse`; the library takes
only Method values. Search configs written before `random-best` was one spelling stored it as "random":
`Method.from_stored(text, search=True)` reads those.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from structprune.errors import StructpruneError


class Method(StrEnum):
    L1 = "l1"
    RANDOM = "random"
    PF = "pf"
    EPF = "epf"
    RANDOM_BEST = "random-best"
    TP_L2 = "tp-l2"

    @property
    def one_shot(self) -> bool:
        """Chosen in one pass by selection (no scoring, no retraining): l1, random and tp-l2."""
        return self in ONE_SHOT_METHODS

    @property
    def needs_search(self) -> bool:
        """Runs only through the search schedule (scored candidates): pf, epf, random-best."""
        return self not in ONE_SHOT_METHODS

    @classmethod
    def parse(cls, text: object, allowed: Iterable[Method] | None = None, what: str = "method") -> Method:
        """'pf' -> Method.PF; a Method passes through. `allowed` limits the choice (one line naming them)."""
        choices = tuple(cls) if allowed is None else tuple(allowed)
        try:
            method = cls(text)
        except ValueError:
            method = None
        if method is None or method not in choices:
            raise StructpruneError(f"unknown {what} {text!r}; choose from {', '.join(m.value for m in choices)}")
        return method

    @classmethod
    def from_stored(cls, text: object, search: bool = False) -> Method:
        """A method read back from a config.json; `search`: from its "search" section (where "random" meant
        the best-of-N random search, now spelt random-best)."""
        if search and text == "random":
            return cls.RANDOM_BEST
        return cls.parse(text)


ONE_SHOT_METHODS = (Method.L1, Method.RANDOM, Method.TP_L2)
SEARCH_METHODS = (Method.PF, Method.EPF, Method.L1, Method.RANDOM_BEST, Method.TP_L2)  # the search schedule's


def require_method(method: object, allowed: Iterable[Method], what: str = "method") -> None:
    """A config's `method` field holds one of `allowed` Methods (text is parsed at the edge, with Method.parse)."""
    choices = tuple(allowed)
    if not isinstance(method, Method):
        raise StructpruneError(f"{what} must be a Method (e.g. Method.parse({str(method)!r})), not {method!r}")
    if method not in choices:
        raise StructpruneError(f"{what} {method.value!r} does not apply here; choose from "
                               f"{', '.join(m.value for m in choices)}")
