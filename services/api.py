"""HTTP request/response models of the public API (rendered in the OpenAPI docs at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128, description="user to recommend for; unknown users get a cold-start answer")
    k: int = Field(10, ge=1, description="number of items to return (at most the server's max_k)")
    context: dict[str, str] | None = Field(None, description="request context, e.g. device or page")
    exclude: list[str] = Field(default_factory=list, description="item ids never to return")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128, description="user to score for; unknown users get the cold-start path")
    item_ids: list[str] = Field(min_length=1, description="items to score (at most the server's max_score_items); "
                                "unknown items go through the ranker's cold-start (hashed) rows")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    request_id: str
    items: list[ScoredItem]
    variant: str
    model_versions: dict[str, str]
    degraded: bool = Field(description="true when a stage fell back (dependency outage or missed deadline)")
    degraded_reasons: list[str] = Field(default_factory=list, description="stage:reason of every fallback taken, "
                                        "e.g. ranker:deadline, bse:version_missing, user_features:unavailable")
    timings_ms: dict[str, float] = Field(description="per-stage wall time: inputs, retrieval, coarse, ranker, total")


class ScoreResponse(BaseModel):
    user_id: str
    variant: str
    model_version: str = Field(description="ranker version that produced the scores")
    scores: dict[str, float | None] = Field(description="item_id -> click probability (null: the ranker was unavailable)")
    degraded: bool
    degraded_reasons: list[str] = Field(default_factory=list)
    timings_ms: dict[str, float]

