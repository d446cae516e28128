"""Choosing what to prune: particle-filter mask search (PF/EPF), fast mask scoring, and the network driver.

  particle_filter  the search over bit vectors, knowing nothing about networks
  scoring          misclassification rate of candidate masks, with cached activations
  driver           layer-by-layer search on a network, tolerance ladder, retraining, resume
  backends         where scoring runs (in-process, Ray)
  latency          a measured per-layer latency table for a latency-aware objective
  target_search    pruning to a MAC, speed-up or latency target: kept maps per channel group (target_space),
                   priced by a cost model (target_cost)

Called, `structprune.search(model, example_input, score_fn, ...)` is structprune.api.search (any network,
any score function).
"""

from structprune.callmodule import make_callable
from structprune.search.particle_filter import BitSpace, ChoiceSpace, ParticleFilter, PFConfig

__all__ = ["BitSpace", "ChoiceSpace", "PFConfig", "ParticleFilter"]

make_callable(__name__)
