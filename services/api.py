"""HTTP request/response models of the public API (rendered in the OpenAPI docs at /docs).

Requests use the kernel's id rule (`recstream.ids.Id`: 1-128 characters after stripping, no
control characters) and the event contract's context caps, so whatever the stream accepts the
API accepts and the reverse. Numbers are strict (`k: true`, `k: "5"` or `k: 5.5` is a 422); `k: 5.0`
is the JSON number 5, an integer to JSON Schema and so to the OpenAPI contract, and is taken as 5. The caps here
are hard ceilings; each deployment's ServeConfig (max_k, max_exclude, max_score_items) applies
its tighter limit in the route, and the body limit (services/http.py) bounds the bytes first.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from recstream.events import Context
from recstream.ids import Id

# Hard ceilings, equal to the largest value ServeConfig allows for the matching setting.
K_MAX = 10_000
EXCLUDE_MAX = 100_000
SCORE_ITEMS_MAX = 100_000


def _integral_float(value: Any) -> Any:
    return int(value) if type(value) is float and value.is_integer() else value


# An integer as JSON Schema means it: 18 and 18.0 are the same number; true and "18" are not numbers.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral_float)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(description="user to recommend for; unknown users get a cold-start answer")
    k: JsonInt = Field(10, ge=1, le=K_MAX, description="number of items to return (at most the server's max_k)")
    context: Context | None = Field(None, description="request context, e.g. device or page: at most 32 keys of "
                                                      "<= 64 and values of <= 256 characters, as in events")
    exclude: list[Id] = Field(default_factory=list, max_length=EXCLUDE_MAX,
                              description="item ids never to return (at most the server's max_exclude)")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(description="user to score for; unknown users get the cold-start path")
    item_ids: list[Id] = Field(min_length=1, max_length=SCORE_ITEMS_MAX,
                               description="items to score (at most the server's max_score_items); "
                                           "unknown items go through the ranker's cold-start (hashed) rows")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="the score the answer is ordered by: the fused cascade score (z-scored stage "
                                     "scores, weighted), or the last stage's own score when the variant serves a "
                                     "shorter cascade or a stage fell back")
    probability: float | None = Field(None, description="the ranker's calibrated like/click probability of the item "
                                      "(what /v1/score returns); null when the ranker did not run")


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



class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="where: ['body', field, ...], ['header', name] or ['body'] for the "
                                             "whole body")
    type: str = Field(description="machine-readable kind, e.g. missing, body_timeout, duplicate_key")
    msg: str = Field(description="what is wrong, quoting input only escaped and cut to 64 characters")
    input: str | int | float | bool | None = Field(None, description="the offending value, when short and scalar")


class ErrorResponse(BaseModel):
    """The body of every 4xx the API itself sends."""

    detail: list[ErrorDetail]


def _error(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


# Every status a body-carrying endpoint can answer besides 200, each with its body schema.
ERROR_RESPONSES: dict[int | str, dict] = {
    400: _error("Content-Length is not a non-negative integer"),
    408: _error("the request body did not arrive within the server's body_read_timeout_ms; the connection is closed"),
    413: _error("the body is larger than max_body_bytes"),
    422: _error("invalid input, the field named in loc: out of range (k above max_k, a list longer than "
                "max_exclude / max_score_items), wrong type, an id that breaks the id rule, a duplicate JSON key, "
                "NaN/Infinity or a lone surrogate"),
}
NOT_READY_RESPONSE: dict[int | str, dict] = {503: _error("models not loaded yet")}
