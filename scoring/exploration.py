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
- epsilon_slate: with probability epsilon the whole slate is a uniformly random ordered draw
  of k items from the top M = k + pool_size, else the greedy slate. Every one of the M items
  then has a chance at every slot,
      P(item a at slot p) = (1 - epsilon) * [a == g_p] + epsilon / M,
  so an evaluated policy that reorders the greedy items is still covered (epsilon_slot gives a
  greedy item probability 0 at any slot but its own). The replay tool's default for A/B logs.

`marginals` returns these numbers for every (slot, item) a policy can show; the logging side
(`make_slate`) and the replay side (the evaluated policy's probabilities) share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scoring.config import ExplorationConfig


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
    if config.policy == "epsilon_slate":
        return _epsilon_slate(ranked, k, config, rng)
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


def _epsilon_slate(ranked: list[tuple[str, float]], k: int, config: ExplorationConfig,
                   rng: np.random.Generator) -> list[Slot]:
    greedy = ranked[:k]
    top = ranked[: k + config.pool_size]
    if len(top) <= len(greedy):  # nothing to explore with: deterministic for this request
        return [Slot(i, s, 1.0, False) for i, s in greedy]
    m = len(top)
    probs = _slate_probs(m, len(greedy), config.epsilon)
    if rng.random() < config.epsilon:
        draw = rng.choice(m, size=len(greedy), replace=False).tolist()
        return [Slot(top[j][0], top[j][1], probs(j, p), j != p) for p, j in enumerate(draw)]
    return [Slot(i, s, probs(p, p), False) for p, (i, s) in enumerate(greedy)]


def _slate_probs(m: int, k: int, epsilon: float):
    """P(rank-j item of the top m at slot p) under epsilon_slate."""
    return lambda j, p: (1.0 - epsilon) * (j == p) + epsilon / m


def marginals(ranked: list[str], k: int, config: ExplorationConfig) -> list[dict[str, float]]:
    """P(item at slot) for each slot of a request whose final ranking is `ranked` (best first):
    one {item_id: probability} per slot, zero-probability items left out. Each slot's numbers
    sum to 1, and they equal the propensities `make_slate` logs for the items it shows."""
    greedy = ranked[:k]
    n = len(greedy)
    if config.policy == "deterministic":
        return [{g: 1.0} for g in greedy]
    if config.policy == "epsilon_slate":
        top = ranked[: k + config.pool_size]
        if len(top) <= n:
            return [{g: 1.0} for g in greedy]
        probs = _slate_probs(len(top), n, config.epsilon)
        return [{item: probs(j, p) for j, item in enumerate(top)} for p in range(n)]
    pool = ranked[k : k + config.pool_size]
    if len(pool) < n:
        return [{g: 1.0} for g in greedy]
    e, r = config.epsilon, len(pool)
    return [{g: 1.0 - e, **{item: e / r for item in pool}} for g in greedy]
