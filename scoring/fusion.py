"""Score fusion: the final order blends what every stage of the cascade learned.

For one request with M candidates (the coarse stage's cut) and stages s (retrieval, coarse,
ranker), each stage's scores are z-scored over the M candidates, then blended:

    z_s(i)   = (x_s(i) - mean_i x_s) / (std_i x_s + eps)          (a constant stage: z = 0)
    fused(i) = sum_s w_s * z_s(i)

The final order is `fused` descending (ties: the stage order's rank, i.e. a stable sort on the
candidates as the coarse stage handed them). z-scoring makes the weights comparable across
stages whose scores live on different scales (cosine / temperature, HCN's pooled logits, the
ranker's logit) and across requests. The weights are chosen on validation
(pipelines/training/cascade.py `choose_fusion`; saved in the ranker artefact's manifest at
extra["fusion"]), never on test, and are part of a variant's serving config,
so an A/B can compare fusions. `fuse` is the one implementation that serving, the offline
benchmark and replay call.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

STAGES = ("retrieval", "coarse", "ranker")
Z_EPS = 1e-6


class FusionConfig(BaseModel):
    """Weights of each stage's z-scored score in the final order (all 0 but the ranker's = the
    ranker alone, the order served before fusion existed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retrieval_weight: float = Field(0.0, ge=0.0, le=100.0, description="weight of the retrieval (two-tower) score")
    coarse_weight: float = Field(0.0, ge=0.0, le=100.0, description="weight of the coarse (HCN) score")
    ranker_weight: float = Field(1.0, ge=0.0, le=100.0, description="weight of the fine ranker's ordering score")

    @model_validator(mode="after")
    def _some_weight(self) -> "FusionConfig":
        if self.retrieval_weight + self.coarse_weight + self.ranker_weight <= 0:
            raise ValueError(f"fusion weights (retrieval {self.retrieval_weight}, coarse {self.coarse_weight}, "
                             f"ranker {self.ranker_weight}) must not all be 0")
        return self

    def weights(self) -> dict[str, float]:
        return {"retrieval": self.retrieval_weight, "coarse": self.coarse_weight, "ranker": self.ranker_weight}


def zscore(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """(…, M) scores standardised over the candidate axis; -inf (masked) entries stay -inf and are
    left out of the mean and std."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    n = np.maximum(finite.sum(axis, keepdims=True), 1)
    x0 = np.where(finite, x, 0.0)
    mean = x0.sum(axis, keepdims=True) / n
    var = (np.where(finite, x - mean, 0.0) ** 2).sum(axis, keepdims=True) / n
    return np.where(finite, (x0 - mean) / (np.sqrt(var) + Z_EPS), -np.inf)


def fuse(scores: dict[str, np.ndarray], config: FusionConfig) -> np.ndarray:
    """(…, M) fused scores: sum over stages of weight * zscore(stage scores). A stage with weight 0
    may be missing from `scores`; one with a weight must be there."""
    w = config.weights()
    unknown = set(scores) - set(STAGES)
    if unknown:
        raise ValueError(f"fusion: unknown stages {sorted(unknown)}; known: {STAGES}")
    missing = [s for s in STAGES if w[s] > 0 and s not in scores]
    if missing:
        raise ValueError(f"fusion: stages {missing} have weights {[w[s] for s in missing]} but no scores")
    used = [s for s in STAGES if w[s] > 0]
    return sum(w[s] * zscore(scores[s]) for s in used)


def fused_order(scores: dict[str, np.ndarray], config: FusionConfig) -> np.ndarray:
    """(M,) candidate positions of one request, best first (stable: ties keep the input order)."""
    return np.argsort(-fuse(scores, config), kind="stable")
