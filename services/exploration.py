"""Slate policies over the final ranking, each logging the true propensity of every shown item.

The replay tool estimates other policies' value from these numbers (per-position IPS divides
each click by P(item at slot)), so a propensity must be the policy's real marginal probability
of showing that item at that slot, not a score.

- deterministic: the top k in ranked order; every propensity is 1.0.
- epsilon_slot: rank the items; the greedy slate is g_0..g_{k-1} and the pool the next R items.
  Each slot independently explores with probability epsilon; the exploring slots are filled by
  a uniformly random ordered draw without replacement from the pool. By exchangeability each
  exploring slot then holds any given pool item with probability 1/R, so
      P(g_p at slot p)          = 1 - epsilon
      P(pool item j at slot p)  = epsilon / R        (for every pool item j and slot p)
  and no item can appear twice (greedy items only at their own slot, pool items drawn without
  replacement). R shrinks to the items available; when fewer than k items are left for the pool
  the slate is deterministic for that request (propensities 1.0), which keeps every logged
  number exact: propensities are conditional on the request's ranked list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.config import ExplorationConfig


@dataclass(frozen=True)
class Slot:
    item_id: str
    score: float
    propensity: float
    explored: bool


def make_slate(ranked: list[tuple[str, float]], k: int, config: ExplorationConfig,
               rng: np.random.Generator) -> list[Slot]:
    """Args: ranked (item_id, score) best first; k slots. Returns: up to k slots, slot order."""
    greedy = ranked[:k]
    if config.policy == "deterministic":
        return [Slot(i, s, 1.0, False) for i, s in greedy]
    pool = ranked[k : k + config.pool_size]
    if len(pool) < len(greedy):
        return [Slot(i, s, 1.0, False) for i, s in greedy]
    explore = rng.random(len(greedy)) < config.epsilon  # (k,) which slots explore
    n_explore = int(explore.sum())
    draws = iter(rng.choice(len(pool), size=n_explore, replace=False).tolist())
    r = len(pool)
    out = []
    for p, (item, score) in enumerate(greedy):
        if explore[p]:
            j = next(draws)
            out.append(Slot(pool[j][0], pool[j][1], config.epsilon / r, True))
        else:
            out.append(Slot(item, score, 1.0 - config.epsilon, False))
    return out
