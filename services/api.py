"""HTTP request/response models of the public API (rendered in the OpenAPI docs at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128, description="user to recommend for; unknown users get a cold-start answer")
    k: int = Field(10, ge=1, description="number of items to return (at most the server's max_k)")
    context: dict[str, str] | None = Field(None, description="request context, e.g. device or page")
    exclude: list[str] = Field(default_factory=list, description="item ids never to return")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    request_id: str
    items: list[ScoredItem]
    variant: str
    model_versions: dict[str, str]
    degraded: bool = Field(description="true when a stage fell back (dependency outage or missed deadline)")
    timings_ms: dict[str, float]

