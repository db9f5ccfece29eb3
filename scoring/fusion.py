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

Replay sees only the support (the head of the final order) of a logged request, not all M
candidates, so it cannot recompute the z-scores' mean and std; serving logs them per stage
(`ImpressionLog.scores.stats`) and `fuse_with_stats` blends with those, which gives the served
fused scores of the support exactly, and any other weighting of the same stages exactly too.
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


def manifest_fusion(ranker_manifest: dict) -> FusionConfig:
    """The fusion chosen on validation when a ranker was trained (its manifest's extra.fusion),
    else the ranker's order alone: what a variant that names no fusion serves with that ranker."""
    chosen = (ranker_manifest.get("extra") or {}).get("fusion")
    return FusionConfig(**chosen) if chosen else FusionConfig()


def zstats(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over the candidate axis (kept as size-1 dims), -inf (masked) entries left out:
    what `zscore` divides by, and what the impression log records for replay."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    n = np.maximum(finite.sum(axis, keepdims=True), 1)
    x0 = np.where(finite, x, 0.0)
    mean = x0.sum(axis, keepdims=True) / n
    var = (np.where(finite, x - mean, 0.0) ** 2).sum(axis, keepdims=True) / n
    return mean, np.sqrt(var)


def zscore(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """(…, M) scores standardised over the candidate axis; -inf (masked) entries stay -inf and are
    left out of the mean and std."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = zstats(x, axis)
    finite = np.isfinite(x)
    return np.where(finite, (np.where(finite, x, 0.0) - mean) / (std + Z_EPS), -np.inf)


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


def fuse_with_stats(stage_scores: dict[str, np.ndarray], stats: dict[str, tuple[float, float]],
                    config: FusionConfig | dict[str, float]) -> np.ndarray:
    """(S,) fused scores of S items whose stages' means and stds over the fused candidates are
    known: sum over stages of weight * (x - mean) / (std + Z_EPS), the same numbers `fuse` gives
    those items when `stats` are the candidates' own (a constant stage: std 0, z = 0 as in
    `zscore`).

    Args:
        stage_scores: stage -> (S,) scores; a stage with weight 0 may be missing.
        stats: stage -> (mean, std) over the candidates the fusion z-scored.
        config: the weights, as a FusionConfig or the logged {stage: weight}.
    """
    w = config.weights() if isinstance(config, FusionConfig) else dict(config)
    unknown = (set(stage_scores) | set(w)) - set(STAGES)
    if unknown:
        raise ValueError(f"fusion: unknown stages {sorted(unknown)}; known: {STAGES}")
    used = [s for s in STAGES if w.get(s, 0.0) > 0]
    if not used:
        raise ValueError(f"fusion: weights {w} are all 0")
    missing = [s for s in used if s not in stage_scores or s not in stats]
    if missing:
        raise ValueError(f"fusion: stages {missing} have weights {[w[s] for s in missing]} but no scores or stats "
                         f"(scores for {sorted(stage_scores)}, stats for {sorted(stats)})")
    out = 0.0
    for s in used:
        mean, std = stats[s]
        out = out + w[s] * (np.asarray(stage_scores[s], dtype=np.float64) - mean) / (std + Z_EPS)
    return np.asarray(out, dtype=np.float64)


def fused_order(scores: dict[str, np.ndarray], config: FusionConfig) -> np.ndarray:
    """(M,) candidate positions of one request, best first (stable: ties keep the input order)."""
    return np.argsort(-fuse(scores, config), kind="stable")
