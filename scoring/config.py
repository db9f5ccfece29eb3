"""What names a model version and a slate policy: shared by serving (services/config.py's
variants) and the replay tool (the policies it evaluates)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, description="artefact name under artifacts/models/")
    version: str = Field("latest", min_length=1, max_length=128, description="artefact version, or 'latest'")


class ExplorationConfig(BaseModel):
    """epsilon_slot: each slot independently shows, with probability epsilon, an item drawn
    uniformly from the `pool_size` items ranked just below the slate instead of its greedy item.
    Every shown item's marginal probability at its slot is then exact: 1 - epsilon for a greedy
    item, epsilon / pool_size for a pool item. epsilon_slate: with probability epsilon the whole
    slate is a random ordered draw from the top k + pool_size, so every one of those items can
    appear at every slot (what off-policy evaluation of a re-ranking needs); see
    scoring/exploration.py for the exact propensities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["deterministic", "epsilon_slot", "epsilon_slate"] = Field("deterministic", description="slate policy")
    epsilon: float = Field(0.1, gt=0, lt=1, description="exploration probability: per slot (epsilon_slot) or per "
                                                        "request (epsilon_slate)")
    pool_size: int = Field(20, ge=1, le=1000, description="items below the slate that exploration draws from")
